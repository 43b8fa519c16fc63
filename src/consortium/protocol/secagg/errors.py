"""Typed SecAgg+ errors: each names the peer at fault where there is one."""

from __future__ import annotations

from consortium.core.errors import ConsortiumError


class SecAggError(ConsortiumError):
    """Base of every secure-aggregation error."""


class SecAggParamsError(SecAggError):
    """Round parameters are inconsistent (degree, threshold, quantization bound, sizes)."""

    exit_code = 2


class SecAggStateError(SecAggError):
    """A method was called in the wrong stage of the protocol."""


class RejectedMessage(SecAggError):
    """A message from `sender` was refused (malformed, wrong round, bad share, oversized ...)."""

    def __init__(self, sender: str, reason: str) -> None:
        super().__init__(f"secagg: rejected message from {sender!r}: {reason}")
        self.sender = sender
        self.reason = reason


class DoubleRevealError(SecAggError):
    """The aggregator asked for both secrets of one peer; revealing both would unmask its input."""


class SecAggAbort(SecAggError):
    """Too few participants remain for the threshold: the round cannot complete safely."""


class TranscriptError(SecAggError):
    """A published aggregation transcript does not verify."""

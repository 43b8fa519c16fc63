"""Errors of the privacy layer (typed, so the CLI prints one line and the round can refuse)."""

from __future__ import annotations

from consortium.core.errors import ConsortiumError


class PrivacyError(ConsortiumError):
    """A privacy guarantee cannot be met as configured (or a recorded spend does not add up)."""


class BudgetExceeded(PrivacyError):
    """The next round would spend more than the purpose's (epsilon, delta) budget allows."""

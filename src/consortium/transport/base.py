"""The transport interface every node talks through, and the limits every transport enforces.

A transport moves opaque payloads (the protocol layer encodes them as canonical dag-cbor) between
members of one consortium: `request(peer, method, payload)` returns the peer's reply, and a started
transport hands each incoming request to one `Handler(sender, method, payload) -> reply`.

Error contract, the same for every transport:
- `TransportError`: the peer is unreachable, the request timed out, or it failed in transit.
- `PeerRefused` (a `TransportError`): the peer answered but refused: the caller is not a member,
  the message is over the size limit, the method name is invalid, or its handler raised a
  `ConsortiumError` (whose message, never a traceback, comes back to the caller).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from consortium.core.errors import TransportError

#: Handler of incoming requests: (sender node id, method name, payload) -> reply payload.
Handler = Callable[[str, str, bytes], Awaitable[bytes]]

#: Largest request or reply, in bytes (a whole model update must fit).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Payloads larger than this are streamed in chunks of this size.
CHUNK_BYTES = 1024 * 1024

#: Longest error message sent back to a caller (a hostile handler error cannot flood the log).
MAX_ERROR_CHARS = 1000

DEFAULT_TIMEOUT = 30.0

_METHOD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}")


def check_method(method: str) -> str:
    """Return `method` if it is a valid method name (short ASCII), else raise TransportError."""
    if not isinstance(method, str) or _METHOD_RE.fullmatch(method) is None:
        raise TransportError(
            f"invalid method name {method!r}: use 1-64 ASCII letters, digits, '_', '.', '-', '/'"
        )
    return method


def check_size(size: int, limit: int, what: str) -> None:
    """Raise TransportError if a message of `size` bytes is over `limit`."""
    if size > limit:
        raise TransportError(f"{what} is {size} bytes, over the {limit}-byte message limit")


def error_text(exc: BaseException) -> str:
    """The message of a handler error as it travels back to the caller: one bounded line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


@runtime_checkable
class Transport(Protocol):
    """Request/reply messaging between consortium members."""

    node_id: str

    async def start(self, handler: Handler) -> None:
        """Start accepting requests; each is passed to `handler`."""
        ...

    async def stop(self) -> None:
        """Stop accepting requests and close connections to peers."""
        ...

    async def request(
        self, peer: str, method: str, payload: bytes, timeout: float = DEFAULT_TIMEOUT
    ) -> bytes:
        """Send `payload` to `peer`'s handler for `method` and return its reply.

        Raises TransportError (or PeerRefused) as described in the module docstring.
        """
        ...

"""Requests a node serves besides round messages: `sync` (ledger catch-up) and `artifact`.

Like `messages.decode_message`, each `decode` is the only way in for its method and shape-checks
every field, so a peer's garbage becomes a `ProtocolError` (refused by name over the transport)
and never a KeyError or TypeError inside the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError
from consortium.protocol.messages import ProtocolError, _int, _str
from consortium.store.cid import CID, parse_cid

#: A sync or artifact request is a few dozen bytes; anything much larger is not one.
MAX_REQUEST_BYTES = 4096


def _fields(method: str, data: bytes, keys: set[str]) -> dict[str, Any]:
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"{method} request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        obj = decode(data)
    except ConsortiumError as exc:
        raise ProtocolError(f"undecodable {method} request: {exc}") from exc
    if not isinstance(obj, dict) or set(obj) != keys:
        raise ProtocolError(f"{method} request must be a map {{{', '.join(sorted(keys))}}}")
    return obj


@dataclass(frozen=True)
class SyncRequest:
    """Entries from ledger index `start` on, with the cosigned heads and a consistency proof."""

    start: int

    def to_bytes(self) -> bytes:
        return encode({"from": self.start})

    @classmethod
    def decode(cls, data: bytes) -> SyncRequest:
        return cls(_int(_fields("sync", data, {"from"}), "from"))


@dataclass(frozen=True)
class ArtifactRequest:
    """The bytes of a stored artifact; the caller re-hashes them against `cid`."""

    cid: CID

    def to_bytes(self) -> bytes:
        return encode({"cid": str(self.cid)})

    @classmethod
    def decode(cls, data: bytes) -> ArtifactRequest:
        text = _str(_fields("artifact", data, {"cid"}), "cid", 128)
        try:
            return cls(parse_cid(text))
        except ConsortiumError as exc:
            raise ProtocolError(f"artifact request: {exc}") from exc

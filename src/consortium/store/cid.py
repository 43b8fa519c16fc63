"""Content identifiers: CIDv1, base32, sha2-256, over the `raw` and `dag-cbor` codecs.

A CID names bytes by their hash, so anything read back can be checked against the name it was
asked for. We accept only the one hash function and the two codecs the store writes: a CID with
the `identity` hash, say, would "verify" any bytes it carries and must never be trusted.
"""

from __future__ import annotations

import hmac
from typing import Any

from multiformats import CID, multihash

from consortium.core.errors import IntegrityError, StoreError

__all__ = ["CODECS", "CID", "as_cid", "check", "cid_for", "parse_cid"]

#: Codecs the store writes and accepts.
CODECS = frozenset({"raw", "dag-cbor"})
_HASH = "sha2-256"


def cid_for(data: bytes, codec: str = "raw") -> CID:
    """The CIDv1 (base32, sha2-256) of `data` under `codec`."""
    if codec not in CODECS:
        raise StoreError(f"unsupported codec {codec!r}; use one of {sorted(CODECS)}")
    return CID("base32", 1, codec, multihash.digest(bytes(data), _HASH))


def _accept(cid: CID, text: str) -> CID:
    if cid.version != 1:
        raise StoreError(f"CID {text} is version {cid.version}; only CIDv1 is accepted")
    if cid.codec.name not in CODECS:
        raise StoreError(f"CID {text} has codec {cid.codec.name}; expected one of {sorted(CODECS)}")
    if cid.hashfun.name != _HASH:
        raise StoreError(f"CID {text} uses hash {cid.hashfun.name}; only {_HASH} is accepted")
    # One printable form per CID, so that file names and log lines compare equal.
    return cid.set(base="base32")


def parse_cid(text: str) -> CID:
    """Parse a printable CID, refusing garbage and CIDs the store cannot hold."""
    text = text.strip()
    try:
        cid = CID.decode(text)
    except Exception as exc:  # multiformats raises several unrelated types on garbage
        raise StoreError(f"not a valid CID: {text!r}") from exc
    return _accept(cid, text)


def as_cid(value: CID | str | Any) -> CID:
    """Accept a CID object or its printable form; normalise to base32."""
    if isinstance(value, CID):
        return _accept(value, str(value))
    if isinstance(value, str):
        return parse_cid(value)
    raise StoreError(f"expected a CID, got {type(value).__name__}")


def check(cid: CID | str, data: bytes) -> None:
    """Raise IntegrityError unless `data` hashes to `cid`."""
    cid = as_cid(cid)
    actual = multihash.digest(bytes(data), _HASH)
    if not hmac.compare_digest(bytes(actual), bytes(cid.digest)):
        raise IntegrityError(f"block {cid} is corrupt: its bytes do not hash to its CID")

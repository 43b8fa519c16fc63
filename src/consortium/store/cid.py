"""Content identifiers: sha2-256 over the `raw`, `dag-pb` and `dag-cbor` codecs.

A CID names bytes by their hash, so anything read back can be checked against the name it was
asked for. We accept only the one hash function and the three codecs the store holds: a CID with
the `identity` hash, say, would "verify" any bytes it carries and must never be trusted.

CIDv1 is printed in base32 (`bafy…`, `bafk…`); CIDv0 (`Qm…`, kubo's default, always dag-pb and
base58btc) is accepted and printed as itself, so `store put` under that profile prints what
`ipfs add` prints. A CIDv0 and the CIDv1 of the same dag-pb block name the same bytes: the store
files both under the CIDv1 (`cid_key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from multiformats import CID

from consortium.core.errors import IntegrityError, StoreError

__all__ = ["CID", "CODECS", "as_cid", "check", "cid_for", "cid_key", "parse_cid"]

#: Codecs the store writes and accepts.
CODECS = frozenset({"raw", "dag-pb", "dag-cbor"})
_HASH = "sha2-256"
#: Multihash prefix of a sha2-256 digest: code 0x12, length 32.
_SHA256_PREFIX = b"\x12\x20"
#: Binary prefix of a CIDv1 with the dag-pb codec (version 1, codec 0x70).
_V1_DAG_PB = b"\x01\x70"


def cid_for(data: bytes, codec: str = "raw", version: int = 1) -> CID:
    """The CID (sha2-256) of `data` under `codec`: CIDv1 in base32, or CIDv0 for dag-pb."""
    if codec not in CODECS:
        raise StoreError(f"unsupported codec {codec!r}; use one of {sorted(CODECS)}")
    mh = _SHA256_PREFIX + hashlib.sha256(data).digest()
    if version == 0:
        if codec != "dag-pb":
            raise StoreError(f"a CIDv0 is always dag-pb, not {codec}")
        return CID("base58btc", 0, codec, mh)
    return CID("base32", 1, codec, mh)


def cid_key(cid: CID) -> str:
    """`str(cid)` in base32, computed with the standard library.

    multiformats validates every character it encodes (about 0.2 ms per CID, measured), which
    showed up as a third of the store's write time; the binary form plus base64 is equal and fast.
    A CIDv0 gets the key of its CIDv1 (same codec and hash, so the same bytes).
    """
    raw = bytes(cid) if cid.version == 1 else _V1_DAG_PB + bytes(cid)
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _accept(cid: CID) -> CID:
    if cid.codec.name not in CODECS:
        raise StoreError(f"CID {cid} has codec {cid.codec.name}; expected one of {sorted(CODECS)}")
    if cid.hashfun.name != _HASH:
        raise StoreError(f"CID {cid} uses hash {cid.hashfun.name}; only {_HASH} is accepted")
    if cid.version == 0:  # always dag-pb, sha2-256 and base58btc (multiformats checks)
        return cid
    # One printable form per CID, so that file names and log lines compare equal.
    return cid if cid.base.name == "base32" else cid.set(base="base32")


def parse_cid(text: str) -> CID:
    """Parse a printable CID, refusing garbage and CIDs the store cannot hold."""
    text = text.strip()
    try:
        cid = CID.decode(text)
    except Exception as exc:  # multiformats raises several unrelated types on garbage
        raise StoreError(f"not a valid CID: {text!r}") from exc
    return _accept(cid)


def as_cid(value: CID | str | Any) -> CID:
    """Accept a CID object or its printable form; normalise to base32."""
    if isinstance(value, CID):
        return _accept(value)
    if isinstance(value, str):
        return parse_cid(value)
    raise StoreError(f"expected a CID, got {type(value).__name__}")


def check(cid: CID | str, data: bytes) -> None:
    """Raise IntegrityError unless `data` hashes to `cid`."""
    cid = as_cid(cid)
    actual = hashlib.sha256(data).digest()
    if not hmac.compare_digest(actual, bytes(cid.raw_digest)):
        raise IntegrityError(f"block {cid} is corrupt: its bytes do not hash to its CID")

"""Canonical encoding: deterministic dag-cbor for everything that is hashed or signed.

`dag-cbor` sorts map keys and uses the shortest integer forms, so equal objects always give equal
bytes. Signatures never cover bare bytes: `signing_payload` prefixes a domain-separation tag so a
signature made for one purpose (a tree head, say) never verifies for another (a genesis manifest).
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

import dag_cbor

from consortium.core.errors import EncodingError

#: Protocol version prefix of every domain tag.
DOMAIN_PREFIX = b"consortium/v1/"

#: Largest canonical object we will decode from an untrusted source (bytes).
MAX_DECODE_BYTES = 64 * 1024 * 1024


class Domain(enum.Enum):
    """What a signature is for. Each value becomes part of the signed bytes."""

    GENESIS = "genesis"
    TREE_HEAD = "tree-head"
    RECORD = "record"
    TLS_BINDING = "tls-binding"
    ROUND = "round"
    MESSAGE = "message"
    CHAIN_KEY = "chain-key"
    CHAIN_ACCOUNT = "chain-account"


def encode(obj: Any) -> bytes:
    """Encode `obj` (dicts with str keys, lists, int, str, bytes, bool, None, CIDs) canonically."""
    try:
        return bytes(dag_cbor.encode(obj))
    except (TypeError, ValueError) as exc:  # dag_cbor raises these for unsupported values
        raise EncodingError(f"cannot encode object canonically: {exc}") from exc


def decode(data: bytes, *, max_bytes: int = MAX_DECODE_BYTES) -> Any:
    """Decode canonical dag-cbor, refusing oversized or non-canonical input."""
    if len(data) > max_bytes:
        raise EncodingError(f"encoded object is {len(data)} bytes, limit is {max_bytes}")
    try:
        obj = dag_cbor.decode(data)
    except Exception as exc:  # the decoder raises several unrelated types on garbage
        raise EncodingError(f"not valid dag-cbor: {exc}") from exc
    if encode(obj) != bytes(data):
        raise EncodingError("dag-cbor bytes are not in canonical form")
    return obj


def signing_payload(domain: Domain, obj: Any) -> bytes:
    """The exact bytes a signature covers: length-prefixed domain tag, then canonical bytes."""
    tag = DOMAIN_PREFIX + domain.value.encode("ascii")
    return bytes([len(tag)]) + tag + encode(obj)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def digest(obj: Any) -> bytes:
    """SHA-256 of the canonical encoding of `obj`."""
    return sha256(encode(obj))

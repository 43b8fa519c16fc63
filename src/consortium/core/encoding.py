"""Canonical encoding: deterministic dag-cbor for everything that is hashed or signed.

`dag-cbor` sorts map keys and uses the shortest integer forms, so equal objects always give equal
bytes. Signatures never cover bare bytes: `signing_payload` prefixes a domain-separation tag so a
signature made for one purpose (a tree head, say) never verifies for another (a genesis manifest),
and, for consortium state, the consortium's genesis digest so a signature made in one consortium
never verifies in another whose members overlap.
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
    BOX_KEY = "box-key"
    BEACON_DEALING = "beacon-dealing"


#: Domains of statements about an identity itself, made before (or to define) any consortium: the
#: genesis manifest and the beacon dealings inside it, a node's TLS key, box key and EVM account,
#: and the key its EVM account derives from.
#: Their signatures carry no consortium digest (the same node.pub serves every consortium).
IDENTITY_DOMAINS: frozenset[Domain] = frozenset(
    {
        Domain.GENESIS,
        Domain.TLS_BINDING,
        Domain.CHAIN_KEY,
        Domain.CHAIN_ACCOUNT,
        Domain.BOX_KEY,
        Domain.BEACON_DEALING,
    }
)
#: Domains of consortium state (ledger records, tree heads, round and protocol messages): their
#: signatures cover the genesis digest, so one never replays into another consortium. Every
#: domain not listed as an identity domain is bound, so a new protocol domain is bound by default.
CONSORTIUM_DOMAINS: frozenset[Domain] = frozenset(Domain) - IDENTITY_DOMAINS

#: Length of a consortium digest (`Genesis.digest()`, SHA-256).
CONSORTIUM_DIGEST_BYTES = 32


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


def domain_prefix(domain: Domain, consortium: bytes = b"") -> bytes:
    """`len(tag) ‖ tag ‖ consortium`: what precedes the canonical bytes in every signed payload.

    Raises ValueError (a programming error, never a peer's) when a consortium-bound domain gets no
    32-byte genesis digest or an identity domain gets one, so no call site can forget the digest.
    """
    if domain in CONSORTIUM_DOMAINS:
        if len(consortium) != CONSORTIUM_DIGEST_BYTES:
            raise ValueError(
                f"a {domain.value} signature must cover the consortium's "
                f"{CONSORTIUM_DIGEST_BYTES}-byte genesis digest, got {len(consortium)} bytes"
            )
    elif consortium:
        raise ValueError(f"a {domain.value} signature is not bound to a consortium")
    tag = DOMAIN_PREFIX + domain.value.encode("ascii")
    return bytes([len(tag)]) + tag + bytes(consortium)


def signing_payload(domain: Domain, obj: Any, consortium: bytes = b"") -> bytes:
    """The exact bytes a signature covers: `len(tag) ‖ tag ‖ consortium ‖ canonical(obj)`.

    The tag is length-prefixed and names the domain, which fixes whether a 32-byte digest follows,
    so every payload splits one way only.
    """
    return domain_prefix(domain, consortium) + encode(obj)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def digest(obj: Any) -> bytes:
    """SHA-256 of the canonical encoding of `obj`."""
    return sha256(encode(obj))

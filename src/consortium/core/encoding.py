"""Canonical encoding: deterministic dag-cbor for everything that is hashed or signed.

`dag-cbor` sorts map keys and uses the shortest integer forms, so equal objects always give equal
bytes. Objects are encoded with the `dag_cbor` package (pure Python, the reference) and decoded with
`cbor2`'s C decoder behind a check of our own (see `decode`), over ten times faster: every ledger
entry, message and block read goes through `decode`.

Signatures never cover bare bytes: `signing_payload` prefixes a domain-separation tag so a
signature made for one purpose (a tree head, say) never verifies for another (a genesis manifest),
and, for consortium state, the consortium's genesis digest so a signature made in one consortium
never verifies in another whose members overlap.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

import cbor2
import dag_cbor
from multiformats import CID

from consortium.core.errors import EncodingError

#: Protocol version prefix of every domain tag.
DOMAIN_PREFIX = b"consortium/v1/"

#: Largest canonical object we will decode from an untrusted source (bytes).
MAX_DECODE_BYTES = 64 * 1024 * 1024

#: Deepest nesting of lists and maps `decode` accepts (cbor2's own limit is 400).
MAX_DECODE_DEPTH = 256


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
    STORAGE_ANSWER = "storage-answer"


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
    """Decode canonical dag-cbor, refusing oversized or non-canonical input.

    Exactly the inputs the reference codec accepts (`dag_cbor.decode` whose result re-encodes to
    the same bytes), decoded to equal objects (tests/test_encoding.py checks both against it):
    1. `_scan` walks the item heads in Python, building nothing, and refuses every form the
       reference refuses, before cbor2 sees a byte: anything after the one top-level item,
       indefinite lengths, heads not in their shortest form, any tag but 42 (so none of cbor2's
       semantic decoders ever runs on untrusted bytes: a rational's gcd alone costs quadratic
       time), a simple value but false, true and null, floats but finite 64-bit ones, map keys
       that are not text or not in strictly canonical order (length, then bytes: so no key
       repeats), nesting deeper than MAX_DECODE_DEPTH;
    2. cbor2's C decoder builds the objects from what is left: canonical items of the dag-cbor
       kinds only, each of which it decodes to exactly one value (text as strict UTF-8);
    3. every tag-42 byte string must be 0x00 and a CID whose binary form is exactly those bytes.
    """
    if len(data) > max_bytes:
        raise EncodingError(f"encoded object is {len(data)} bytes, limit is {max_bytes}")
    data = bytes(data)
    cids = _scan(data)
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # invalid UTF-8 is the one refusal left to cbor2
        raise EncodingError(f"not valid dag-cbor: {exc}") from exc
    return _link(obj) if cids else obj


#: Smallest argument that needs a head of 1 + 2**(info - 24) bytes, by additional info 24..27.
_SHORTEST = (24, 1 << 8, 1 << 16, 1 << 32)


def _scan(data: bytes) -> int:
    """Step 1 of `decode`; return the number of tag-42 items (CIDs) in `data`."""
    i = 0
    cids = 0
    left = 1  # items left in the innermost open container (for a map: its keys and values)
    keyed = False  # whether that container is a map
    prev: tuple[int, bytes] | None = None  # the map's previous key: (length, bytes)
    outer: list[tuple[int, bool, tuple[int, bytes] | None]] = []  # the containers around it
    try:
        while True:
            if left == 0:
                if not outer:
                    break
                left, keyed, prev = outer.pop()
                continue
            b = data[i]
            major, info = b >> 5, b & 31
            if info < 24:
                arg = info
                i += 1
            elif info < 28:
                end = i + 1 + (1 << (info - 24))  # past the end: refused after the loop
                arg = int.from_bytes(data[i + 1 : end], "big")
                i = end
                if major == 7:
                    if info != 27:
                        raise EncodingError("dag-cbor allows only 64-bit floats")
                    if data[end - 8] & 0x7F == 0x7F and data[end - 7] & 0xF0 == 0xF0:
                        raise EncodingError("dag-cbor allows no NaN or infinite float")
                elif arg < _SHORTEST[info - 24]:
                    raise EncodingError("dag-cbor bytes are not in canonical form (a long head)")
            else:
                raise EncodingError("dag-cbor allows no indefinite length (or reserved head)")
            if keyed and not left & 1:  # a key: a map's items alternate key, value
                if major != 3:
                    raise EncodingError("dag-cbor map keys must be strings")
                key = (arg, data[i : i + arg])
                if prev is not None and key <= prev:
                    raise EncodingError("dag-cbor map keys are not in canonical order (or repeat)")
                prev = key
            left -= 1
            if major == 2 or major == 3:
                i += arg
            elif major == 4 or major == 5:
                if len(outer) >= MAX_DECODE_DEPTH:
                    raise EncodingError(f"dag-cbor nested deeper than {MAX_DECODE_DEPTH}")
                outer.append((left, keyed, prev))
                left, keyed, prev = (2 * arg, True, None) if major == 5 else (arg, False, None)
            elif major == 6:
                if arg != 42:
                    raise EncodingError(f"dag-cbor allows only tag 42 (CIDs), found tag {arg}")
                cids += 1
                outer.append((left, keyed, prev))
                left, keyed, prev = 1, False, None
            elif major == 7 and info < 24 and arg not in (20, 21, 22):
                raise EncodingError("dag-cbor allows no simple value but false, true and null")
    except IndexError:
        raise EncodingError("not valid dag-cbor: truncated") from None
    if i != len(data):
        raise EncodingError("not valid dag-cbor: bytes after the object, or truncated")
    return cids


def _cid(tag: cbor2.CBORTag) -> CID:
    raw = tag.value
    if not isinstance(raw, bytes) or raw[:1] != b"\x00":
        raise EncodingError("dag-cbor tag 42 must hold 0x00 and a binary CID")
    try:
        cid = CID.decode(raw[1:])
    except Exception as exc:  # multiformats raises several types on garbage
        raise EncodingError(f"not a valid CID in dag-cbor: {exc}") from exc
    if bytes(cid) != raw[1:]:  # multiformats refuses the forms we know of; whatever its version
        raise EncodingError("dag-cbor bytes are not in canonical form (a CID)")
    return cid


def _link(obj: Any) -> Any:
    """`obj` with every tag-42 value replaced, in place, by its CID (step 3 of `decode`)."""
    if isinstance(obj, cbor2.CBORTag):
        return _cid(obj)
    stack = [obj]
    while stack:
        item = stack.pop()
        slots = item.items() if isinstance(item, dict) else enumerate(item)
        for k, v in slots:
            if isinstance(v, cbor2.CBORTag):
                item[k] = _cid(v)
            elif isinstance(v, (dict, list)):
                stack.append(v)
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

"""`core.encoding.decode` (cbor2's C decoder behind our own checks) against the reference codec.

The reference is what `decode` was before: `dag_cbor.decode`, accepted only if `dag_cbor.encode`
gives back the very bytes. The fast decoder must accept exactly the same inputs (nesting deeper
than MAX_DECODE_DEPTH excepted: refused, where the reference hits Python's recursion limit a
little later) and return equal objects; it must never hand a semantic tag to cbor2.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import dag_cbor
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from consortium.core.encoding import MAX_DECODE_DEPTH, decode, encode
from consortium.core.errors import EncodingError

REFUSED = object()
SETTINGS = settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)

_CIDS = [
    CID("base32", 1, "raw", multihash.digest(b"a", "sha2-256")),
    CID("base32", 1, "dag-cbor", multihash.digest(b"b", "sha2-256")),
    CID("base58btc", 0, "dag-pb", multihash.digest(b"c", "sha2-256")),
]

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.binary(max_size=40)
    | st.sampled_from(_CIDS),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


def reference(data: bytes) -> Any:
    try:
        obj = dag_cbor.decode(data)
        return obj if dag_cbor.encode(obj) == data else REFUSED
    except Exception:  # the reference raises many types on garbage, RecursionError included
        return REFUSED


def fast(data: bytes) -> Any:
    try:
        return decode(data)
    except EncodingError:
        return REFUSED


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (True must not pass for 1, nor 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def agree(data: bytes) -> None:
    want, got = reference(data), fast(data)
    assert (want is REFUSED) == (got is REFUSED), (data.hex(), want, got)
    if want is not REFUSED:
        assert same(want, got), (data.hex(), want, got)


@SETTINGS
@given(values)
def test_decodes_what_the_reference_encodes_to_equal_objects(obj: Any) -> None:
    data = encode(obj)
    assert same(decode(data), dag_cbor.decode(data))
    assert encode(decode(data)) == data


@SETTINGS
@given(values, st.data())
def test_a_mutated_encoding_is_accepted_or_refused_as_the_reference_does(
    obj: Any, data: st.DataObject
) -> None:
    raw = bytearray(encode(obj))
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if how == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "set" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "insert":
            raw.insert(at, data.draw(st.integers(0, 255)))
        elif how == "delete" and raw:
            del raw[at]
        elif how == "truncate":
            del raw[at:]
    agree(bytes(raw))


@SETTINGS
@given(values)
def test_other_valid_cbor_of_the_same_value_is_refused_as_the_reference_does(obj: Any) -> None:
    """cbor2's own encodings: shortest floats (canonical=True), keys in insertion order."""
    for other in (cbor2.dumps(_tags(obj), canonical=True), cbor2.dumps(_tags(_reversed(obj)))):
        agree(other)


def _tags(obj: Any) -> Any:
    if isinstance(obj, CID):
        return cbor2.CBORTag(42, b"\x00" + bytes(obj))
    if isinstance(obj, dict):
        return {k: _tags(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tags(v) for v in obj]
    return obj


def _reversed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _reversed(obj[k]) for k in reversed(sorted(obj, key=lambda k: k.encode()))}
    if isinstance(obj, list):
        return [_reversed(v) for v in obj]
    return obj


_BAD = {
    "trailing byte": "0100",
    "truncated map": "a16161",
    "truncated bytes": "4401",
    "indefinite array": "9f0102ff",
    "indefinite map": "bf616101ff",
    "indefinite bytes": "5f4101ff",
    "indefinite text": "7f6161ff",
    "break": "ff",
    "reserved head": "1c",
    "int not shortest (1 byte)": "1817",
    "int not shortest (2 bytes)": "1900ff",
    "int not shortest (4 bytes)": "1a0000ffff",
    "int not shortest (8 bytes)": "1b00000000ffffffff",
    "negative int not shortest": "3817",
    "length not shortest": "5801ff",
    "key length not shortest": "a1780161" + "01",
    "array length not shortest": "980101",
    "half float": "f93c00",
    "single float": "fa3f800000",
    "NaN": "fb7ff8000000000000",
    "infinity": "fb7ff0000000000000",
    "minus infinity": "fbfff0000000000000",
    "undefined": "f7",
    "simple value 16": "f0",
    "simple value 32": "f820",
    "false in two bytes": "f814",
    "keys out of order": "a2616201616102",
    "longer key first": "a262616101616202",
    "repeated key": "a2616101616102",
    "integer key": "a10101",
    "bytes key": "a1416101",
    "invalid utf-8": "62c328",
    "invalid utf-8 key": "a162c32801",
    "tag 42 on text": "d82a6161",
    "tag 42 without the 0x00 prefix": "d82a420155",
    "tag 42 with 0x01, then a CID": "d82a5825" + "01" + bytes(_CIDS[0]).hex(),
    "tag 42, not a CID": "d82a4300ffff",
    "tag 42 twice": "d82ad82a4100",
    "tag 0 (date text)": "c07818323031332d30332d32315432303a30343a30305a",
    "tag 1 (epoch date)": "c11a514b67b0",
    "tag 2 (bignum in range)": "c24101",
    "tag 2 (bignum out of range)": "c249010000000000000000",
    "tag 3 (negative bignum)": "c349010000000000000000",
    "tag 4 (decimal)": "c48221196ab3",
    "tag 5 (bigfloat)": "c5822003",
    "tag 24 (embedded CBOR)": "d8184101",
    "tag 25 (string reference)": "d81900",
    "tag 28 (shareable)": "d81c80",
    "tag 29 (shared reference)": "d81d00",
    "tag 30 (rational)": "d81e820102",
    "tag 35 (regex)": "d8236161",
    "tag 36 (MIME)": "d8246161",
    "tag 37 (UUID)": "d82550" + "00" * 16,
    "tag 256 (string namespace)": "d9010080",
    "tag 258 (set)": "d9010280",
    "tag 55799 (self-described)": "d9d9f701",
}


@pytest.mark.parametrize("name", sorted(_BAD))
def test_non_canonical_and_non_dag_cbor_inputs_are_refused(name: str) -> None:
    data = bytes.fromhex(_BAD[name])
    assert reference(data) is REFUSED
    with pytest.raises(EncodingError):
        decode(data)


def test_a_cid_decodes_to_a_cid_anywhere() -> None:
    obj = {"a": _CIDS[0], "b": [_CIDS[1], {"c": _CIDS[2]}], "d": b"\x00"}
    data = encode(obj)
    assert same(decode(data), obj)
    assert same(decode(encode(_CIDS[0])), _CIDS[0])


def test_a_cid_whose_bytes_are_not_its_binary_form_is_refused() -> None:
    raw = bytes(_CIDS[0])  # version 1: a varint; 0x81 0x00 is the same 1, not shortest
    padded = b"\x00\x81\x00" + raw[1:]
    data = b"\xd8\x2a" + cbor2.dumps(padded)
    assert reference(data) is REFUSED
    with pytest.raises(EncodingError):
        decode(data)


def test_a_semantic_tag_is_refused_before_cbor2_decodes_anything() -> None:
    """A rational of two 400 kB integers costs cbor2 seconds (a quadratic gcd): it must be refused
    from its head, so no timing is needed to show it: cbor2 would return a Fraction instead."""
    big = b"\xc2" + cbor2.dumps(b"\xff" * 400_000)
    data = b"\xd8\x1e\x82" + big + big
    with pytest.raises(EncodingError, match="tag 30"):
        decode(data)


def test_inside_an_indefinite_container_nothing_reaches_cbor2() -> None:
    """The scan cannot see into an indefinite-length container, so it refuses the container
    itself: a semantic tag inside is never decoded (the refusal names the container)."""
    rational = "d81e820102"  # tag 30: the fraction 1/2
    for data in ("9f" + rational + "ff", "bf6161" + rational + "ff"):
        with pytest.raises(EncodingError, match="indefinite"):
            decode(bytes.fromhex(data))


def test_nesting_is_bounded() -> None:
    deep = b"\x81" * (MAX_DECODE_DEPTH - 1) + b"\x01"
    assert decode(deep) == dag_cbor.decode(deep)
    with pytest.raises(EncodingError, match="nested deeper"):
        decode(b"\x81" * (MAX_DECODE_DEPTH + 1) + b"\x01")
    with pytest.raises(EncodingError):
        decode(b"\x81" * 100_000 + b"\x01")


def test_a_huge_claimed_length_is_refused_without_allocating() -> None:
    for head in ("9b", "bb", "5b", "7b"):
        with pytest.raises(EncodingError):
            decode(bytes.fromhex(head + "00000001" + "00000000"))

"""CARv1 files: blocks in and out of the store in the format every IPFS tool reads.

    CAR     = varint(len(header)) header section*
    header  = dag-cbor {"roots": [CID, ...], "version": 1}
    section = varint(len(cid) + len(data)) cid data        (a CIDv0 is its bare multihash)

Written here, not taken from a package: the format is the few lines above, and what matters is
reading hostile files in bounded memory (PyPI's `ipld-car` 0.0.1 reads a whole file into memory and
slices past its end without noticing truncation).

Import verifies every block before adding any: each section is parsed, its codec and hash
checked, its bytes re-hashed against its CID and decoded for its codec, and staged in a folder
beside `blocks`; only when the whole file has passed are the staged blocks added. So a CAR with
one bad block, an unsupported codec, or a truncated end adds nothing. (A failure while adding,
such as a full disk, leaves the blocks added so far: each is complete and valid, as any put.)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from multiformats import CID, multicodec, varint

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError, EncodingError, FileWriteError, StoreError
from consortium.core.files import atomic_write
from consortium.store.blockstore import MAX_BLOCK_SIZE, STAGING_PREFIX, BlockStore
from consortium.store.cid import cid_for, cid_key
from consortium.store.dagpb import decode_node
from consortium.store.objects import iter_blocks

#: Largest header we read: roots are CIDs of under 100 bytes, so this is ~10,000 of them.
MAX_HEADER = 1024 * 1024
#: Largest section: the largest block plus a generous CID.
MAX_SECTION = MAX_BLOCK_SIZE + 256
_CODECS = {0x55: "raw", 0x70: "dag-pb", 0x71: "dag-cbor"}
_SHA2_256 = 0x12


def _cid_bytes(cid: CID) -> bytes:
    return bytes(cid)  # a CIDv0's binary form is its multihash, as CARs write it


def car_header(roots: list[CID]) -> bytes:
    header = encode({"roots": list(roots), "version": 1})
    return varint.encode(len(header)) + header


def car_section(cid: CID, data: bytes) -> bytes:
    raw = _cid_bytes(cid)
    return varint.encode(len(raw) + len(data)) + raw


def write_car(path: Path | str, roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> int:
    """Write a CARv1 of `blocks` under `roots` to `path` atomically (a failure while `blocks` is
    drawn, say a missing block, leaves `path` untouched); return the number of blocks."""
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        yield car_header(roots)
        for cid, data in blocks:
            yield car_section(cid, data)
            yield data
            count += 1

    try:
        atomic_write(Path(path), chunks())
    except FileWriteError as exc:
        raise StoreError(str(exc)) from exc
    return count


# -- reading ---------------------------------------------------------------------------------------


class _Reader:
    """A binary file read sequentially, knowing its offset, failing with the CAR's name."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh, self.name, self.offset = fh, name, 0

    def fail(self, why: str) -> StoreError:
        return StoreError(f"CAR {self.name}: {why}")

    def exact(self, n: int, what: str) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise self.fail(
                f"truncated: {what} at byte {self.offset} needs {n} bytes, the file has "
                f"{len(data)} more"
            )
        self.offset += n
        return data

    def varint(self, what: str, *, eof_ok: bool = False) -> int | None:
        value = shift = 0
        start = self.offset
        for i in range(9):  # a CAR's varints are at most 63 bits
            byte = self.fh.read(1)
            if not byte:
                if i == 0 and eof_ok:
                    return None
                raise self.fail(f"truncated: {what} at byte {start} ends with the file")
            self.offset += 1
            value |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return value
            shift += 7
        raise self.fail(f"{what} at byte {start} is longer than 9 bytes")


def _split_cid(section: bytes) -> tuple[CID, bytes] | str:
    """(CID, block bytes) of one section, or why its CID is refused."""
    if section[:2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        if len(section) < 34:
            return "a CIDv0 shorter than its hash"
        return CID("base58btc", 0, "dag-pb", section[:34]), section[34:]
    pos = 0
    values = []
    for _ in range(4):  # version, codec, hash code, digest length
        value = shift = 0
        while True:
            if pos >= len(section) or shift > 63:
                return "a malformed CID"
            byte = section[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        values.append(value)
    version, codec, hash_code, length = values
    if version != 1:
        return f"a CID of version {version}"
    named = _named(section[: pos + length])
    if codec not in _CODECS:
        return (
            f"{named}codec {_codec_name(codec)}; this store holds "
            f"{', '.join(sorted(_CODECS.values()))} blocks"
        )
    if hash_code != _SHA2_256 or length != 32:
        return f"{named}hash {_codec_name(hash_code)} of {length} bytes; only sha2-256 is accepted"
    if pos + 32 > len(section):
        return "a CID longer than its section"
    digest = section[pos : pos + 32]
    return CID("base32", 1, _CODECS[codec], b"\x12\x20" + digest), section[pos + 32 :]


def _codec_name(code: int) -> str:
    try:
        return str(multicodec.get(code=code).name)
    except (KeyError, ValueError):
        return f"0x{code:x}"


def _named(raw: bytes) -> str:
    """ "CID " for the message about a CID we refuse, where multiformats can print it."""
    try:
        return f"CID {CID.decode(raw).set(base='base32')} with "
    except Exception:  # an unknown codec or hash: the message names the code instead
        return ""


@dataclass
class CarReport:
    """What an import found and did."""

    roots: list[CID] = field(default_factory=list)
    blocks: int = 0  # distinct blocks in the file
    added: int = 0  # of them, blocks the store lacked


def read_car(fh: BinaryIO, name: str) -> tuple[list[CID], Iterator[tuple[CID, bytes]]]:
    """Parse a CARv1: its roots, and an iterator of its verified (CID, bytes). Every block is
    re-hashed against its CID and decoded for its codec; the first problem raises StoreError
    naming the block (its index, CID or offset) and what is wrong."""
    reader = _Reader(fh, name)
    size = reader.varint("the header length")
    assert size is not None
    if size == 0 or size > MAX_HEADER:
        raise reader.fail(f"a header of {size} bytes (not a CAR, or over {MAX_HEADER})")
    try:
        header = decode(reader.exact(size, "the header"))
    except EncodingError as exc:
        raise reader.fail(f"the header is not dag-cbor ({_first_line(exc)}); not a CAR?") from None
    except StoreError as exc:
        raise StoreError(f"{exc}; not a CAR file?") from None
    if not isinstance(header, dict) or not isinstance(header.get("version"), int):
        raise reader.fail("the header has no version; not a CAR file?")
    if header["version"] != 1:
        raise reader.fail(f"CAR version {header['version']} is not supported, only CARv1")
    roots = header.get("roots")
    if set(header) != {"roots", "version"} or not isinstance(roots, list):
        raise reader.fail("the header must hold exactly roots and version")
    if not all(isinstance(r, CID) for r in roots):
        raise reader.fail("a root is not a CID")

    def blocks() -> Iterator[tuple[CID, bytes]]:
        index = 0
        while True:
            start = reader.offset
            length = reader.varint(f"block {index}", eof_ok=True)
            if length is None:
                return
            if length == 0 or length > MAX_SECTION:
                raise reader.fail(
                    f"block {index} at byte {start} claims {length} bytes "
                    f"(a block holds 1 to {MAX_SECTION})"
                )
            parsed = _split_cid(reader.exact(length, f"block {index}"))
            if isinstance(parsed, str):
                raise reader.fail(f"block {index} at byte {start} has {parsed}")
            cid, data = parsed
            if hashlib.sha256(data).digest() != bytes(cid.raw_digest):
                raise reader.fail(f"block {index} ({cid}) does not match its CID")
            _check_codec(cid, data, reader, index)
            yield cid, data
            index += 1

    return [r.set(base="base32") if r.version == 1 else r for r in roots], blocks()


def _check_codec(cid: CID, data: bytes, reader: _Reader, index: int) -> None:
    try:
        if cid.codec.name == "dag-cbor":
            decode(data)
        elif cid.codec.name == "dag-pb":
            decode_node(data)
    except (EncodingError, StoreError) as exc:
        why = _first_line(exc).removeprefix(f"not valid {cid.codec.name}: ")
        raise reader.fail(f"block {index} ({cid}) is not valid {cid.codec.name}: {why}") from None


def _first_line(exc: Exception) -> str:
    """A decoder's message up to its first line break (some explain over several lines)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def import_car(store: BlockStore, path: Path | str) -> CarReport:
    """Add every block of the CARv1 at `path` to `store`, or none: see the module docstring."""
    path = Path(path)
    report = CarReport()
    with (
        open(path, "rb") as fh,
        tempfile.TemporaryDirectory(dir=store.root, prefix=STAGING_PREFIX) as tmp,
    ):
        roots, blocks = read_car(fh, path.name)
        report.roots = roots
        staged: list[tuple[str, str]] = []  # (key, codec) in file order
        seen: set[str] = set()
        for cid, data in blocks:
            key = cid_key(cid)
            if key in seen:
                continue
            seen.add(key)
            with open(os.path.join(tmp, key), "wb") as out:
                out.write(data)
            staged.append((key, cid.codec.name))
        report.blocks = len(staged)
        for key, codec in staged:  # every block verified: now add them
            if store.has(key):
                continue
            store.put_block(Path(tmp, key).read_bytes(), codec)
            report.added += 1
    return report


def export_car(
    store: BlockStore, path: Path | str, index: dict[str, Any], artifacts: list[tuple[CID, str]]
) -> tuple[CID, int]:
    """Write a CARv1 to `path` whose one root is `index` (a dag-cbor object, written first and
    not stored) followed by every block of each artifact, depth first, each block once: one DAG
    that `ipfs dag import` pins whole. Each artifact comes with where it is referenced, which
    names it in the error when a block is missing or damaged (and then `path` is untouched).
    Returns the root and the number of blocks."""
    data = encode(index)
    root = cid_for(data, "dag-cbor")
    seen = {cid_key(root)}

    def blocks() -> Iterator[tuple[CID, bytes]]:
        yield root, data
        for cid, where in artifacts:
            try:
                yield from iter_blocks(store, cid, seen)
            except ConsortiumError as exc:
                raise StoreError(f"{cid} ({where}): {exc}") from None

    return root, write_car(path, [root], blocks())

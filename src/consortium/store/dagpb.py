"""dag-pb and UnixFS: the two small protobuf messages an IPFS file is made of.

Written here rather than taken from a library, on purpose: aleph-cid (the maintained, Rust-backed
package pinned against kubo's golden tests) computes CIDs but hands back no blocks, so nothing to
store, serve or put in a CAR, and its Python API lacks the unixfs-v1-2025 profile; the one Python
dag-pb package (ipld-dag-pb 0.0.1, a single release) raises bare `Exception`s on hostile input and
has no UnixFS. The subset we need is a few fields; the tests check the bytes we write against kubo,
aleph-cid and the JavaScript importer, and the decoder is strict as the dag-pb spec asks.

    message PBLink { bytes Hash = 1; string Name = 2; uint64 Tsize = 3; }  // in that order
    message PBNode { repeated PBLink Links = 2; bytes Data = 1; }          // Links first
    message Data   { Type Type = 1; bytes Data = 2; uint64 filesize = 3;
                     repeated uint64 blocksizes = 4; ... }                 // UnixFS, in PBNode.Data
"""

from __future__ import annotations

from dataclasses import dataclass

from multiformats import CID, varint

from consortium.core.errors import StoreError

#: UnixFS node types (unixfs.proto's DataType).
RAW, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = range(6)
TYPE_NAMES = ("raw", "directory", "file", "metadata", "symlink", "HAMT shard")

_MAX_VARINT = (1 << 64) - 1


@dataclass(frozen=True)
class Link:
    cid: CID
    name: str | None
    tsize: int | None


@dataclass(frozen=True)
class Node:
    links: tuple[Link, ...]
    data: bytes | None


@dataclass(frozen=True)
class UnixFSData:
    type: int
    data: bytes
    filesize: int | None
    blocksizes: tuple[int, ...]


# -- encoding --------------------------------------------------------------------------------------


def _bytes_field(number: int, value: bytes) -> bytes:
    return varint.encode(number << 3 | 2) + varint.encode(len(value)) + value


def _uint_field(number: int, value: int) -> bytes:
    return varint.encode(number << 3) + varint.encode(value)


def encode_node(links: list[tuple[CID, int]], data: bytes) -> bytes:
    """A PBNode with `links` (CID, Tsize; Name is empty, as kubo writes it) and `data`."""
    out = bytearray()
    for cid, tsize in links:
        body = _bytes_field(1, bytes(cid)) + _bytes_field(2, b"") + _uint_field(3, tsize)
        out += _bytes_field(2, body)
    out += _bytes_field(1, data)
    return bytes(out)


def encode_unixfs_file(data: bytes, filesize: int, blocksizes: list[int]) -> bytes:
    """UnixFS Data of a file node: type File, the bytes it holds itself, its size, and the size
    of each child (repeated, not packed: proto2, as go-unixfs writes it)."""
    out = bytearray(_uint_field(1, FILE))
    if data:
        out += _bytes_field(2, data)
    out += _uint_field(3, filesize)
    for size in blocksizes:
        out += _uint_field(4, size)
    return bytes(out)


# -- decoding (untrusted bytes) --------------------------------------------------------------------


class _Cursor:
    def __init__(self, buf: bytes, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def fail(self, why: str) -> StoreError:
        return StoreError(f"malformed {self.what}: {why}")

    def done(self) -> bool:
        return self.pos >= len(self.buf)

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.buf):
                raise self.fail("truncated varint")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise self.fail("varint longer than 64 bits")
        if value > _MAX_VARINT:
            raise self.fail("varint longer than 64 bits")
        return value

    def key(self) -> tuple[int, int]:
        k = self.varint()
        return k >> 3, k & 7

    def chunk(self) -> bytes:
        n = self.varint()
        if n > len(self.buf) - self.pos:
            raise self.fail("a length runs past the end")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def skip(self, wire: int) -> None:
        if wire == 0:
            self.varint()
        elif wire == 2:
            self.chunk()
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if size > len(self.buf) - self.pos:
                raise self.fail("a fixed-size field runs past the end")
            self.pos += size
        else:
            raise self.fail(f"unsupported wire type {wire}")


def _decode_link(buf: bytes) -> Link:
    cur = _Cursor(buf, "dag-pb link")
    seen: list[int] = []
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    while not cur.done():
        number, wire = cur.key()
        if number not in (1, 2, 3) or (seen and number <= seen[-1]):
            raise cur.fail(f"unexpected field {number} (Hash, Name, Tsize once each, in order)")
        seen.append(number)
        if number == 3:
            if wire != 0:
                raise cur.fail("Tsize is not a varint")
            tsize = cur.varint()
            continue
        if wire != 2:
            raise cur.fail(f"field {number} is not length-delimited")
        value = cur.chunk()
        if number == 1:
            try:
                cid = CID.decode(value)
            except Exception as exc:  # multiformats raises several types on garbage
                raise cur.fail("Hash is not a CID") from exc
        else:
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise cur.fail("Name is not UTF-8") from exc
    if cid is None:
        raise cur.fail("a link without a Hash")
    return Link(cid, name, tsize)


def decode_node(buf: bytes) -> Node:
    """Parse a dag-pb block: Links (field 2) then at most one Data (field 1), nothing else."""
    cur = _Cursor(bytes(buf), "dag-pb node")
    links: list[Link] = []
    data: bytes | None = None
    while not cur.done():
        number, wire = cur.key()
        if wire != 2:
            raise cur.fail(f"field {number} is not length-delimited")
        if number == 2:
            if data is not None:
                raise cur.fail("a link after the Data field")
            links.append(_decode_link(cur.chunk()))
        elif number == 1:
            if data is not None:
                raise cur.fail("two Data fields")
            data = cur.chunk()
        else:
            raise cur.fail(f"unexpected field {number}")
    return Node(tuple(links), data)


def decode_unixfs(buf: bytes) -> UnixFSData:
    """Parse UnixFS Data (a dag-pb node's Data field). Fields other than those of a file are
    skipped, as protobuf readers do (mode and mtime say nothing about a file's bytes)."""
    cur = _Cursor(bytes(buf), "UnixFS data")
    kind: int | None = None
    data = b""
    filesize: int | None = None
    sizes: list[int] = []
    while not cur.done():
        number, wire = cur.key()
        if number == 1 and wire == 0:
            kind = cur.varint()
        elif number == 2 and wire == 2:
            data = cur.chunk()
        elif number == 3 and wire == 0:
            filesize = cur.varint()
        elif number == 4 and wire == 0:
            sizes.append(cur.varint())
        elif number == 4 and wire == 2:  # packed, which proto2 readers also accept
            packed = _Cursor(cur.chunk(), "UnixFS blocksizes")
            while not packed.done():
                sizes.append(packed.varint())
        elif number in (1, 2, 3, 4):
            raise cur.fail(f"field {number} has the wrong wire type {wire}")
        else:
            cur.skip(wire)
    if kind is None:
        raise cur.fail("no Type")
    return UnixFSData(kind, data, filesize, tuple(sizes))

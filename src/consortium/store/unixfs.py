"""Files as UnixFS, with the CIDs kubo's `ipfs add` gives the same bytes.

A file is cut into fixed-size chunks; each chunk is a leaf (a `raw` block, or under CIDv0 a dag-pb
node of UnixFS type File holding it); leaves are grouped under dag-pb File nodes of at most
`max_links` children, level by level, into a balanced tree (kubo's default layout). A file of one
chunk is its leaf. Every node records its file size and the size of each child (`blocksizes`),
and each link its child's cumulative block size (`Tsize`), as kubo writes them.

Three profiles, named as the IPFS specs name them where they do (IPIP-499):

| profile          | CID | leaves | chunk   | links | kubo command                       |
|------------------|-----|--------|---------|-------|------------------------------------|
| `unixfs-v1-2025` | v1  | raw    | 1 MiB   | 1024  | `ipfs add` with the `unixfs-v1-2025` profile |
| `kubo-cid-v1`    | v1  | raw    | 256 KiB | 174   | `ipfs add --cid-version 1`         |
| `unixfs-v0-2015` | v0  | dag-pb | 256 KiB | 174   | `ipfs add` (kubo's default)        |

The consortium's profile is in its genesis manifest (`unixfs_profile`); the store reads a file
of any layout and accepts each profile's blocks, so files added elsewhere import as they are.

Reading checks sizes on the way down: a node whose children do not add up to what it declares is
refused before any byte past the mismatch reaches the caller, and every block is re-hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from consortium.core.errors import IntegrityError, StoreError
from consortium.core.genesis import DEFAULT_UNIXFS_PROFILE, UNIXFS_PROFILES
from consortium.store.cid import CID, as_cid, cid_for
from consortium.store.dagpb import (
    FILE,
    RAW,
    TYPE_NAMES,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs_file,
)

#: Deepest file tree we follow (a balanced tree of 174 links is 4 deep at 240 TB).
MAX_DEPTH = 32

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Profile:
    """How a file becomes blocks: CID version, leaf kind, chunk size, links per node."""

    name: str
    cid_version: int
    raw_leaves: bool
    chunk_size: int
    max_links: int


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("unixfs-v1-2025", 1, True, 1024 * 1024, 1024),
        Profile("kubo-cid-v1", 1, True, 256 * 1024, 174),
        Profile("unixfs-v0-2015", 0, False, 256 * 1024, 174),
    )
}
assert tuple(PROFILES) == UNIXFS_PROFILES  # the genesis manifest accepts exactly these
DEFAULT_PROFILE = PROFILES[DEFAULT_UNIXFS_PROFILE]


def profile(name: str | Profile | None = None) -> Profile:
    """The profile called `name` (the default for None); StoreError naming the known ones."""
    if isinstance(name, Profile):
        return name
    if name is None:
        return DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        raise StoreError(
            f"unknown UnixFS profile {name!r}; use one of {', '.join(PROFILES)}"
        ) from None


# -- writing ---------------------------------------------------------------------------------------


class Blocks(Protocol):
    def put_block(self, data: bytes, codec: str = "raw") -> CID: ...


class NoStore:
    """Names blocks without keeping them: `file_cid` computes a CID and writes nothing."""

    def put_block(self, data: bytes, codec: str = "raw") -> CID:
        return cid_for(data, codec)


@dataclass(frozen=True)
class _Link:
    cid: CID
    size: int  # file bytes under it
    tsize: int  # bytes of every block under it, its own included


class _Builder:
    def __init__(self, sink: Blocks, prof: Profile) -> None:
        self.sink, self.prof = sink, prof

    def _put(self, data: bytes, codec: str) -> CID:
        cid = self.sink.put_block(data, codec)
        return cid.set(base="base58btc", version=0) if self.prof.cid_version == 0 else cid

    def leaf(self, chunk: bytes) -> _Link:
        if self.prof.raw_leaves:
            return _Link(self._put(chunk, "raw"), len(chunk), len(chunk))
        block = encode_node([], encode_unixfs_file(chunk, len(chunk), []))
        return _Link(self._put(block, "dag-pb"), len(chunk), len(block))

    def node(self, children: list[_Link]) -> _Link:
        sizes = [c.size for c in children]
        data = encode_unixfs_file(b"", sum(sizes), sizes)
        block = encode_node([(c.cid, c.tsize) for c in children], data)
        return _Link(
            self._put(block, "dag-pb"), sum(sizes), len(block) + sum(c.tsize for c in children)
        )

    def root(self, leaves: list[_Link]) -> CID:
        """The balanced tree over `leaves` (at least one), built bottom-up: every level groups
        the one below into nodes of `max_links`, which is the tree kubo's balanced builder makes
        (all leaves at one depth, every node full but the last of each level)."""
        level = leaves
        if len(level) == 1:
            return level[0].cid
        while len(level) > 1:
            step = self.prof.max_links
            level = [self.node(level[i : i + step]) for i in range(0, len(level), step)]
        return level[0].cid


def _read_full(fh: BinaryIO, n: int) -> bytes:
    """`n` bytes, fewer only at the end (a pipe may return short reads before it)."""
    first = fh.read(n)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        more = fh.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def import_stream(
    sink: Blocks, fh: BinaryIO, prof: Profile, progress: Progress | None = None
) -> CID:
    """Cut `fh` into the profile's chunks, put every block into `sink`, return the root CID.
    Blocks go out leaves first and the root last, so a write cut short leaves no root."""
    build = _Builder(sink, prof)
    leaves: list[_Link] = []
    while True:
        chunk = _read_full(fh, prof.chunk_size)
        if not chunk and leaves:
            break
        leaves.append(build.leaf(chunk))  # an empty file is one empty leaf
        if progress is not None:
            progress(len(chunk))
        if len(chunk) < prof.chunk_size:
            break
    return build.root(leaves)


def import_bytes(sink: Blocks, data: bytes, prof: Profile) -> CID:
    build = _Builder(sink, prof)
    view = memoryview(data)
    step = prof.chunk_size
    starts = range(0, len(view), step) if view else range(1)
    return build.root([build.leaf(bytes(view[i : i + step])) for i in starts])


# -- reading ---------------------------------------------------------------------------------------


class BlockSource(Protocol):
    def get_block(self, cid: CID | str) -> bytes: ...


@dataclass(frozen=True)
class FileNode:
    """A dag-pb file node, parsed and checked: its own bytes, then its children of known size."""

    data: bytes
    children: tuple[tuple[CID, int], ...]

    @property
    def size(self) -> int:
        return len(self.data) + sum(s for _, s in self.children)


def parse_file_node(cid: CID, block: bytes) -> FileNode:
    """Check that dag-pb `block` is a UnixFS file node whose sizes agree; StoreError if not."""
    try:
        node = decode_node(block)
        if node.data is None:
            raise StoreError("no UnixFS data")
        fs = decode_unixfs(node.data)
    except StoreError as exc:
        raise StoreError(f"block {cid} is not a UnixFS file: {exc}") from None
    if fs.type not in (FILE, RAW):
        name = TYPE_NAMES[fs.type] if fs.type < len(TYPE_NAMES) else f"type {fs.type}"
        raise StoreError(f"block {cid} is a UnixFS {name}, not a file")
    if len(fs.blocksizes) != len(node.links):
        raise StoreError(
            f"file node {cid} has {len(node.links)} links but {len(fs.blocksizes)} block sizes"
        )
    children = []
    for link, size in zip(node.links, fs.blocksizes, strict=True):
        child = as_cid(link.cid)
        if child.codec.name not in ("raw", "dag-pb"):
            raise StoreError(f"file node {cid} links to a {child.codec.name} block {child}")
        children.append((child, size))
    out = FileNode(fs.data, tuple(children))
    if fs.filesize is not None and fs.filesize != out.size:
        raise StoreError(
            f"file node {cid} declares {fs.filesize} bytes but its parts hold {out.size}"
        )
    return out


def _file_root(cid: CID) -> CID:
    cid = as_cid(cid)
    if cid.codec.name == "dag-cbor":
        raise StoreError(f"CID {cid} is a dag-cbor object, not a file")
    return cid


def file_size(store: BlockSource, cid: CID | str) -> int:
    """Size of the file at `cid`, as its root declares it (a raw leaf is read)."""
    root = _file_root(as_cid(cid))
    block = store.get_block(root)
    return len(block) if root.codec.name == "raw" else parse_file_node(root, block).size


def iter_chunks(store: BlockSource, cid: CID | str) -> Iterator[bytes]:
    """Yield the verified bytes of file `cid` in order, checking every node's sizes."""
    yield from _iter(store, _file_root(as_cid(cid)), None, 0)


def _iter(store: BlockSource, cid: CID, expected: int | None, depth: int) -> Iterator[bytes]:
    if depth > MAX_DEPTH:
        raise StoreError(f"file tree under {cid} is deeper than {MAX_DEPTH} levels")
    block = store.get_block(cid)  # re-hashed
    if cid.codec.name == "raw":
        if expected is not None and len(block) != expected:
            raise StoreError(f"leaf {cid} holds {len(block)} bytes, its parent says {expected}")
        yield block
        return
    node = parse_file_node(cid, block)
    if expected is not None and node.size != expected:
        raise StoreError(f"file node {cid} holds {node.size} bytes, its parent says {expected}")
    if node.data:
        yield node.data
    for child, size in node.children:
        yield from _iter(store, child, size, depth + 1)


def file_links(cid: CID, block: bytes) -> list[CID]:
    """The children of a dag-pb block (any dag-pb node, not only files)."""
    return [as_cid(link.cid) for link in decode_node(block).links]


def file_cid(data: bytes, prof: Profile | str | None = None) -> CID:
    """The CID `data` gets under a profile, computed without storing anything."""
    return import_bytes(NoStore(), bytes(data), profile(prof))


def matching_profile(data: bytes, cid: CID | str) -> Profile:
    """The profile under which `data` is the file `cid` (bytes from a peer or a user, checked
    before they reach a store); IntegrityError if none is."""
    cid = as_cid(cid)
    if cid.codec.name == "raw":  # one chunk: any raw-leaf profile whose chunk holds it
        if hashlib.sha256(data).digest() == bytes(cid.raw_digest):
            fits = [p for p in PROFILES.values() if p.raw_leaves and len(data) <= p.chunk_size]
            if fits:
                return fits[0]
    else:
        for prof in PROFILES.values():
            if prof.cid_version == cid.version and file_cid(data, prof) == cid:
                return prof
    raise IntegrityError(f"the bytes are not the file {cid} under any UnixFS profile")

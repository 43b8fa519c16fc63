"""Files and objects on top of blocks.

Data of at most `CHUNK_SIZE` bytes is one raw block, so a small file's CID is its plain raw-leaf
CID. Larger data is split into raw chunks of `CHUNK_SIZE` bytes under dag-cbor nodes

    {"type": "consortium/file/v1", "size": N, "links": [CID, ...]}

whose links are raw chunks or further nodes (at most `FANOUT` links each, so no node outgrows a
block). Sizes are checked on the way down: a node whose children do not add up is refused before
any byte of it reaches the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError, EncodingError, StoreError
from consortium.core.files import atomic_write
from consortium.store.blockstore import CHUNK_SIZE, BlockStore
from consortium.store.cid import CID, as_cid, cid_for, cid_key

FILE_TYPE = "consortium/file/v1"
#: Links per node: 1024 links of about 41 bytes each keep a node near 42 KiB.
FANOUT = 1024
#: Deepest tree we follow; FANOUT**MAX_DEPTH chunks is far beyond any real artifact.
MAX_DEPTH = 6

Progress = Callable[[int], None]


# -- writing -----------------------------------------------------------------------------------


class _Blocks(Protocol):
    def put_block(self, data: bytes, codec: str = "raw") -> CID: ...


class _NoStore:
    """Names blocks without keeping them: `file_cid` computes a CID and writes nothing."""

    def put_block(self, data: bytes, codec: str = "raw") -> CID:
        return cid_for(data, codec)


def _put_node(store: _Blocks, links: list[tuple[CID, int]]) -> tuple[CID, int]:
    size = sum(s for _, s in links)
    node = {"type": FILE_TYPE, "size": size, "links": [c for c, _ in links]}
    return store.put_block(encode(node), "dag-cbor"), size


def _build_tree(store: _Blocks, leaves: list[tuple[CID, int]]) -> CID:
    if len(leaves) == 1 and leaves[0][1] <= CHUNK_SIZE and leaves[0][0].codec.name == "raw":
        return leaves[0][0]
    level = leaves
    while len(level) > FANOUT:
        level = [_put_node(store, level[i : i + FANOUT]) for i in range(0, len(level), FANOUT)]
    return _put_node(store, level)[0]


def _put_stream(store: BlockStore, fh: BinaryIO, progress: Progress | None) -> CID:
    leaves: list[tuple[CID, int]] = []
    while True:
        chunk = fh.read(CHUNK_SIZE)
        if not chunk and leaves:
            break
        leaves.append((store.put_block(chunk, "raw"), len(chunk)))
        if progress is not None:
            progress(len(chunk))
        if len(chunk) < CHUNK_SIZE:
            break
    return _build_tree(store, leaves)


def put_bytes(store: BlockStore, data: bytes) -> CID:
    """Store `data` (any size) and return the CID of its root."""
    return _put_bytes(store, data)


def file_cid(data: bytes) -> CID:
    """The CID `put_bytes` gives `data`, computed without storing anything: check bytes from
    elsewhere (a peer) against the CID they should have before they reach a store."""
    return _put_bytes(_NoStore(), data)


def _put_bytes(store: _Blocks, data: bytes) -> CID:
    view = memoryview(bytes(data))
    if len(view) <= CHUNK_SIZE:
        return store.put_block(bytes(view), "raw")
    leaves = [
        (store.put_block(bytes(view[i : i + CHUNK_SIZE]), "raw"), min(CHUNK_SIZE, len(view) - i))
        for i in range(0, len(view), CHUNK_SIZE)
    ]
    return _build_tree(store, leaves)


def put_file(store: BlockStore, path: Path | str, *, progress: Progress | None = None) -> CID:
    """Store a file chunk by chunk (never wholly in memory) and return its root CID."""
    with open(path, "rb") as fh:
        return _put_stream(store, fh, progress)


# -- reading -----------------------------------------------------------------------------------


def _read_node(store: BlockStore, cid: CID) -> tuple[int, list[CID]]:
    """Decode and validate a file node: (declared size, links)."""
    node = get_object(store, cid)
    if not isinstance(node, dict) or set(node) != {"type", "size", "links"}:
        raise StoreError(f"block {cid} is not a file node (expected type, size and links)")
    if node["type"] != FILE_TYPE:
        raise StoreError(f"block {cid} has type {node['type']!r}, expected {FILE_TYPE!r}")
    size, links = node["size"], node["links"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise StoreError(f"file node {cid} has an invalid size {size!r}")
    if not isinstance(links, list) or not links or len(links) > FANOUT:
        raise StoreError(f"file node {cid} must have between 1 and {FANOUT} links")
    if not all(isinstance(link, CID) for link in links):
        raise StoreError(f"file node {cid} has a link that is not a CID")
    return size, [as_cid(link) for link in links]


def _declared_size(store: BlockStore, cid: CID) -> int | None:
    """A node's declared size (checked at the end); None for a raw leaf (known once read)."""
    if cid.codec.name == "raw":
        return None
    return _read_node(store, cid)[0]


def _iter_chunks(store: BlockStore, cid: CID, depth: int = 0) -> Iterator[bytes]:
    """Yield the verified chunks of file `cid` in order, checking every node's size."""
    if depth > MAX_DEPTH:
        raise StoreError(f"file tree under {cid} is deeper than {MAX_DEPTH} levels")
    if cid.codec.name == "raw":
        yield store.get_block(cid)
        return
    size, links = _read_node(store, cid)
    total = 0
    for link in links:
        for chunk in _iter_chunks(store, link, depth + 1):
            total += len(chunk)
            if total > size:
                raise StoreError(f"file node {cid} declares {size} bytes but holds more")
            yield chunk
    if total != size:
        raise StoreError(f"file node {cid} declares {size} bytes but holds {total}")


def is_complete(store: BlockStore, cid: CID | str) -> bool:
    """Whether every block of the object at `cid` is in the store (dag-cbor blocks on the way
    are read, so re-hashed; raw leaves are only looked up). A killed `put_bytes` writes its root
    last, so a file whose write never finished is not complete."""
    try:
        return all(store.has(sub) for sub in walk(store, cid))
    except ConsortiumError:  # a dag-cbor block missing, damaged or not an object
        return False


def file_size(store: BlockStore, cid: CID | str) -> int:
    """Size of the file at `cid`, as its root declares it (a raw leaf is read)."""
    cid = as_cid(cid)
    declared = _declared_size(store, cid)
    return len(store.get_block(cid)) if declared is None else declared


def get_bytes(store: BlockStore, cid: CID | str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of file `cid`; every block is re-hashed. Refuse files over `max_bytes`."""
    cid = as_cid(cid)
    if max_bytes is not None:
        size = file_size(store, cid)
        if size > max_bytes:
            raise StoreError(f"file {cid} is {size} bytes, limit is {max_bytes}")
    return b"".join(_iter_chunks(store, cid))


def iter_file(store: BlockStore, cid: CID | str) -> Iterator[bytes]:
    """Stream the verified chunks of file `cid`."""
    return _iter_chunks(store, as_cid(cid))


def get_file(
    store: BlockStore, cid: CID | str, out_path: Path | str, *, progress: Progress | None = None
) -> None:
    """Write file `cid` to `out_path` atomically: on any failure, `out_path` is left untouched."""

    def chunks() -> Iterator[bytes]:
        for chunk in iter_file(store, cid):  # each block re-hashed before it is written
            if progress is not None:
                progress(len(chunk))
            yield chunk

    atomic_write(Path(out_path), chunks())


# -- objects -----------------------------------------------------------------------------------


def put_object(store: BlockStore, obj: Any) -> CID:
    """Store `obj` as one canonical dag-cbor block (CIDs inside become links)."""
    return store.put_block(encode(obj), "dag-cbor")


def _base32_links(obj: Any) -> Any:
    """The decoder hands back base58 CIDs; print them as base32 like everything else here."""
    if isinstance(obj, CID):
        return obj.set(base="base32")
    if isinstance(obj, dict):
        return {k: _base32_links(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_base32_links(v) for v in obj]
    return obj


def get_object(store: BlockStore, cid: CID | str) -> Any:
    """Decode the dag-cbor block `cid` (re-hashed and checked canonical)."""
    cid = as_cid(cid)
    if cid.codec.name != "dag-cbor":
        raise StoreError(f"CID {cid} is a {cid.codec.name} block, not a dag-cbor object")
    try:
        return _base32_links(decode(store.get_block(cid)))
    except EncodingError as exc:
        raise StoreError(f"object {cid} is not canonical dag-cbor: {exc}") from exc


def _links_in(obj: Any) -> Iterator[CID]:
    """CIDs anywhere inside a decoded dag-cbor value, in document order."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, CID):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def walk(store: BlockStore, cid: CID | str) -> Iterator[CID]:
    """Every CID reachable from `cid` (itself first), each once.

    dag-cbor blocks are read (and so re-hashed) to follow their links; raw leaves are only
    named, so the caller decides whether to fetch them. A missing dag-cbor block raises.
    """
    root = as_cid(cid)
    seen: set[str] = set()
    stack = [root]
    while stack:
        current = stack.pop()
        key = cid_key(current)
        if key in seen:
            continue
        seen.add(key)
        yield current
        if current.codec.name == "dag-cbor":
            links = [as_cid(link) for link in _links_in(get_object(store, current))]
            stack.extend(reversed(links))

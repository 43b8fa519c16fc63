"""Files and objects on top of blocks.

Files are UnixFS (`unixfs.py`: the CIDs kubo gives the same bytes, under the consortium's
profile); structured records are canonical dag-cbor objects whose links are CIDs, often of files.
`walk` follows links of both kinds, so an object and every file it names can be checked, copied
or exported together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError, EncodingError, StoreError
from consortium.core.files import atomic_write
from consortium.store.blockstore import BlockStore
from consortium.store.cid import CID, as_cid, cid_key
from consortium.store.unixfs import (
    Profile,
    Progress,
    file_links,
    import_bytes,
    import_stream,
    iter_chunks,
    matching_profile,
    profile,
)
from consortium.store.unixfs import file_cid as file_cid
from consortium.store.unixfs import file_size as file_size

# -- files -------------------------------------------------------------------------------------


def put_bytes(store: BlockStore, data: bytes, prof: Profile | str | None = None) -> CID:
    """Store `data` (any size) as a UnixFS file under profile `prof` (default: the store's
    default, `unixfs-v1-2025`); return the root CID."""
    return import_bytes(store, bytes(data), profile(prof))


def put_file(
    store: BlockStore,
    path: Path | str,
    *,
    prof: Profile | str | None = None,
    progress: Progress | None = None,
) -> CID:
    """Store a file chunk by chunk (never wholly in memory) and return its root CID."""
    with open(path, "rb") as fh:
        return import_stream(store, fh, profile(prof), progress)


def put_verified(store: BlockStore, data: bytes, cid: CID | str) -> None:
    """Store `data` as the file `cid`, whichever profile made it; IntegrityError (and nothing
    stored) if the bytes are not that file under any profile."""
    put_bytes(store, data, matching_profile(data, cid))


def get_bytes(store: BlockStore, cid: CID | str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of file `cid`; every block is re-hashed. Refuse files over `max_bytes`."""
    cid = as_cid(cid)
    if max_bytes is not None:
        size = file_size(store, cid)
        if size > max_bytes:
            raise StoreError(f"file {cid} is {size} bytes, limit is {max_bytes}")
    return b"".join(iter_chunks(store, cid))


def iter_file(store: BlockStore, cid: CID | str) -> Iterator[bytes]:
    """Stream the verified chunks of file `cid`."""
    return iter_chunks(store, as_cid(cid))


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


def is_complete(store: BlockStore, cid: CID | str) -> bool:
    """Whether every block of the object or file at `cid` is in the store (inner blocks on the
    way are read, so re-hashed; raw leaves are only looked up). A killed `put_bytes` writes its
    root last, so a file whose write never finished is not complete."""
    try:
        return all(store.has(sub) for sub in walk(store, cid))
    except ConsortiumError:  # an inner block missing, damaged or malformed
        return False


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


def links_of(cid: CID, block: bytes) -> list[CID]:
    """The CIDs block `cid` links to (none for a raw block)."""
    if cid.codec.name == "dag-cbor":
        try:
            obj = decode(block)
        except EncodingError as exc:
            raise StoreError(f"object {cid} is not canonical dag-cbor: {exc}") from exc
        return [as_cid(link) for link in _links_in(obj)]
    if cid.codec.name == "dag-pb":
        return file_links(cid, block)
    return []


def walk(store: BlockStore, cid: CID | str) -> Iterator[CID]:
    """Every CID reachable from `cid` (itself first), each once.

    dag-cbor and dag-pb blocks are read (and so re-hashed) to follow their links; raw leaves are
    only named, so the caller decides whether to fetch them. A missing inner block raises.
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
        if current.codec.name != "raw":
            stack.extend(reversed(links_of(current, store.get_block(current))))


def iter_blocks(
    store: BlockStore, cid: CID | str, seen: set[str] | None = None
) -> Iterator[tuple[CID, bytes]]:
    """(CID, bytes) of every block reachable from `cid`, depth first, parents before children
    (the order `ipfs dag export` writes), each block read once and re-hashed; blocks whose key
    is in `seen` are skipped (and `seen` gains every key yielded)."""
    seen = set() if seen is None else seen
    stack = [as_cid(cid)]
    while stack:
        current = stack.pop()
        key = cid_key(current)
        if key in seen:
            continue
        seen.add(key)
        block = store.get_block(current)
        yield current, block
        stack.extend(reversed(links_of(current, block)))

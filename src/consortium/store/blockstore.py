"""On-disk block store: one file per block, named by its CID.

Layout (like IPFS flatfs with `next-to-last/2` sharding): `ROOT/blocks/<cid[-3:-1]>/<cid>`.
The shard comes from the end of the CID because its start is the same for every CID of a codec.

Every read re-hashes the bytes: a disk, a backup or a peer may hand back something else than
what was stored, and the CID is the only thing we trust.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from consortium.core.encoding import decode
from consortium.core.errors import (
    EncodingError,
    FileWriteError,
    IntegrityError,
    NotFoundError,
    StoreError,
)
from consortium.core.files import atomic_write
from consortium.store.cid import CID, as_cid, check, cid_for, cid_key, parse_cid
from consortium.store.dagpb import decode_node

#: Largest chunk of a file under any UnixFS profile (unixfs-v1-2025's), one raw block.
CHUNK_SIZE = 1024 * 1024
#: Largest block the store accepts: a chunk plus room for a node's framing (a file node of
#: 1024 links is about 45 KiB). IPFS peers refuse blocks over 2 MiB; we stay well below.
MAX_BLOCK_SIZE = CHUNK_SIZE + 64 * 1024

_TMP_PREFIX = ".tmp-"
#: Folders (under the root, beside `blocks`) where a CAR import stages verified blocks.
STAGING_PREFIX = ".import-"


@dataclass
class VerifyReport:
    """What `BlockStore.verify_report` found."""

    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.stray


def _shard(key: str) -> str:
    return key[-3:-1]


class BlockStore:
    """A folder of content-addressed blocks."""

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
        self.blocks_dir = self.root / "blocks"
        if create:
            self.blocks_dir.mkdir(parents=True, exist_ok=True)
        elif not self.blocks_dir.is_dir():
            raise NotFoundError(f"no block store at {self.root} (expected a 'blocks' folder)")

    def __repr__(self) -> str:
        return f"BlockStore({str(self.root)!r})"

    def path_for(self, cid: CID | str) -> Path:
        key = cid_key(as_cid(cid))
        return self.blocks_dir / _shard(key) / key

    # -- writing -------------------------------------------------------------------------------

    def put_block(self, data: bytes, codec: str = "raw") -> CID:
        """Store `data` and return its CID. Putting the same bytes again is a no-op."""
        data = bytes(data)
        if len(data) > MAX_BLOCK_SIZE:
            raise StoreError(
                f"block is {len(data)} bytes, limit is {MAX_BLOCK_SIZE}; "
                "split large data with consortium.store.put_bytes"
            )
        if codec == "dag-cbor":
            try:
                decode(data)
            except EncodingError as exc:
                raise StoreError(f"refusing to store a dag-cbor block that is not: {exc}") from exc
        elif codec == "dag-pb":
            try:
                decode_node(data)
            except StoreError as exc:
                raise StoreError(f"refusing to store a dag-pb block that is not: {exc}") from exc
        cid = cid_for(data, codec)
        path = self.path_for(cid)
        if path.is_file():
            try:
                check(cid, path.read_bytes())
                return cid
            except IntegrityError:
                pass  # a damaged copy: the rewrite below repairs it
        self._write(path, data)
        return cid

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        try:
            atomic_write(path, data, 0o444, tmp_prefix=_TMP_PREFIX)  # blocks are read-only
        except FileWriteError as exc:  # e.g. a full disk: neither block nor temp file is left
            raise StoreError(str(exc)) from exc

    def remove_temp_files(self) -> list[str]:
        """Delete the temp files of block writes that never finished (their writer was killed
        before the rename); return their paths relative to the root. Call it only while no
        other process writes to this store: a node does, at start, in the folder it owns."""
        removed = []
        for path in self._files():
            if path.name.startswith(_TMP_PREFIX) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(self.root)))
        for path in sorted(self.root.glob(STAGING_PREFIX + "*")):  # a CAR import cut short
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path.relative_to(self.root)))
        return removed

    def delete(self, cid: CID | str) -> None:
        """Remove a block; raise NotFoundError if it is absent."""
        path = self.path_for(cid)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFoundError(f"block {as_cid(cid)} is not in the store") from None

    # -- reading -------------------------------------------------------------------------------

    def has(self, cid: CID | str) -> bool:
        return self.path_for(cid).is_file()

    def get_block(self, cid: CID | str) -> bytes:
        """The bytes of block `cid`, re-hashed: IntegrityError if they do not match."""
        cid = as_cid(cid)
        try:
            data = self.path_for(cid).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"block {cid} is not in the store") from None
        check(cid, data)
        return data

    def iter_cids(self) -> Iterator[CID]:
        """Every well-named block in the store (stray files are skipped; `verify` reports them)."""
        for path in self._files():
            cid = self._cid_of(path)
            if cid is not None:
                yield cid

    def __iter__(self) -> Iterator[CID]:
        return self.iter_cids()

    def _files(self) -> Iterator[Path]:
        if not self.blocks_dir.is_dir():
            return
        for entry in sorted(self.blocks_dir.iterdir()):
            if entry.is_dir():
                yield from sorted(entry.iterdir())
            else:
                yield entry

    def _cid_of(self, path: Path) -> CID | None:
        """The CID a block file stands for, or None if its name or place is wrong."""
        if not path.is_file() or path.parent.parent != self.blocks_dir:
            return None
        try:
            cid = parse_cid(path.name)
        except StoreError:
            return None
        key = cid_key(cid)
        if key != path.name or _shard(key) != path.parent.name:
            return None
        return cid

    # -- checking ------------------------------------------------------------------------------

    def verify_report(self) -> VerifyReport:
        """Re-hash every block; list corrupt CIDs and stray files (paths relative to root)."""
        report = VerifyReport()
        for path in self._files():
            cid = self._cid_of(path)
            if cid is None:
                report.stray.append(str(path.relative_to(self.root)))
                continue
            report.checked += 1
            try:
                check(cid, path.read_bytes())
            except IntegrityError:
                report.corrupt.append(str(cid))
        return report

    def verify(self) -> list[str]:
        """Problems found: the CID string of each corrupt block, then `stray file: PATH` lines."""
        report = self.verify_report()
        return report.corrupt + [f"stray file: {p}" for p in report.stray]

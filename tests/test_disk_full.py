"""A full disk during a ledger append or a store put leaves nothing half-written, and says so
in one typed line."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from consortium.audit import audit
from consortium.core.errors import FileWriteError, LedgerError, StoreError
from consortium.core.files import atomic_write
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import make_record
from consortium.ledger.heads import TreeHead
from consortium.ledger.log import Ledger
from consortium.node.node import open_node_state
from consortium.node.sim import create_consortium
from consortium.store.blockstore import CHUNK_SIZE, BlockStore
from consortium.store.cid import cid_for
from consortium.store.objects import put_bytes

ENOSPC = os.strerror(errno.ENOSPC)


class FullDisk:
    """`os.fdopen` on a file system with `free` bytes left: a write past them stores what fits,
    then fails with ENOSPC, as write(2) does."""

    def __init__(self, free: int) -> None:
        self.free = free
        self._fdopen = os.fdopen

    def __call__(self, fd: int, *args: Any, **kwargs: Any) -> Any:
        return _Limited(self._fdopen(fd, *args, **kwargs), self)


class _Limited:
    def __init__(self, fh: Any, disk: FullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data: bytes) -> int:
        n = min(len(data), self._disk.free)
        self._fh.write(data[:n])
        self._disk.free -= n
        if n < len(data):
            self._fh.flush()  # the part that fit really is on disk
            raise OSError(errno.ENOSPC, ENOSPC)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_atomic_write_on_a_full_disk_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(b"old")
    monkeypatch.setattr(os, "fdopen", FullDisk(free=10))
    with pytest.raises(FileWriteError, match=f"cannot write {path}: {ENOSPC}$"):
        atomic_write(path, b"x" * 100)
    assert path.read_bytes() == b"old"
    assert _files(tmp_path) == ["status.json"]  # the partial temp file is gone


def test_store_put_on_a_full_disk_leaves_no_partial_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlockStore(tmp_path / "store")
    data = os.urandom(3 * CHUNK_SIZE // 2)  # two chunks and a root node
    first = cid_for(data[:CHUNK_SIZE])
    monkeypatch.setattr(os, "fdopen", FullDisk(free=CHUNK_SIZE + 1000))
    with pytest.raises(StoreError, match=ENOSPC) as info:
        put_bytes(store, data)
    assert "\n" not in str(info.value)
    # The chunk that fit is a whole block; the one that did not left no trace.
    assert _files(store.blocks_dir) == [str(store.path_for(first).relative_to(store.blocks_dir))]
    assert store.verify() == []
    monkeypatch.undo()  # space freed: the same put completes
    cid = put_bytes(store, data)
    assert store.verify() == [] and store.has(cid)


def _folder_ledger(tmp_path: Path) -> tuple[Path, Ledger, NodeIdentity]:
    (d,) = create_consortium(tmp_path, 1, seed=3, consent=False)
    genesis, ledger, _ = open_node_state(d)
    member = NodeIdentity.load(d)
    ledger.append(make_record(member, "note", {"text": "before"}, 1, genesis))
    ledger.sign_head(member, 2)
    return d, ledger, member


def test_ledger_append_on_a_full_disk_changes_nothing(tmp_path: Path) -> None:
    d, ledger, member = _folder_ledger(tmp_path)
    genesis = ledger.genesis()
    size, root = ledger.size, ledger.root()
    # SQLite's own "disk full" path: no page may be added to the file.
    pages = ledger._conn.execute("PRAGMA page_count").fetchone()[0]
    ledger._conn.execute(f"PRAGMA max_page_count={pages}")
    big = make_record(member, "note", {"text": "x" * 100_000}, 3, genesis)
    with pytest.raises(LedgerError, match="database or disk is full; nothing was written") as info:
        ledger.append(big)
    assert "\n" not in str(info.value)
    assert (ledger.size, ledger.root()) == (size, root)
    # A vote that cannot be recorded must not be sent: the node learns it by a LedgerError.
    with pytest.raises(LedgerError, match="disk is full"):
        ledger.record_vote(size + 1, root, 0, "author", 0)
    ledger.close()
    with Ledger.open(d / "ledger.sqlite") as again:
        assert again.my_votes() == {}
        assert (again.size, again.root()) == (size, root)
        assert again.fsck() == root
        assert [h.head for h in again.cosigned_heads()] == [TreeHead(size, root, 2)]
    report = audit(d, workers=1)
    assert report.entries == size and report.root == root


class _FailingCommit:
    """A connection whose COMMIT fails (the WAL's fsync hit ENOSPC) after every row went in."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_ledger_commit_failure_rolls_the_batch_back(tmp_path: Path) -> None:
    d, ledger, member = _folder_ledger(tmp_path)
    genesis = ledger.genesis()
    size, root = ledger.size, ledger.root()
    real = ledger._conn
    ledger._conn = _FailingCommit(real)  # type: ignore[assignment]
    batch = [make_record(member, "note", {"i": i}, 3 + i, genesis) for i in range(3)]
    with pytest.raises(LedgerError, match="disk I/O error; nothing was written"):
        ledger.append_many(batch)
    assert not real.in_transaction
    ledger._conn = real
    assert (ledger.size, ledger.root()) == (size, root)
    ledger.append_many(batch)  # the same batch goes in once the disk is back
    assert ledger.size == size + 3 and ledger.fsck() == ledger.root()
    ledger.sign_head(member, 10)  # final, as audit requires of every entry
    ledger.close()
    assert audit(d, workers=1).entries == size + 3

"""The ledger: an append-only RFC 9162 Merkle log of entries, persisted in SQLite.

Every complete aligned subtree is stored as it completes (tree(level, idx, hash)), so an append
writes one leaf plus amortised one parent row, the current root folds O(log n) stored nodes, and a
proof at any past size is O(log n) lookups fetched in one query. Entries, their tree rows and any
heads commit in a single transaction: a crash leaves either the whole batch or none of it.

Durability: WAL with synchronous=FULL. NORMAL is crash-safe against a killed process but may
lose the last commits on power loss; a node that cosigned a head for size N and then came back
with fewer entries could sign a different root for N, i.e. equivocate. Batching amortises the fsync.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from consortium.core.errors import ForkError, LedgerError
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity
from consortium.core.sqlite import open_for_reading
from consortium.ledger import merkle
from consortium.ledger.entries import (
    Entry,
    EntryChecks,
    genesis_entry,
    genesis_from_bytes,
)
from consortium.ledger.frontier import Frontier
from consortium.ledger.heads import (
    Cosignature,
    CosignedHead,
    Equivocation,
    TreeHead,
    find_equivocations,
)

FORMAT = b"consortium-ledger/1"

#: `Ledger.stored_tree()`: tree rows (level, idx, hash) in key order, and (idx, leaf hash) rows.
StoredTree = tuple[list[tuple[int, int, bytes]], list[tuple[int, bytes]]]

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE entries(idx INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf_hash BLOB NOT NULL);
CREATE TABLE tree(level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                  PRIMARY KEY(level, idx)) WITHOUT ROWID;
CREATE TABLE heads(size INTEGER NOT NULL, root BLOB NOT NULL, time INTEGER NOT NULL,
                   PRIMARY KEY(size, root, time)) WITHOUT ROWID;
-- time is part of the signed head body, so a cosignature belongs to (size, root, time).
CREATE TABLE cosignatures(size INTEGER NOT NULL, root BLOB NOT NULL, time INTEGER NOT NULL,
                          node_id TEXT NOT NULL, signature BLOB NOT NULL,
                          PRIMARY KEY(size, root, time, node_id)) WITHOUT ROWID;
CREATE TABLE equivocations(id INTEGER PRIMARY KEY, evidence BLOB NOT NULL UNIQUE);
"""


def _as(column: str, kind: str) -> str:
    """SQL for `column`'s value if its SQLite type is `kind` (integer, blob or text), else NULL.

    A damaged (or edited) file can hold any value in any column: none may pass for another type,
    and text comes back as its bytes, so text that is not UTF-8 is refused here, not in a crash."""
    value = f"CAST({column} AS BLOB)" if kind == "text" else column
    return f"CASE typeof({column}) WHEN '{kind}' THEN {value} END"


def _typed(where: str, row: Sequence[Any], text: Sequence[int] = ()) -> tuple[Any, ...]:
    """A row selected with `_as`: LedgerError naming `where` if a value had the wrong type;
    the columns at `text` decoded from UTF-8."""
    if None in row:
        raise LedgerError(f"{where}: a stored value has the wrong type")
    if not text:
        return tuple(row)
    out = list(row)
    for i in text:
        try:
            out[i] = bytes(out[i]).decode("utf-8")
        except UnicodeDecodeError:
            raise LedgerError(f"{where}: a stored text is not UTF-8") from None
    return tuple(out)


class Ledger:
    """Use `Ledger.create` or `Ledger.open`; one writer process per file."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._size = 0
        self._frontier: list[tuple[int, bytes]] = []  # (level, hash) of the right edge, big first
        self._genesis: Genesis | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
        if readonly:  # for auditors: nothing about the file may change, not even its header
            return open_for_reading(path)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def create(cls, path: Path | str, genesis: Genesis) -> Ledger:
        """A new ledger whose entry 0 is `genesis` (which must be signed by every member)."""
        path = Path(path)
        if path.exists():
            raise LedgerError(f"{path} already exists; refusing to overwrite a ledger")
        genesis.verify()
        conn = cls._connect(path)
        ledger = cls(conn, path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):  # not executescript: it would COMMIT early
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            ledger._insert([genesis_entry(genesis).data])
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            raise
        ledger._genesis = genesis
        return ledger

    @classmethod
    def open(cls, path: Path | str, *, readonly: bool = False) -> Ledger:
        """The ledger at `path`; `readonly` opens it without ever writing (for auditors)."""
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"no ledger at {path}; create one with the genesis manifest first")
        try:
            conn = cls._connect(path, readonly)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path} is not a consortium ledger: {exc}") from exc
        # A connection left open by a failed open would checkpoint into the file when collected.
        try:
            row = conn.execute(f"SELECT {_as('value', 'blob')} FROM meta WHERE key='format'")
            found = row.fetchone()
            if found is None or found[0] != FORMAT:
                raise LedgerError(f"{path} is not a consortium ledger (format {found!r})")
            ledger = cls(conn, path)
            ledger._reload()
            ledger.genesis()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{path} is not a consortium ledger: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return ledger

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internal: tree maintenance -----------------------------------------------------------

    def _stored_size(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()
        return int(row[0])

    def _reload(self) -> None:
        """Rebuild the in-memory right edge from stored nodes (after open or another writer)."""
        size = self._stored_size()
        nodes = merkle.subtrees(0, size)
        got = self._nodes(nodes)
        self._frontier = [(level, got[(level, idx)]) for level, idx in nodes]
        self._size = size

    def _nodes(self, wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        # One primary-key lookup per node (a row-value IN list makes SQLite scan the table).
        out: dict[tuple[int, int], bytes] = {}
        for node in set(wanted):
            row = self._conn.execute(
                f"SELECT {_as('hash', 'blob')} FROM tree WHERE level=? AND idx=?", node
            ).fetchone()
            if row is None:
                raise LedgerError(f"ledger tree is missing node {node}; the file is damaged")
            out[node] = _typed(f"tree node {node}", row)[0]
        return out

    @staticmethod
    def _extend(
        frontier: list[tuple[int, bytes]], start: int, leaves: Iterable[bytes]
    ) -> list[tuple[int, int, bytes]]:
        """Push leaf hashes onto `frontier` (in place); return the tree rows that completed."""
        rows: list[tuple[int, int, bytes]] = []
        n = start
        for h in leaves:
            level = 0
            rows.append((0, n, h))
            while frontier and frontier[-1][0] == level:
                h = merkle.node_hash(frontier.pop()[1], h)
                level += 1
                rows.append((level, n >> level, h))
            frontier.append((level, h))
            n += 1
        return rows

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT; on failure roll back and restore the in-memory edge.

        A write SQLite refuses (disk full, I/O error) becomes a LedgerError: the transaction
        is rolled back, so the file holds the whole batch or none of it."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc
        saved = (self._size, list(self._frontier))
        try:
            if self._stored_size() != self._size:  # another writer appended since we looked
                self._reload()
                saved = (self._size, list(self._frontier))
            yield
            self._conn.execute("COMMIT")
        except BaseException as exc:
            # SQLite may already have rolled back by itself (it does on SQLITE_FULL); a second
            # ROLLBACK would fail and hide the real error.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._size, self._frontier = saved
            if isinstance(exc, sqlite3.Error):
                raise self._write_error(exc) from exc
            raise

    def _write_error(self, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(f"cannot write the ledger {self.path}: {exc}; nothing was written")

    def _insert(self, datas: Sequence[bytes]) -> int:
        """Append raw entry bytes inside an open transaction; return the first new index."""
        first = self._size
        leaves = [merkle.leaf_hash(d) for d in datas]
        rows = self._extend(self._frontier, first, leaves)
        self._conn.executemany(
            "INSERT INTO entries(idx, data, leaf_hash) VALUES (?,?,?)",
            zip(range(first, first + len(datas)), datas, leaves, strict=True),
        )
        self._conn.executemany("INSERT INTO tree(level, idx, hash) VALUES (?,?,?)", rows)
        self._size = first + len(datas)
        return first

    # -- reading -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def genesis(self) -> Genesis:
        if self._genesis is None:
            self._genesis = genesis_from_bytes(self.entry_bytes(0))
        return self._genesis

    def entry_bytes(self, index: int) -> bytes:
        row = self._conn.execute(
            f"SELECT {_as('data', 'blob')} FROM entries WHERE idx=?", (index,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"no entry {index}; the ledger has {self._size} entries")
        return bytes(_typed(f"entry {index}", row)[0])

    def entry(self, index: int) -> Entry:
        return Entry.from_bytes(self.entry_bytes(index))

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[Entry]:
        for _, data in self.raw_entries(start, end):
            yield Entry.from_bytes(data)

    def leaf_hash(self, index: int) -> bytes:
        return self._nodes([(0, index)])[(0, index)]

    def root(self, size: int | None = None) -> bytes:
        """Root of the tree over the first `size` entries (default: all)."""
        if size is None or size == self._size:
            return merkle.fold([h for _, h in self._frontier])
        if not 0 <= size <= self._size:
            raise LedgerError(f"no tree of size {size}; the ledger has {self._size} entries")
        nodes = merkle.subtrees(0, size)
        got = self._nodes(nodes)
        return merkle.fold([got[n] for n in nodes])

    def frontier(self) -> Frontier:
        """The right edge of the tree: enough to compute the root after further appends."""
        return Frontier(self._size, tuple(h for _, h in self._frontier))

    def head(self, time: int) -> TreeHead:
        return TreeHead(self._size, self.root(), time)

    def _proof(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        got = self._nodes(merkle.needed_subtrees(ranges))
        return [merkle.fold([got[n] for n in merkle.subtrees(lo, hi)]) for lo, hi in ranges]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._size if size is None else size
        if size > self._size:
            raise LedgerError(f"no tree of size {size}; the ledger has {self._size} entries")
        return self._proof(merkle.inclusion_ranges(index, size))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self._size if new is None else new
        if new > self._size:
            raise LedgerError(f"no tree of size {new}; the ledger has {self._size} entries")
        return self._proof(merkle.consistency_ranges(old, new))

    # -- raw accessors for auditors: recompute everything, trust nothing stored ----------------

    # Each value is checked against its column's type: a damaged (or edited) file can hold any
    # SQLite value in any column, and a float or text must never pass for an integer or hash.

    @staticmethod
    def _checked(cur: sqlite3.Cursor, where: Callable[[Any], str]) -> Iterator[Any]:
        """The rows of a query selected with `_as` and no text column, fetched in batches (these
        tables hold a row or two per entry): LedgerError naming `where(row)` for the first row
        with a value of the wrong type."""
        while batch := cur.fetchmany(4096):
            for row in batch:
                if None in row:
                    raise LedgerError(f"{where(row)}: a stored value has the wrong type")
                yield row

    def raw_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        end = self._size if end is None else end
        cur = self._conn.execute(
            f"SELECT idx, {_as('data', 'blob')} FROM entries WHERE idx >= ? AND idx < ? "
            "ORDER BY idx",
            (start, end),
        )
        return self._checked(cur, lambda row: f"entry {row[0]}")

    def raw_leaf_hashes(self) -> Iterator[tuple[int, bytes]]:
        """(index, stored leaf hash) of every entry: `fsck` checks them against the bytes."""
        cur = self._conn.execute(f"SELECT idx, {_as('leaf_hash', 'blob')} FROM entries")
        return self._checked(cur, lambda row: f"entry {row[0]}")

    def raw_tree(self, ordered: bool = False) -> Iterator[tuple[int, int, bytes]]:
        """Every stored tree row; `ordered`: by (level, idx), the table's own key order."""
        cur = self._conn.execute(
            f"SELECT {_as('level', 'integer')}, {_as('idx', 'integer')}, {_as('hash', 'blob')} "
            "FROM tree" + (" ORDER BY level, idx" if ordered else "")
        )
        return self._checked(cur, lambda row: "a tree node")

    def raw_cosignatures(self) -> Iterator[tuple[int, bytes, int, str, bytes]]:
        cur = self._conn.execute(
            f"SELECT {_as('size', 'integer')}, {_as('root', 'blob')}, {_as('time', 'integer')}, "
            f"{_as('node_id', 'text')}, {_as('signature', 'blob')} FROM cosignatures ORDER BY size"
        )
        for row in cur:
            yield _typed(f"a cosignature on the tree head of size {row[0]}", row, text=[3])

    def raw_heads(self) -> Iterator[tuple[int, bytes, int]]:
        cur = self._conn.execute(
            f"SELECT {_as('size', 'integer')}, {_as('root', 'blob')}, {_as('time', 'integer')} "
            "FROM heads"
        )
        for row in cur:
            yield _typed(f"tree head of size {row[0]}", row)

    def raw_equivocations(self) -> Iterator[bytes]:
        cur = self._conn.execute(f"SELECT {_as('evidence', 'blob')} FROM equivocations ORDER BY id")
        for row in cur:
            yield _typed("equivocation evidence", row)[0]

    def stored_tree(self) -> StoredTree:
        """What `fsck` compares with the entries: every stored tree row in key order, and every
        entry's stored leaf hash (the auditor reads them while its workers verify)."""
        return list(self.raw_tree(ordered=True)), list(self.raw_leaf_hashes())

    def fsck(
        self,
        levels: Sequence[Sequence[bytes]] | None = None,
        stored: StoredTree | None = None,
    ) -> bytes:
        """Recompute every leaf and tree row from entry bytes; return the root or raise.

        `levels`: `merkle.tree_levels` of every entry's leaf hash, computed by the caller from
        the entry bytes it just read and checked (the auditor), so they are not read and hashed
        twice; `stored`: `stored_tree()`, if the caller read it already."""
        if levels is None:
            leaves: list[bytes] = []
            for idx, data in self.raw_entries():
                if idx != len(leaves):
                    raise LedgerError(f"ledger entry {len(leaves)} is missing")
                leaves.append(merkle.leaf_hash(data))
            levels = merkle.tree_levels(leaves)
        if len(levels[0]) != self._size:
            raise LedgerError(f"ledger holds {len(levels[0])} entries, expected {self._size}")
        tree_rows, leaf_rows = self.stored_tree() if stored is None else stored
        # Stored rows in key order against the computed nodes level by level: the first that
        # differs (or is missing, or extra) is the node to name.
        rows = iter(tree_rows)
        for level, hashes in enumerate(levels):
            for idx, h in enumerate(hashes):
                row = next(rows, None)
                if row != (level, idx, h):
                    bad = min((level, idx), row[:2]) if row is not None else (level, idx)
                    raise LedgerError(f"ledger tree disagrees with its entries at node {bad}")
        extra = next(rows, None)
        if extra is not None:
            raise LedgerError(f"ledger tree disagrees with its entries at node {extra[:2]}")
        leaves_ = levels[0]
        for idx, stored_leaf in leaf_rows:
            if not 0 <= idx < len(leaves_) or stored_leaf != leaves_[idx]:
                raise LedgerError(f"entry {idx}: its stored leaf hash does not match its bytes")
        root = merkle.root_at(levels, self._size)
        if root != self.root():
            raise LedgerError("ledger root disagrees with its entries")
        return root

    # -- writing -------------------------------------------------------------------------------

    def append(self, entry: Entry, *, verify: bool = True) -> int:
        """Append one entry (signatures checked against genesis); return its index."""
        return self.append_many([entry], verify=verify)

    def append_many(
        self,
        entries: Sequence[Entry],
        *,
        verify: bool = True,
        heads: Sequence[CosignedHead] = (),
        expect_size: int | None = None,
        workers: int | None = None,
    ) -> int:
        """Append entries, and the cosignatures of `heads`, in one transaction; return the index
        of the first entry. A crash leaves all of it or none.

        Every head must be a head of this log once the entries are appended (ForkError
        otherwise, and nothing is written). `expect_size`: the size the caller checked the
        entries against; LedgerError, and nothing written, if the ledger is no longer that
        size. `verify=False` is for entries and cosignatures this process has already verified
        (replica sync, or a node appending what it just signed itself).

        Verification: the entries' signatures go to `workers` processes (default: every core;
        a small batch is checked inline) while this process hashes and inserts the entries
        inside the still uncommitted transaction; the first refusal (named by the index the
        entry would have had) rolls it back, so nothing unverified is ever committed.
        """
        checks = EntryChecks.of(entries, self.genesis(), workers) if verify and entries else None

        def refuse_unverified(first: int) -> None:
            if checks is not None:
                failure = checks.failure()
                if failure is not None:
                    pos, error = failure
                    raise type(error)(f"entry {first + pos}: {error}")
            if verify:
                genesis = self.genesis()
                for ch in heads:
                    for c in ch.cosignatures:
                        ch.head.check_signature(genesis, c.node_id, c.signature)

        if not entries and not heads:
            return self._size
        if not entries:
            refuse_unverified(self._size)
        with self._transaction():
            first = self._size
            if entries:
                self._insert([e.data for e in entries])
                refuse_unverified(first)
            if expect_size is not None and first != expect_size:
                raise LedgerError(
                    f"the ledger has {first} entries, expected {expect_size}: it changed "
                    "meanwhile; retry"
                )
            for ch in heads:
                if ch.head.size > self._size or self.root(ch.head.size) != ch.head.root:
                    raise ForkError(f"head for size {ch.head.size} is not a head of this log")
                self._store_cosignatures(ch.head, ch.cosignatures)
            return first

    # -- heads and cosignatures ----------------------------------------------------------------

    def sign_head(self, identity: NodeIdentity, time: int) -> CosignedHead:
        """Sign the current head as `identity` and store the cosignature."""
        head = self.head(time)
        cosig = head.sign(identity, self.genesis())
        self.add_cosignature(head, cosig.node_id, cosig.signature)
        return self.cosigned_head(head)

    def _stored_heads_of_size(self, size: int) -> list[CosignedHead]:
        rows = self._conn.execute(
            "SELECT root, time, node_id, signature FROM cosignatures WHERE size=? "
            "ORDER BY root, time, node_id",
            (size,),
        ).fetchall()
        heads: dict[tuple[bytes, int], CosignedHead] = {}
        for root, time, node_id, sig in rows:
            key = (bytes(root), int(time))
            ch = heads.setdefault(key, CosignedHead(TreeHead(size, key[0], key[1])))
            ch.cosignatures.append(Cosignature(str(node_id), bytes(sig)))
        return list(heads.values())

    def _record_equivocations(self, evidence: Iterable[Equivocation]) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO equivocations(evidence) VALUES (?)",
                [(e.to_bytes(),) for e in evidence],
            )

    def check_equivocation(
        self, head: TreeHead, node_id: str, signature: bytes
    ) -> list[Equivocation]:
        """Evidence that `node_id`, by signing `head`, contradicted a head we stored; recorded."""
        incoming = CosignedHead(head, [Cosignature(node_id, signature)])
        found = [
            ev
            for stored in self._stored_heads_of_size(head.size)
            if stored.head.root != head.root
            for ev in find_equivocations(stored, incoming, self.genesis())
        ]
        if found:
            self._record_equivocations(found)
        return found

    def add_cosignature(self, head: TreeHead, node_id: str, signature: bytes) -> None:
        """Store a member's valid signature on a head of *this* log.

        A head whose root differs from ours at its size raises ForkError, after recording
        equivocation evidence if that member had signed our root for the same size.
        """
        head.check_signature(self.genesis(), node_id, signature)
        evidence = self.check_equivocation(head, node_id, signature)
        if head.size > self._size:
            raise LedgerError(
                f"head for size {head.size} is beyond this ledger "
                f"({self._size} entries); sync first"
            )
        if head.root != self.root(head.size):
            who = self.genesis().member(node_id).name
            note = "; equivocation evidence recorded" if evidence else ""
            raise ForkError(
                f"{who} ({node_id}) signed a root for size {head.size} that is not ours{note}"
            )
        with self._transaction():
            self._store_cosignatures(head, [Cosignature(node_id, signature)])

    def _store_cosignatures(self, head: TreeHead, cosigs: Iterable[Cosignature]) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO heads(size, root, time) VALUES (?,?,?)",
            (head.size, head.root, head.time),
        )
        self._conn.executemany(
            "INSERT OR IGNORE INTO cosignatures VALUES (?,?,?,?,?)",
            [(head.size, head.root, head.time, c.node_id, c.signature) for c in cosigs],
        )

    def cosigned_head(self, head: TreeHead) -> CosignedHead:
        for ch in self._stored_heads_of_size(head.size):
            if ch.head == head:
                return ch
        return CosignedHead(head)

    def cosigned_heads(self) -> list[CosignedHead]:
        """Every stored head with its cosignatures, by size."""
        rows = self._conn.execute(
            "SELECT h.size, h.root, h.time, c.node_id, c.signature FROM heads h "
            "LEFT JOIN cosignatures c ON c.size=h.size AND c.root=h.root AND c.time=h.time "
            "ORDER BY h.size, h.time, h.root, c.node_id"
        ).fetchall()
        out: dict[tuple[int, bytes, int], CosignedHead] = {}
        for size, root, time, node_id, sig in rows:
            key = (int(size), bytes(root), int(time))
            ch = out.setdefault(key, CosignedHead(TreeHead(*key)))
            if node_id is not None:
                ch.cosignatures.append(Cosignature(str(node_id), bytes(sig)))
        return list(out.values())

    def latest_final_head(self) -> CosignedHead | None:
        genesis = self.genesis()
        finals = [ch for ch in self.cosigned_heads() if ch.is_final(genesis)]
        return max(finals, key=lambda ch: (ch.head.size, ch.head.time)) if finals else None

    def equivocations(self) -> list[Equivocation]:
        return [Equivocation.from_bytes(b) for b in self.raw_equivocations()]

    # -- this node's own votes ------------------------------------------------------------------

    # What this node has cosigned, by ledger size: written (and fsynced, synchronous=FULL) before
    # the vote leaves the node, so a restart can never make it cosign two heads of one size. Local
    # state, not part of the log: created on the first vote, so readers never write the file.
    VOTES_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS my_votes(size INTEGER PRIMARY KEY, root BLOB NOT NULL, "
        "attempt INTEGER NOT NULL, author TEXT NOT NULL, record_attempt INTEGER NOT NULL)"
    )

    def record_vote(
        self, size: int, root: bytes, attempt: int, author: str, record_attempt: int
    ) -> None:
        """Persist that this node cosigned `root` at `size` in `attempt` (an entry by `author`
        for `record_attempt`), replacing an earlier vote at that size only when the round
        machine moved it with proof."""
        try:
            self._conn.execute(self.VOTES_SCHEMA)
            self._conn.execute(
                "INSERT OR REPLACE INTO my_votes VALUES (?,?,?,?,?)",
                (size, root, attempt, author, record_attempt),
            )
        except sqlite3.Error as exc:  # the vote must not be sent: it was not recorded
            raise self._write_error(exc) from exc

    def forget_vote(self, size: int, root: bytes) -> None:
        """Lift this node's vote for `root` at `size` (the proposal provably cannot be final)."""
        try:
            self._conn.execute(self.VOTES_SCHEMA)
            self._conn.execute("DELETE FROM my_votes WHERE size = ? AND root = ?", (size, root))
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc

    def my_votes(self) -> dict[int, tuple[bytes, int, str, int]]:
        """ledger size -> (root, attempt, author, record attempt) this node cosigned."""
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='my_votes'"
        ).fetchone()
        if exists is None:
            return {}
        rows = self._conn.execute(
            "SELECT size, root, attempt, author, record_attempt FROM my_votes"
        )
        return {int(r[0]): (bytes(r[1]), int(r[2]), str(r[3]), int(r[4])) for r in rows}

    # What this node did in secure aggregation that it must never contradict after a restart:
    # the survivor set it signed per (ledger slot of the round, attempt), kind "set", value the
    # encoded set. Written before the signature leaves, like votes.
    SECAGG_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS my_secagg(slot INTEGER NOT NULL, attempt INTEGER NOT NULL, "
        "kind TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY(slot, attempt, kind))"
    )

    def record_secagg(self, slot: int, attempt: int, kind: str, value: bytes) -> None:
        try:
            self._conn.execute(self.SECAGG_SCHEMA)
            self._conn.execute(
                "INSERT OR REPLACE INTO my_secagg VALUES (?,?,?,?)", (slot, attempt, kind, value)
            )
        except sqlite3.Error as exc:  # the signature must not be sent: it was not recorded
            raise self._write_error(exc) from exc

    def my_secagg(self) -> list[tuple[int, int, str, bytes]]:
        """(slot, attempt, kind, value) of every survivor set this node signed."""
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='my_secagg'"
        ).fetchone()
        if exists is None:
            return []
        rows = self._conn.execute("SELECT slot, attempt, kind, value FROM my_secagg")
        return [(int(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, size={self._size})"

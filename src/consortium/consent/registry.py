"""A node's consent registry: who agreed to which use of which record, and when.

SQLite (WAL, synchronous=FULL, secure_delete) with four tables:
- `events`: the append-only history (grant, withdraw, expire-change, erase), one row per
  (record, purpose) touched; triggers refuse UPDATE and DELETE.
- `records` and `consent`: the current state derived from the events, kept in the same
  transaction so `eligible` is one indexed query instead of a replay (`verify_state` replays).
- `salts`: one random 32-byte salt per record, used in the round commitments; erasure deletes it
  (crypto-shredding) and checkpoints the WAL so the bytes leave the files too.
- `rounds`: the commitments this node made (round, purpose, start time, count, root, the sorted
  leaf commitments so it can later hand out inclusion proofs, and the record ids selected, so a
  retried attempt or a restarted node trains on the same rows; erasure removes ids from it).

Record ids are the node's local dataset row indices. Times are float seconds since the epoch.
State answers "now": `eligible(purpose, at)` is exact for any `at` not earlier than the latest
event on a record (a re-grant overwrites the earlier interval; `history` keeps it).
"""

from __future__ import annotations

import csv
import itertools
import re
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import numpy as np

from consortium.core.errors import ConsortiumError

SALT_SIZE = 32
FORMAT = "consortium-consent/1"
CSV_COLUMNS = ("subject", "record_id", "purposes", "granted", "expires")
EVENT_KINDS = ("grant", "withdraw", "expire-change", "erase")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,127}$")
_MAX_RECORD_ID = 2**63 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'withdraw', 'expire-change', 'erase')),
    subject TEXT NOT NULL,
    record_id INTEGER NOT NULL,
    purpose TEXT,
    expires REAL);
CREATE INDEX IF NOT EXISTS events_subject ON events(subject);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'consent history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'consent history is append-only'); END;
CREATE TABLE IF NOT EXISTS records(
    record_id INTEGER PRIMARY KEY, subject TEXT NOT NULL, erased REAL);
CREATE INDEX IF NOT EXISTS records_subject ON records(subject);
CREATE TABLE IF NOT EXISTS consent(
    purpose TEXT NOT NULL, record_id INTEGER NOT NULL REFERENCES records(record_id),
    granted REAL NOT NULL, expires REAL, withdrawn REAL,
    PRIMARY KEY (purpose, record_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS consent_record ON consent(record_id);
CREATE TABLE IF NOT EXISTS salts(record_id INTEGER PRIMARY KEY, salt BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER NOT NULL, purpose TEXT NOT NULL, at REAL NOT NULL, count INTEGER NOT NULL,
    root BLOB NOT NULL, leaves BLOB NOT NULL, ids BLOB NOT NULL,
    PRIMARY KEY (round, purpose)) WITHOUT ROWID;
"""


class ConsentError(ConsortiumError):
    """A consent operation is invalid (unknown subject, bad CSV row, erased record...)."""

    exit_code = 2


@dataclass(frozen=True)
class GrantRow:
    """One grant: `subject` agrees that `record_id` be used for `purposes` from `granted`."""

    subject: str
    record_id: int
    purposes: tuple[str, ...]
    granted: float
    expires: float | None = None
    line: int | None = None  # CSV line number, for error messages


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    kind: str
    subject: str
    record_id: int
    purpose: str | None
    expires: float | None


@dataclass(frozen=True)
class ConsentState:
    record_id: int
    subject: str
    purpose: str
    granted: float
    expires: float | None
    withdrawn: float | None
    erased: float | None

    def active(self, at: float) -> bool:
        return (
            self.erased is None
            and self.granted <= at
            and (self.expires is None or at < self.expires)
            and (self.withdrawn is None or at < self.withdrawn)
        )


@dataclass(frozen=True)
class StoredRound:
    round: int
    purpose: str
    at: float
    count: int
    root: bytes


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConsentError(
            f"invalid {kind} {value!r}: use 1-128 letters, digits or _.:@/+- "
            "(starting with a letter or digit)"
        )
    return value


def parse_time(value: str, what: str = "time") -> float:
    """ISO-8601 (naive means UTC) or seconds since the epoch."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConsentError(f"invalid {what} {value!r}: use ISO-8601 or epoch seconds") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def format_time(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _where(row: GrantRow) -> str:
    return f"line {row.line}: " if row.line is not None else ""


class ConsentRegistry:
    """The consent registry at `path` (created if missing). One writer process at a time."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            # Deleted salts are overwritten with zeros, not left in free pages.
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)  # idempotent: every statement is IF NOT EXISTS
            with self._tx():
                row = self._conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                if row is None:
                    self._conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                elif row[0] != FORMAT:
                    raise ConsentError(f"{self.path} is not a consent registry ({row[0]!r})")
        except sqlite3.DatabaseError as exc:
            raise ConsentError(f"{self.path} is not a consent registry: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ConsentRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- writes -----------------------------------------------------------------------------

    def grant(
        self,
        subject: str,
        record_ids: Iterable[int],
        purposes: Iterable[str],
        expires: float | None = None,
        *,
        at: float,
    ) -> int:
        """Grant (or renew) consent; returns the number of (record, purpose) pairs written."""
        ps = tuple(purposes)
        rows = [GrantRow(subject, int(r), ps, at, expires) for r in record_ids]
        if not rows:
            raise ConsentError("grant needs at least one record id")
        return self.grant_many(rows)

    def grant_many(self, rows: Sequence[GrantRow]) -> int:
        """Apply many grants in one transaction: all of them or, on any error, none."""
        owner: dict[int, GrantRow] = {}
        for row in rows:
            where = _where(row)
            check_name("subject", row.subject)
            if not 0 <= row.record_id <= _MAX_RECORD_ID:
                raise ConsentError(f"{where}record id {row.record_id} is out of range")
            if not row.purposes:
                raise ConsentError(f"{where}no purpose given")
            for p in row.purposes:
                check_name("purpose", p)
            if row.expires is not None and row.expires <= row.granted:
                raise ConsentError(f"{where}expires is not after granted")
            prev = owner.setdefault(row.record_id, row)
            if prev.subject != row.subject:
                raise ConsentError(
                    f"{where}record {row.record_id} is given to two subjects in one import"
                )
        pairs = [(r, p) for r in rows for p in dict.fromkeys(r.purposes)]
        with self._tx() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS _new(record_id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM _new")
            db.executemany("INSERT INTO _new VALUES (?)", ((rid,) for rid in owner))
            for rid, subject, erased in db.execute(
                "SELECT r.record_id, r.subject, r.erased FROM records r JOIN _new USING(record_id)"
            ):
                row = owner[rid]
                if erased is not None:
                    raise ConsentError(f"{_where(row)}record {rid} was erased; it cannot be used")
                if subject != row.subject:
                    raise ConsentError(f"{_where(row)}record {rid} belongs to another subject")
            db.executemany(
                "INSERT OR IGNORE INTO records(record_id, subject) VALUES (?, ?)",
                ((rid, row.subject) for rid, row in owner.items()),
            )
            fresh = secrets.token_bytes(SALT_SIZE * len(owner))
            db.executemany(
                "INSERT OR IGNORE INTO salts VALUES (?, ?)",
                ((rid, fresh[i * SALT_SIZE : (i + 1) * SALT_SIZE]) for i, rid in enumerate(owner)),
            )
            db.executemany(
                "INSERT INTO consent VALUES (?, ?, ?, ?, NULL) ON CONFLICT(purpose, record_id) "
                "DO UPDATE SET granted=excluded.granted, expires=excluded.expires, withdrawn=NULL",
                ((p, r.record_id, r.granted, r.expires) for r, p in pairs),
            )
            db.executemany(
                "INSERT INTO events(at, kind, subject, record_id, purpose, expires) "
                "VALUES (?, 'grant', ?, ?, ?, ?)",
                ((r.granted, r.subject, r.record_id, p, r.expires) for r, p in pairs),
            )
        return len(pairs)

    def _active_pairs(
        self, db: sqlite3.Connection, subject: str, purposes: Sequence[str] | None
    ) -> list[tuple[int, str]]:
        rows = db.execute(
            "SELECT c.record_id, c.purpose FROM consent c JOIN records r USING(record_id) "
            "WHERE r.subject=? AND r.erased IS NULL AND c.withdrawn IS NULL "
            "ORDER BY c.record_id, c.purpose",
            (subject,),
        ).fetchall()
        return [(r, p) for r, p in rows if purposes is None or p in purposes]

    def withdraw(self, subject: str, purposes: Iterable[str] | None = None, *, at: float) -> int:
        """Withdraw consent for `purposes` (None: all); it excludes the records for any `at`
        from this time on, i.e. from the next round that starts. Returns pairs withdrawn."""
        return self.withdraw_many([subject], purposes, at=at)

    def withdraw_many(
        self, subjects: Sequence[str], purposes: Iterable[str] | None = None, *, at: float
    ) -> int:
        """Withdraw several subjects at once, in one transaction: a round that starts meanwhile
        sees all of these withdrawals or none of them."""
        ps = None if purposes is None else tuple(check_name("purpose", p) for p in purposes)
        total = 0
        with self._tx() as db:
            for subject in subjects:
                self._require_subject(db, subject)
                pairs = self._active_pairs(db, subject, ps)
                if not pairs:
                    what = "any purpose" if ps is None else ", ".join(ps)
                    raise ConsentError(f"subject {subject} has no consent to withdraw for {what}")
                db.executemany(
                    "UPDATE consent SET withdrawn=? WHERE record_id=? AND purpose=?",
                    ((at, r, p) for r, p in pairs),
                )
                db.executemany(
                    "INSERT INTO events(at, kind, subject, record_id, purpose) "
                    "VALUES (?, 'withdraw', ?, ?, ?)",
                    ((at, subject, r, p) for r, p in pairs),
                )
                total += len(pairs)
        return total

    def set_expiry(
        self, subject: str, purposes: Iterable[str] | None, expires: float | None, *, at: float
    ) -> int:
        """Narrow (or extend) how long an active consent lasts. Returns pairs changed."""
        ps = None if purposes is None else tuple(check_name("purpose", p) for p in purposes)
        with self._tx() as db:
            self._require_subject(db, subject)
            pairs = self._active_pairs(db, subject, ps)
            if not pairs:
                raise ConsentError(f"subject {subject} has no active consent to change")
            db.executemany(
                "UPDATE consent SET expires=? WHERE record_id=? AND purpose=?",
                ((expires, r, p) for r, p in pairs),
            )
            db.executemany(
                "INSERT INTO events(at, kind, subject, record_id, purpose, expires) "
                "VALUES (?, 'expire-change', ?, ?, ?, ?)",
                ((at, subject, r, p, expires) for r, p in pairs),
            )
        return len(pairs)

    def erase(self, subject: str, *, at: float) -> list[int]:
        """Mark the subject's records erased and delete their salts (crypto-shredding).

        Returns the record ids; the caller must delete those data rows and retrain. Use
        `consent.erasure.erase_subject` to also learn the first round that used them.
        """
        with self._tx() as db:
            self._require_subject(db, subject)
            ids = [
                r
                for (r,) in db.execute(
                    "SELECT record_id FROM records WHERE subject=? AND erased IS NULL "
                    "ORDER BY record_id",
                    (subject,),
                )
            ]
            if not ids:
                raise ConsentError(f"subject {subject} is already erased")
            db.executemany("UPDATE records SET erased=? WHERE record_id=?", ((at, r) for r in ids))
            db.executemany("DELETE FROM salts WHERE record_id=?", ((r,) for r in ids))
            db.executemany(
                "INSERT INTO events(at, kind, subject, record_id) VALUES (?, 'erase', ?, ?)",
                ((at, subject, r) for r in ids),
            )
            # Forget which rounds selected these rows (the published counts stay as they were).
            gone = np.asarray(ids, dtype=np.int64)
            for rnd, purpose, blob in db.execute(
                "SELECT round, purpose, ids FROM rounds"
            ).fetchall():
                sel = np.frombuffer(bytes(blob), dtype="<i8")
                keep = sel[~np.isin(sel, gone)]
                if len(keep) != len(sel):
                    db.execute(
                        "UPDATE rounds SET ids=? WHERE round=? AND purpose=?",
                        (keep.astype("<i8").tobytes(), rnd, purpose),
                    )
        # Move the zeroed pages into the main file and empty the WAL, which still held the salts.
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return ids

    def store_round(
        self,
        round_no: int,
        purpose: str,
        at: float,
        root: bytes,
        leaves: Sequence[bytes],
        record_ids: np.ndarray,
    ) -> None:
        """Remember a commitment (sorted leaf commitments) so receipts can be made later."""
        blob = b"".join(leaves)
        ids = np.ascontiguousarray(record_ids, dtype="<i8").tobytes()
        with self._tx() as db:
            old = db.execute(
                "SELECT root, count FROM rounds WHERE round=? AND purpose=?", (round_no, purpose)
            ).fetchone()
            if old is not None:
                if bytes(old[0]) == root and old[1] == len(leaves):
                    return
                raise ConsentError(
                    f"round {round_no} ({purpose}) already has a different commitment"
                )
            db.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                (round_no, purpose, at, len(leaves), root, blob, ids),
            )

    def stored_selection(
        self, round_no: int, purpose: str
    ) -> tuple[StoredRound, np.ndarray] | None:
        """A round's stored commitment and the (not erased) record ids it selected, if any."""
        row = self._conn.execute(
            "SELECT at, count, root, ids FROM rounds WHERE round=? AND purpose=?",
            (round_no, purpose),
        ).fetchone()
        if row is None:
            return None
        at, count, root, ids = row
        return (
            StoredRound(round_no, purpose, at, count, bytes(root)),
            np.frombuffer(bytes(ids), dtype="<i8").astype(np.int64),
        )

    # -- reads ------------------------------------------------------------------------------

    def _require_subject(self, db: sqlite3.Connection, subject: str) -> None:
        if (
            db.execute("SELECT 1 FROM records WHERE subject=? LIMIT 1", (subject,)).fetchone()
            is None
        ):
            raise ConsentError(f"unknown subject {subject!r}")

    def eligible(self, purpose: str, at: float) -> np.ndarray:
        """Sorted int64 record ids whose consent covers `purpose` at time `at`."""
        cur = self._conn.execute(
            "SELECT c.record_id FROM consent c JOIN records r USING(record_id) "
            "WHERE c.purpose=? AND c.granted<=? AND (c.expires IS NULL OR c.expires>?) "
            "AND (c.withdrawn IS NULL OR c.withdrawn>?) AND r.erased IS NULL "
            "ORDER BY c.record_id",
            (purpose, at, at, at),
        )
        # fromiter + chain run in C: no per-record Python bytecode for 10^5 records.
        return np.fromiter(itertools.chain.from_iterable(cur), dtype=np.int64)

    def records_of(self, subject: str) -> list[int]:
        rows = self._conn.execute(
            "SELECT record_id FROM records WHERE subject=? ORDER BY record_id", (subject,)
        ).fetchall()
        if not rows:
            raise ConsentError(f"unknown subject {subject!r}")
        return [r for (r,) in rows]

    def salts(self, record_ids: Iterable[int]) -> dict[int, bytes]:
        """The salts of `record_ids`; ConsentError if any is missing (erased or never granted)."""
        ids = [int(r) for r in record_ids]
        out: dict[int, bytes] = {}
        with self._tx() as db:  # a read transaction, for one consistent snapshot
            db.execute("CREATE TEMP TABLE IF NOT EXISTS _want(record_id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM _want")
            db.executemany("INSERT OR IGNORE INTO _want VALUES (?)", ((r,) for r in ids))
            for rid, salt in db.execute(
                "SELECT s.record_id, s.salt FROM salts s JOIN _want USING(record_id)"
            ):
                out[rid] = bytes(salt)
        missing = [r for r in ids if r not in out]
        if missing:
            raise ConsentError(
                f"no salt for record(s) {missing[:5]}: erased or never granted"
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        return out

    def history(self, subject: str | None = None) -> list[Event]:
        if subject is None:
            cur = self._conn.execute("SELECT * FROM events ORDER BY seq")
        else:
            cur = self._conn.execute(
                "SELECT * FROM events WHERE subject=? ORDER BY seq", (subject,)
            )
        return [Event(*row) for row in cur]

    def state(self, subject: str | None = None, purpose: str | None = None) -> list[ConsentState]:
        sql = (
            "SELECT c.record_id, r.subject, c.purpose, c.granted, c.expires, c.withdrawn, r.erased "
            "FROM consent c JOIN records r USING(record_id) WHERE 1=1"
        )
        args: list[str] = []
        if subject is not None:
            sql += " AND r.subject=?"
            args.append(subject)
        if purpose is not None:
            sql += " AND c.purpose=?"
            args.append(purpose)
        sql += " ORDER BY r.subject, c.record_id, c.purpose"
        return [ConsentState(*row) for row in self._conn.execute(sql, args)]

    def rounds(self, purpose: str | None = None) -> list[StoredRound]:
        sql = "SELECT round, purpose, at, count, root FROM rounds"
        args: tuple[str, ...] = ()
        if purpose is not None:
            sql += " WHERE purpose=?"
            args = (purpose,)
        rows = self._conn.execute(sql + " ORDER BY round, purpose", args)
        return [StoredRound(r, p, at, n, bytes(root)) for r, p, at, n, root in rows]

    def round_leaves(self, round_no: int, purpose: str) -> list[bytes]:
        row = self._conn.execute(
            "SELECT leaves, count FROM rounds WHERE round=? AND purpose=?", (round_no, purpose)
        ).fetchone()
        if row is None:
            raise ConsentError(f"no commitment stored for round {round_no} ({purpose})")
        blob, n = bytes(row[0]), row[1]
        return [blob[i * 32 : (i + 1) * 32] for i in range(n)]

    def verify_state(self) -> None:
        """Replay the history and check it yields the stored current state (ConsentError if not)."""
        owner: dict[int, str] = {}
        erased: dict[int, float] = {}
        cons: dict[tuple[str, int], list[float | None]] = {}
        for e in self.history():
            owner.setdefault(e.record_id, e.subject)
            key = (e.purpose or "", e.record_id)
            if e.kind == "grant":
                cons[key] = [e.at, e.expires, None]
            elif e.kind == "withdraw":
                cons[key][2] = e.at
            elif e.kind == "expire-change":
                cons[key][1] = e.expires
            else:
                erased[e.record_id] = e.at
        replayed = sorted(
            (r, owner[r], p, g, x, w, erased.get(r)) for (p, r), (g, x, w) in cons.items()
        )
        stored = sorted(
            (s.record_id, s.subject, s.purpose, s.granted, s.expires, s.withdrawn, s.erased)
            for s in self.state()
        )
        if replayed != stored:
            raise ConsentError("the consent state does not match its history")

    # -- CSV --------------------------------------------------------------------------------

    def import_csv(self, path: Path | str) -> int:
        """Import grants from CSV (subject,record_id,purposes,granted,expires); all or nothing."""
        return self.grant_many(read_csv(Path(path)))

    def export_csv(self, path: Path | str) -> int:
        """Write the active (not withdrawn, not erased) grants in the import format."""
        groups: dict[tuple[str, int, float, float | None], list[str]] = {}
        for s in self.state():
            if s.withdrawn is None and s.erased is None:
                groups.setdefault((s.subject, s.record_id, s.granted, s.expires), []).append(
                    s.purpose
                )
        with Path(path).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for (subject, rid, granted, expires), ps in sorted(groups.items(), key=str):
                w.writerow([subject, rid, ";".join(ps), format_time(granted), format_time(expires)])
        return len(groups)

    export = export_csv


def read_csv(path: Path) -> list[GrantRow]:
    """Parse a grants CSV, naming the line of the first problem."""
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise ConsentError(f"cannot read {path}: {exc.strerror}") from exc
    rows: list[GrantRow] = []
    with fh:
        reader = csv.DictReader(fh)
        header = tuple(h.strip() for h in reader.fieldnames or ())
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ConsentError(f"{path}: missing column(s) {', '.join(missing)}")
        try:
            for raw in reader:
                line = reader.line_num
                rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k}
                try:
                    rid = int(rec["record_id"])
                except ValueError:
                    raise ConsentError(
                        f"line {line}: record_id {rec['record_id']!r} is not an integer"
                    ) from None
                purposes = tuple(p.strip() for p in rec["purposes"].split(";") if p.strip())
                try:
                    granted = parse_time(rec["granted"], "granted")
                    expires = parse_time(rec["expires"], "expires") if rec["expires"] else None
                except ConsentError as exc:
                    raise ConsentError(f"line {line}: {exc}") from None
                row = GrantRow(rec["subject"], rid, purposes, granted, expires, line)
                try:
                    check_name("subject", row.subject)
                except ConsentError as exc:
                    raise ConsentError(f"line {line}: {exc}") from None
                rows.append(row)
        except csv.Error as exc:
            raise ConsentError(f"{path} line {reader.line_num}: {exc}") from exc
    if not rows:
        raise ConsentError(f"{path} has no rows")
    return rows

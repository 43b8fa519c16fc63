"""A node's consent registry: who agreed to which use of which record, and when.

SQLite (WAL, synchronous=FULL, secure_delete) with these tables:
- `events`: the append-only history (grant, withdraw, expire-change, erase), one row per
  (record, purpose) touched; triggers refuse UPDATE and DELETE. Each row also carries its salted
  blind and the hash chain after it (`consent.history`), so a deleted or rewritten event breaks
  the chain, whose head every round commits to on the ledger.
- `records` and `consent`: the current state derived from the events, kept in the same
  transaction so `eligible` is one indexed query instead of a replay (`verify_state` replays).
- `salts`: one random 32-byte salt per record, used in the round commitments; erasure deletes it
  (crypto-shredding) and checkpoints the WAL so the bytes leave the files too.
- `rounds`: the commitments this node made (round, purpose, start time, count, root, the sorted
  leaf commitments so it can later hand out inclusion proofs, the record ids selected, so a
  retried attempt or a restarted node trains on the same rows (erasure removes ids from it), and
  the history head: how many events the selection saw and the round head over them).

Record ids are text (`consent.record_ids`): the engineer's own key of each record (a row of a
built-in dataset is its decimal text). Times are float seconds since the epoch.
State answers "now": `eligible(purpose, at)` is exact for any `at` not earlier than the latest
event on a record (a re-grant overwrites the earlier interval; `history` keeps it).

Format `consortium-consent/3` keys records by text. Registries of format 2 (integer row ids)
are upgraded in place the first time a writer opens them (`_upgrade`, one transaction: every
event, chain value, salt and commitment is kept, each id becoming its decimal text, which is
hashed exactly as the integer was), and read as if upgraded by a reader (the auditor), which
writes nothing.
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
from typing import Any

import numpy as np

from consortium.consent.history import EMPTY_CHAIN, blind, chain_step, event_digest
from consortium.consent.record_ids import (
    RecordIdError,
    decode_ids,
    encode_ids,
    id_array,
    record_id,
)
from consortium.core.errors import ConsortiumError
from consortium.core.sqlite import open_for_reading

SALT_SIZE = 32
FORMAT = "consortium-consent/3"
#: The previous format (integer record ids), upgraded on open.
FORMAT_V2 = "consortium-consent/2"
CSV_COLUMNS = ("subject", "record_id", "purposes", "granted", "expires")
EVENT_KINDS = ("grant", "withdraw", "expire-change", "erase")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,127}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'withdraw', 'expire-change', 'erase')),
    subject TEXT NOT NULL,
    record_id TEXT NOT NULL,
    purpose TEXT,
    expires REAL,
    blind BLOB NOT NULL,
    chain BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_subject ON events(subject);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'consent history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'consent history is append-only'); END;
CREATE TABLE IF NOT EXISTS records(
    record_id TEXT PRIMARY KEY, subject TEXT NOT NULL, erased REAL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_subject ON records(subject);
CREATE TABLE IF NOT EXISTS consent(
    purpose TEXT NOT NULL, record_id TEXT NOT NULL REFERENCES records(record_id),
    granted REAL NOT NULL, expires REAL, withdrawn REAL,
    PRIMARY KEY (purpose, record_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS consent_record ON consent(record_id);
CREATE TABLE IF NOT EXISTS salts(record_id TEXT PRIMARY KEY, salt BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER NOT NULL, purpose TEXT NOT NULL, at REAL NOT NULL, count INTEGER NOT NULL,
    root BLOB NOT NULL, leaves BLOB NOT NULL, ids BLOB NOT NULL,
    events INTEGER NOT NULL, head BLOB NOT NULL,
    PRIMARY KEY (round, purpose)) WITHOUT ROWID;
"""

#: Format 2's schema: what the auditor checks a registry not yet upgraded against.
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'withdraw', 'expire-change', 'erase')),
    subject TEXT NOT NULL,
    record_id INTEGER NOT NULL,
    purpose TEXT,
    expires REAL,
    blind BLOB NOT NULL,
    chain BLOB NOT NULL);
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
    events INTEGER NOT NULL, head BLOB NOT NULL,
    PRIMARY KEY (round, purpose)) WITHOUT ROWID;
"""


class ConsentError(ConsortiumError):
    """A consent operation is invalid (unknown subject, bad CSV row, erased record...)."""

    exit_code = 2


@dataclass(frozen=True)
class GrantRow:
    """One grant: `subject` agrees that `record_id` be used for `purposes` from `granted`."""

    subject: str
    record_id: str | int  # text; an integer is its decimal text
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
    record_id: str
    purpose: str | None
    expires: float | None


@dataclass(frozen=True)
class ConsentState:
    record_id: str
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
    events: int  # how many events of the history the selection saw
    head: bytes  # `history.round_head` over them


#: (at, kind, subject, record id, purpose, expires) of an event about to be appended.
NewEvent = tuple[float, str, str, str, str | None, float | None]


_RAW = {
    "events": "SELECT seq, at, kind, subject, record_id, purpose, expires, blind, chain "
    "FROM events ORDER BY seq",
    "salts": "SELECT record_id, salt FROM salts ORDER BY record_id",
    "records": "SELECT record_id, subject, erased FROM records ORDER BY record_id",
    "rounds": "SELECT round, purpose, at, count, root, leaves, ids, events, head FROM rounds "
    "ORDER BY round, purpose",
}


class Replay:
    """The consent state an event history yields, event by event: what `verify_state` and the
    auditor's check of each round's selection compare against."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self.erased: dict[str, float] = {}
        self.consent: dict[tuple[str, str], tuple[float, float | None, float | None]] = {}

    def apply(self, e: Event) -> None:
        # A record belongs to one subject for good (`grant_many` refuses a second one); this also
        # ties an erased record's later events, whose salted blind can no longer be recomputed.
        if self.owner.setdefault(e.record_id, e.subject) != e.subject:
            raise ConsentError(f"event {e.seq} gives record {e.record_id} another subject")
        key = (e.purpose or "", e.record_id)
        if e.kind == "grant":
            self.consent[key] = (e.at, e.expires, None)
        elif e.kind == "erase":
            self.erased[e.record_id] = e.at
        elif key in self.consent:  # a withdrawal or expiry change of an earlier grant
            granted, expires, withdrawn = self.consent[key]
            if e.kind == "withdraw":
                self.consent[key] = (granted, expires, e.at)
            else:
                self.consent[key] = (granted, e.expires, withdrawn)
        else:
            raise ConsentError(f"event {e.seq} changes consent that was never granted")

    def active(self, record_id: str, purpose: str, at: float) -> bool:
        """Whether `eligible(purpose, at)` would select the record in this state."""
        c = self.consent.get((purpose, record_id))
        return (
            c is not None
            and record_id not in self.erased
            and c[0] <= at
            and (c[1] is None or at < c[1])
            and (c[2] is None or at < c[2])
        )

    def state(self) -> list[ConsentState]:
        return [
            ConsentState(r, self.owner[r], p, g, x, w, self.erased.get(r))
            for (p, r), (g, x, w) in self.consent.items()
        ]


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


def stored_format(conn: sqlite3.Connection) -> str | None:
    """The format a registry's `meta` table states, or None (no such table or row)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
    except sqlite3.OperationalError:
        return None  # a new, empty file
    return None if row is None else str(row[0])


def registry_schema(path: Path) -> str:
    """The schema a registry of the format it states must have exactly (the auditor checks it
    before reading anything else): format 2's until a writer upgrades it, else the current."""
    try:
        conn = open_for_reading(path)
        try:
            return SCHEMA_V2 if stored_format(conn) == FORMAT_V2 else SCHEMA
        finally:
            conn.close()
    except (OSError, sqlite3.Error, UnicodeDecodeError):
        return SCHEMA  # missing or unreadable: the schema check says so


def _statements(script: str) -> list[str]:
    """A schema script as statements, to run inside a transaction (`executescript` commits)."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return out


_V2_TABLES = ("events", "records", "consent", "salts", "rounds")
_V2_OBJECTS = (
    ("TRIGGER", "events_no_update"),
    ("TRIGGER", "events_no_delete"),
    ("INDEX", "events_subject"),
    ("INDEX", "records_subject"),
    ("INDEX", "consent_record"),
)


def _upgrade(conn: sqlite3.Connection) -> None:
    """Rewrite a format-2 registry (integer record ids) as format 3 (text), in one transaction:
    the old tables are renamed aside, the current schema created, every row copied with each
    record id as its decimal text (blinds, chain values, salts, leaves and roots unchanged: a
    numeric id is hashed as the integer it was), each round's id list re-encoded, and the old
    tables dropped (secure_delete zeroes their pages). ConsentError naming a round whose list of
    ids is malformed."""
    factory = conn.text_factory
    conn.text_factory = bytes  # text is copied as it is stored, even if it is not UTF-8
    conn.execute("PRAGMA foreign_keys=OFF")  # tables are renamed and dropped
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        if row is None or row[0] != FORMAT_V2.encode():
            conn.execute("ROLLBACK")  # another writer upgraded it meanwhile
            return
        for kind, name in _V2_OBJECTS:
            conn.execute(f"DROP {kind} IF EXISTS {name}")
        for table in _V2_TABLES:
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v2")
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO events SELECT seq, at, kind, subject, CAST(record_id AS TEXT), purpose, "
            "expires, blind, chain FROM events_v2 ORDER BY seq"
        )
        conn.execute(
            "INSERT INTO records SELECT CAST(record_id AS TEXT), subject, erased FROM records_v2"
        )
        conn.execute(
            "INSERT INTO consent SELECT purpose, CAST(record_id AS TEXT), granted, expires, "
            "withdrawn FROM consent_v2"
        )
        conn.execute("INSERT INTO salts SELECT CAST(record_id AS TEXT), salt FROM salts_v2")
        for row in conn.execute("SELECT * FROM rounds_v2").fetchall():
            rnd, purpose, blob = row[0], row[1], row[6]
            conn.execute(
                "INSERT INTO rounds VALUES (?, CAST(? AS TEXT), ?, ?, ?, ?, ?, ?, ?)",
                (*row[:6], _v2_ids(rnd, purpose, blob), *row[7:]),
            )
        for table in _V2_TABLES:
            conn.execute(f"DROP TABLE {table}_v2")
        conn.execute("UPDATE meta SET value=? WHERE key='format'", (FORMAT,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
    finally:
        conn.text_factory = factory


def _v2_ids(rnd: Any, purpose: Any, blob: Any) -> bytes:
    """A format-2 round's selected ids (little-endian int64, strictly increasing) as format
    3's list of their decimal texts."""
    if not isinstance(blob, bytes) or len(blob) % 8:
        raise ConsentError(f"round at ledger entry {rnd!r} ({purpose!r}): malformed record list")
    ints = np.frombuffer(blob, dtype="<i8").tolist()
    if any(a >= b for a, b in itertools.pairwise(ints)):
        raise ConsentError(
            f"round at ledger entry {rnd!r} ({purpose!r}): its record list is not a sorted "
            "subset of its leaves"
        )
    return encode_ids(sorted(str(i) for i in ints))


def _where(row: GrantRow) -> str:
    return f"line {row.line}: " if row.line is not None else ""


class ConsentRegistry:
    """The consent registry at `path` (created if missing). One writer process at a time.

    `readonly=True` opens an existing registry without writing anything (the auditor)."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file():
                    raise ConsentError(f"no consent registry at {self.path}")
                self._conn = open_for_reading(self.path)
                if stored_format(self._conn) == FORMAT_V2:  # read it as upgraded, in memory
                    memory = sqlite3.connect(":memory:", isolation_level=None)
                    self._conn.backup(memory)
                    self._conn.close()
                    self._conn = memory
                    _upgrade(memory)
                    memory.execute("PRAGMA query_only=ON")
                # Damaged text must not stop the audit in a decode error: it reads on, and the
                # bytes that are not UTF-8 make the event's digest (or the state) differ.
                self._conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
            else:
                self._conn = sqlite3.connect(self.path, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                # Deleted salts are overwritten with zeros, not left in free pages.
                self._conn.execute("PRAGMA secure_delete=ON")
                if stored_format(self._conn) == FORMAT_V2:
                    _upgrade(self._conn)
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
            with self._tx(readonly):
                row = self._conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                if row is None and not readonly:
                    self._conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                elif row is None or row[0] != FORMAT:
                    found = None if row is None else row[0]
                    raise ConsentError(
                        f"{self.path} is not a {FORMAT} registry (format {found!r}); registries "
                        "of earlier versions have no history chain: import the consent again"
                    )
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise ConsentError(f"{self.path} is not a consent registry: {exc}") from exc
        except BaseException:
            self._close_quietly()  # never leave a connection to a file we refused
            raise

    def _close_quietly(self) -> None:
        if hasattr(self, "_conn"):
            self._conn.close()

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
    def _tx(self, readonly: bool = False) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
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
        record_ids: Iterable[str | int],
        purposes: Iterable[str],
        expires: float | None = None,
        *,
        at: float,
    ) -> int:
        """Grant (or renew) consent; returns the number of (record, purpose) pairs written."""
        ps = tuple(purposes)
        rows = [GrantRow(subject, r, ps, at, expires) for r in record_ids]
        if not rows:
            raise ConsentError("grant needs at least one record id")
        return self.grant_many(rows)

    def grant_many(self, rows: Sequence[GrantRow]) -> int:
        """Apply many grants in one transaction: all of them or, on any error, none."""
        owner: dict[str, GrantRow] = {}
        ids: list[str] = []  # each row's record id, as text
        for row in rows:
            where = _where(row)
            check_name("subject", row.subject)
            try:
                rid = record_id(row.record_id)
            except RecordIdError as exc:
                raise ConsentError(f"{where}{exc}") from None
            ids.append(rid)
            if not row.purposes:
                raise ConsentError(f"{where}no purpose given")
            for p in row.purposes:
                check_name("purpose", p)
            if row.expires is not None and row.expires <= row.granted:
                raise ConsentError(f"{where}expires is not after granted")
            prev = owner.setdefault(rid, row)
            if prev.subject != row.subject:
                raise ConsentError(f"{where}record {rid} is given to two subjects in one import")
        pairs = [
            (r, rid, p) for r, rid in zip(rows, ids, strict=True) for p in dict.fromkeys(r.purposes)
        ]
        with self._tx() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS _new(record_id TEXT PRIMARY KEY)")
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
                ((p, rid, r.granted, r.expires) for r, rid, p in pairs),
            )
            self._append_events(
                db, [(r.granted, "grant", r.subject, rid, p, r.expires) for r, rid, p in pairs]
            )
        return len(pairs)

    def _append_events(self, db: sqlite3.Connection, events: Sequence[NewEvent]) -> None:
        """Append events to the history, each with its salted blind and the chain after it
        (inside the caller's transaction, while every record involved still has its salt)."""
        seq, chain = self._head(db)
        salts = self._read_salts(db, {e[3] for e in events})
        rows = []
        for at, kind, subject, rid, purpose, expires in events:
            seq += 1
            blinded = blind(salts[rid], rid, subject)
            chain = chain_step(chain, event_digest(seq, kind, at, purpose, expires, blinded))
            rows.append((seq, at, kind, subject, rid, purpose, expires, blinded, chain))
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    @staticmethod
    def _head(db: sqlite3.Connection) -> tuple[int, bytes]:
        row = db.execute("SELECT seq, chain FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, EMPTY_CHAIN) if row is None else (int(row[0]), bytes(row[1]))

    def _active_pairs(
        self, db: sqlite3.Connection, subject: str, purposes: Sequence[str] | None
    ) -> list[tuple[str, str]]:
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
                self._append_events(db, [(at, "withdraw", subject, r, p, None) for r, p in pairs])
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
            self._append_events(
                db, [(at, "expire-change", subject, r, p, expires) for r, p in pairs]
            )
        return len(pairs)

    def erase(self, subject: str, *, at: float) -> list[str]:
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
            # The erase events are blinded with the salts they shred: the chain stays whole.
            self._append_events(db, [(at, "erase", subject, r, None, None) for r in ids])
            db.executemany("DELETE FROM salts WHERE record_id=?", ((r,) for r in ids))
            # Forget which rounds selected these rows (the published counts stay as they were).
            gone = set(ids)
            for rnd, purpose, blob in db.execute(
                "SELECT round, purpose, ids FROM rounds"
            ).fetchall():
                sel = decode_ids(bytes(blob))
                keep = [r for r in sel if r not in gone]
                if len(keep) != len(sel):
                    db.execute(
                        "UPDATE rounds SET ids=? WHERE round=? AND purpose=?",
                        (encode_ids(keep), rnd, purpose),
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
        events: int,
        head: bytes,
    ) -> None:
        """Remember a commitment (sorted leaf commitments) so receipts can be made later;
        `record_ids`: the sorted, distinct ids selected."""
        blob = b"".join(leaves)
        ids = encode_ids(str(r) for r in record_ids)
        with self._tx() as db:
            old = db.execute(
                "SELECT root, count, head FROM rounds WHERE round=? AND purpose=?",
                (round_no, purpose),
            ).fetchone()
            if old is not None:
                if bytes(old[0]) == root and old[1] == len(leaves) and bytes(old[2]) == head:
                    return
                raise ConsentError(
                    f"round {round_no} ({purpose}) already has a different commitment"
                )
            db.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (round_no, purpose, at, len(leaves), root, blob, ids, events, head),
            )

    def stored_selection(
        self, round_no: int, purpose: str
    ) -> tuple[StoredRound, np.ndarray] | None:
        """A round's stored commitment and the (not erased) record ids it selected, if any."""
        row = self._conn.execute(
            "SELECT at, count, root, events, head, ids FROM rounds WHERE round=? AND purpose=?",
            (round_no, purpose),
        ).fetchone()
        if row is None:
            return None
        at, count, root, events, head, ids = row
        return (
            StoredRound(round_no, purpose, at, count, bytes(root), events, bytes(head)),
            id_array(decode_ids(bytes(ids))),
        )

    # -- reads ------------------------------------------------------------------------------

    def _require_subject(self, db: sqlite3.Connection, subject: str) -> None:
        if (
            db.execute("SELECT 1 FROM records WHERE subject=? LIMIT 1", (subject,)).fetchone()
            is None
        ):
            raise ConsentError(f"unknown subject {subject!r}")

    def eligible(self, purpose: str, at: float) -> np.ndarray:
        """Sorted record ids (a text array) whose consent covers `purpose` at time `at`."""
        return self._eligible(self._conn, purpose, at)

    def select(
        self, purpose: str, at: float, held: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, bytes], int, bytes]:
        """One snapshot for a round: the eligible ids (within `held`), their salts, and the
        history it was taken from (events so far, chain after them)."""
        with self._tx(readonly=True) as db:
            ids = self._eligible(db, purpose, at)
            if held is not None:  # only records this node actually holds are used, and counted
                ids = np.intersect1d(ids, np.asarray(held, dtype=np.str_))
            salts = self._read_salts(db, ids.tolist())
            events, chain = self._head(db)
        return ids, salts, events, chain

    @staticmethod
    def _eligible(db: sqlite3.Connection, purpose: str, at: float) -> np.ndarray:
        cur = db.execute(
            "SELECT c.record_id FROM consent c JOIN records r USING(record_id) "
            "WHERE c.purpose=? AND c.granted<=? AND (c.expires IS NULL OR c.expires>?) "
            "AND (c.withdrawn IS NULL OR c.withdrawn>?) AND r.erased IS NULL "
            "ORDER BY c.record_id",
            (purpose, at, at, at),
        )
        return id_array(r for (r,) in cur)

    def records_of(self, subject: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT record_id FROM records WHERE subject=? ORDER BY record_id", (subject,)
        ).fetchall()
        if not rows:
            raise ConsentError(f"unknown subject {subject!r}")
        return [r for (r,) in rows]

    def salts(self, record_ids: Iterable[str]) -> dict[str, bytes]:
        """The salts of `record_ids`; ConsentError if any is missing (erased or never granted)."""
        with self._tx(readonly=True) as db:  # one consistent snapshot
            return self._read_salts(db, record_ids)

    @staticmethod
    def _read_salts(db: sqlite3.Connection, record_ids: Iterable[str]) -> dict[str, bytes]:
        ids = [str(r) for r in record_ids]
        out: dict[str, bytes] = {}
        # A temp table in memory (not in the file), so a read-only auditor can use it too.
        db.execute("CREATE TEMP TABLE IF NOT EXISTS _want(record_id TEXT PRIMARY KEY)")
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
        sql = "SELECT seq, at, kind, subject, record_id, purpose, expires FROM events"
        if subject is None:
            cur = self._conn.execute(sql + " ORDER BY seq")
        else:
            cur = self._conn.execute(sql + " WHERE subject=? ORDER BY seq", (subject,))
        return [Event(*row) for row in cur]

    def history_head(self) -> tuple[int, bytes]:
        """(events so far, the chain after them)."""
        return self._head(self._conn)

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
        sql = "SELECT round, purpose, at, count, root, events, head FROM rounds"
        args: tuple[str, ...] = ()
        if purpose is not None:
            sql += " WHERE purpose=?"
            args = (purpose,)
        rows = self._conn.execute(sql + " ORDER BY round, purpose", args)
        return [
            StoredRound(r, p, at, n, bytes(root), k, bytes(head))
            for r, p, at, n, root, k, head in rows
        ]

    def round_leaves(self, round_no: int, purpose: str) -> list[bytes]:
        row = self._conn.execute(
            "SELECT leaves, count FROM rounds WHERE round=? AND purpose=?", (round_no, purpose)
        ).fetchone()
        if row is None:
            raise ConsentError(f"no commitment stored for round {round_no} ({purpose})")
        blob, n = bytes(row[0]), row[1]
        return [blob[i * 32 : (i + 1) * 32] for i in range(n)]

    def verify_state(self) -> None:
        """Replay the history and check it yields the stored current state (ConsentError naming
        the first record where it does not)."""
        replay = Replay()
        for e in self.history():
            replay.apply(e)
        replayed = {(s.record_id, s.purpose): s for s in replay.state()}
        stored = {(s.record_id, s.purpose): s for s in self.state()}
        for key in sorted(replayed.keys() | stored.keys()):
            if replayed.get(key) != stored.get(key):
                raise ConsentError(
                    f"the consent state of record {key[0]} ({key[1]}) does not match its history"
                )

    # -- raw rows for the auditor (`consent.verify` checks them; nothing here trusts them) --

    def raw_rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of `table` (events, salts, records or rounds), in key order."""
        return self._conn.execute(_RAW[table]).fetchall()

    # -- CSV --------------------------------------------------------------------------------

    def import_csv(self, path: Path | str) -> int:
        """Import grants from CSV (subject,record_id,purposes,granted,expires); all or nothing."""
        return self.grant_many(read_csv(Path(path)))

    def export_csv(self, path: Path | str) -> int:
        """Write the active (not withdrawn, not erased) grants in the import format."""
        groups: dict[tuple[str, str, float, float | None], list[str]] = {}
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
                    rid = record_id(rec["record_id"])
                except RecordIdError as exc:
                    raise ConsentError(f"line {line}: {exc}") from None
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

"""`verify_registry`: a node's consent history is hash-chained and fixed by the heads it committed;
each way of rewriting the registry is refused by name, and erasure keeps it verifiable."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from consortium.consent import (
    ConsentError,
    ConsentRegistry,
    RoundCommitment,
    begin_round,
    erase_subject,
    verify_registry,
)
from consortium.consent.commitments import commit, round_leaves
from consortium.consent.history import EMPTY_CHAIN, blind, chain_step, event_digest, round_head
from consortium.consent.record_ids import decode_ids, encode_ids

P = "research"
Committed = dict[int, RoundCommitment]


def _registry(path: Path) -> Committed:
    """A history with every kind of event, three committed rounds and one later event."""
    with ConsentRegistry(path) as reg:
        for s in range(6):
            reg.grant(f"s{s}", [2 * s, 2 * s + 1], [P], at=1.0)  # events 1..12
        committed = {1: begin_round(reg, P, 1, at=10.0).commitment}
        reg.withdraw("s1", at=20.0)  # events 13, 14 (records 2, 3)
        reg.set_expiry("s2", None, 1000.0, at=21.0)  # events 15, 16
        committed[2] = begin_round(reg, P, 2, at=30.0).commitment
        erase_subject(reg, "s3", at=40.0)  # events 17, 18 (records 6, 7): salts shredded
        committed[3] = begin_round(reg, P, 3, at=50.0).commitment
        reg.grant("late", [20], [P], at=60.0)  # event 19: after the last committed round
    return committed


def _sql(*statements: str) -> Callable[[sqlite3.Connection], None]:
    def run(db: sqlite3.Connection) -> None:
        for s in statements:
            db.execute(s)

    return run


def _rechain(db: sqlite3.Connection, heads: bool = False) -> None:
    """What someone holding the file (and so the salts) can do: renumber the events and
    recompute every blind and the whole chain; with `heads`, every stored round head too."""
    rows = db.execute(
        "SELECT seq, at, kind, subject, record_id, purpose, expires, blind FROM events ORDER BY seq"
    ).fetchall()
    salts = dict(db.execute("SELECT record_id, salt FROM salts").fetchall())
    db.execute("DELETE FROM events")
    chain, chains = EMPTY_CHAIN, [EMPTY_CHAIN]
    for n, (_, at, kind, subject, rid, purpose, expires, old) in enumerate(rows, 1):
        b = blind(salts[rid], rid, subject) if rid in salts else old
        chain = chain_step(chain, event_digest(n, kind, at, purpose, expires, b))
        chains.append(chain)
        db.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
            (n, at, kind, subject, rid, purpose, expires, b, chain),
        )
    if heads:
        for slot, at, k in db.execute("SELECT round, at, events FROM rounds").fetchall():
            k = min(k, len(rows))
            db.execute(
                "UPDATE rounds SET events = ?, head = ? WHERE round = ?",
                (k, round_head(chains[k], k, at), slot),
            )


def _edit(path: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    """Apply `change` with the append-only triggers set aside, then restored verbatim."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA ignore_check_constraints=ON")  # an editor need not respect them either
    triggers = [s for (s,) in db.execute("SELECT sql FROM sqlite_master WHERE type='trigger'")]
    db.execute("BEGIN")
    db.execute("DROP TRIGGER events_no_update")
    db.execute("DROP TRIGGER events_no_delete")
    change(db)
    for sql in triggers:
        db.execute(sql)
    db.execute("COMMIT")
    db.close()


def _ids(db: sqlite3.Connection, slot: int) -> list[str]:
    (blob,) = db.execute("SELECT ids FROM rounds WHERE round = ?", (slot,)).fetchone()
    return decode_ids(blob)


def _set_ids(slot: int, change: Callable[[list[str]], list[str]]) -> Callable[..., None]:
    def run(db: sqlite3.Connection) -> None:
        blob = encode_ids(change(_ids(db, slot)))
        db.execute("UPDATE rounds SET ids = ? WHERE round = ?", (blob, slot))

    return run


#: Record 2's grant (event 3) moved earlier, in the history and the state alike.
EARLIER_GRANT = _sql(
    "UPDATE events SET at = 0.5 WHERE seq = 3",
    "UPDATE consent SET granted = 0.5 WHERE record_id = 2",
)

CASES: dict[str, tuple[Callable[[sqlite3.Connection], None], str]] = {
    "event deleted": (_sql("DELETE FROM events WHERE seq = 5"), r"^event 5 is missing"),
    "event time rewritten": (
        _sql("UPDATE events SET at = at + 1 WHERE seq = 3"),
        r"^event 3: the history chain breaks here",
    ),
    "event given to another subject": (
        _sql("UPDATE events SET subject = 'mallory' WHERE seq = 2"),
        r"^event 2: its subject or record does not match its salted blind",
    ),
    "event subject not UTF-8": (
        _sql("UPDATE events SET subject = CAST(x'73ff' AS TEXT) WHERE seq = 2"),
        r"^event 2: its subject or record does not match its salted blind",
    ),
    "erased record's event given to another subject": (
        _sql("UPDATE events SET subject = 'mallory' WHERE seq = 18"),
        r"^event 18 gives record 7 another subject",
    ),
    "salt of a live record deleted": (
        _sql("DELETE FROM salts WHERE record_id = 0"),
        r"^event 1: its record has no salt, yet is not erased",
    ),
    "salt of an unknown record": (
        _sql("INSERT INTO salts VALUES (999, zeroblob(32))"),
        r"^a salt is stored for record 999, which is unknown",
    ),
    "salt malformed": (
        _sql("UPDATE salts SET salt = x'00' WHERE record_id = 0"),
        r"^malformed salt row for record '0'",
    ),
    "erasure time malformed": (
        _sql("UPDATE records SET erased = 'x' WHERE record_id = 6"),
        r"^record 6: malformed erasure time",
    ),
    "event malformed": (
        _sql("UPDATE events SET at = 'soon' WHERE seq = 4"),
        r"^event 4: malformed",
    ),
    "state rewritten": (
        _sql("UPDATE consent SET granted = 0 WHERE record_id = 0"),
        r"^the consent state of record 0 \(research\) does not match its history",
    ),
    "event rewritten and the chain recomputed": (
        lambda db: (EARLIER_GRANT(db), _rechain(db)),
        r"^round at ledger entry 1 \('research'\): its head does not match events 1\.\.12",
    ),
    "event rewritten, chain and round heads recomputed": (
        lambda db: (EARLIER_GRANT(db), _rechain(db, heads=True)),
        r"^round at ledger entry 1: the stored commitment differs from the one on the ledger",
    ),
    "grant deleted, chain and round heads recomputed": (
        lambda db: (_sql("DELETE FROM events WHERE seq = 3")(db), _rechain(db, heads=True)),
        r"^event 12 changes consent that was never granted",
    ),
    "round names a record it did not commit to": (
        _set_ids(2, lambda ids: sorted([*ids, "2"])),
        r"^round at ledger entry 2 .*: it names a record its leaves do not commit to",
    ),
    "round lists its records out of order": (
        _set_ids(1, lambda ids: ids[::-1]),
        r"^round at ledger entry 1 .*: its record list: .* not sorted and distinct",
    ),
    "round forgets a record it used": (
        _set_ids(1, lambda ids: ids[1:]),
        r"^round at ledger entry 1 .*: it names fewer records than it committed to",
    ),
    "round leaves out of order": (
        _sql("UPDATE rounds SET leaves = zeroblob(length(leaves)) WHERE round = 1"),
        r"^round at ledger entry 1 .*: its leaves: leaf commitments must be sorted and distinct",
    ),
    "round leaf replaced": (
        _sql(
            "UPDATE rounds SET leaves = "
            f"CAST(substr(leaves, 1, 352) || x'{'ff' * 32}' AS BLOB) WHERE round = 1"
        ),
        r"^round at ledger entry 1 .*: its leaves do not hash to its root",
    ),
    "round saw more events than there are": (
        _sql("UPDATE rounds SET events = 999 WHERE round = 1"),
        r"^round at ledger entry 1 .*: it saw 999 events, the history has 19",
    ),
    "round start time changed": (
        _sql("UPDATE rounds SET at = 11.0 WHERE round = 1"),
        r"^round at ledger entry 1 .*: its head does not match events 1\.\.12",
    ),
    "round purpose not a name": (
        _sql("UPDATE rounds SET purpose = 're search' WHERE round = 1"),
        r"^round at ledger entry 1 .*: invalid purpose",
    ),
    "round malformed": (
        _sql("UPDATE rounds SET count = 'x' WHERE round = 1"),
        r"^round at ledger entry 1 .*: malformed",
    ),
    "round deleted": (
        _sql("DELETE FROM rounds WHERE round = 2"),
        r"^round at ledger entry 2: the registry holds no record of the consent commitment",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rewrite_of_the_registry_is_refused_by_name(tmp_path: Path, case: str) -> None:
    path = tmp_path / "consent.sqlite"
    committed = _registry(path)
    with ConsentRegistry(path, readonly=True) as reg:
        verify_registry(reg, committed)  # an erased subject's events still verify
    change, refusal = CASES[case]
    _edit(path, change)
    with ConsentRegistry(path, readonly=True) as reg, pytest.raises(ConsentError, match=refusal):
        verify_registry(reg, committed)


def test_a_round_that_used_a_record_without_consent_is_refused(tmp_path: Path) -> None:
    """A node that stores a consistent round (leaves, root, head) over a withdrawn record."""
    path = tmp_path / "consent.sqlite"
    committed = _registry(path)
    with ConsentRegistry(path) as reg:
        used = np.array(["0", "1", "2"])  # record 2 was withdrawn at 20.0
        leaves = round_leaves(reg.salts(used.tolist()), used.tolist(), P, 4)
        k = 16  # the events a round at 25.0 saw
        chain = reg.raw_rows("events")[k - 1][8]
        rc = commit(leaves, P, round_head(chain, k, 25.0))
        reg.store_round(4, P, 25.0, rc.root, leaves, used, k, rc.head)
    refusal = r"entry 4 .*consent did not cover it at its start"
    with ConsentRegistry(path, readonly=True) as reg, pytest.raises(ConsentError, match=refusal):
        verify_registry(reg, {**committed, 4: rc})


def test_events_after_the_last_committed_round_rest_on_the_chain_alone(tmp_path: Path) -> None:
    """The limit: whoever holds the file holds the salts, so an event no round has committed
    yet can be rewritten with the chain recomputed; it fails as soon as a round commits it."""
    path = tmp_path / "consent.sqlite"
    committed = _registry(path)
    later = _sql(
        "UPDATE events SET at = 61.0 WHERE seq = 19",
        "UPDATE consent SET granted = 61.0 WHERE record_id = 20",
    )
    _edit(path, lambda db: (later(db), _rechain(db)))
    with ConsentRegistry(path, readonly=True) as reg:
        verify_registry(reg, committed)


def test_an_erasure_that_kept_the_salt_is_refused(tmp_path: Path) -> None:
    """Erasure is crypto-shredding: a registry that says a record is erased but still holds its
    salt (so its commitments can still be linked to it) has not erased anything."""
    path = tmp_path / "consent.sqlite"
    with ConsentRegistry(path) as reg:
        reg.grant("s", [6], [P], at=1.0)
        kept = reg.salts(["6"])["6"]
        committed = {1: begin_round(reg, P, 1, at=10.0).commitment}
        erase_subject(reg, "s", at=20.0)
    with ConsentRegistry(path, readonly=True) as reg:
        verify_registry(reg, committed)
    _edit(path, lambda db: db.execute("INSERT INTO salts VALUES (6, ?)", (kept,)))
    refusal = r"^record 6 is erased, yet its salt was not shredded"
    with ConsentRegistry(path, readonly=True) as reg, pytest.raises(ConsentError, match=refusal):
        verify_registry(reg, committed)

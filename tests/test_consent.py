"""Consent registry, per-round commitments, receipts, erasure and the report."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from consortium.consent import (
    ConsentError,
    ConsentRegistry,
    GrantRow,
    Receipt,
    RoundCommitment,
    begin_round,
    build_receipt,
    build_report,
    check_receipt,
    commit,
    commitment,
    erase_subject,
    plan_retrain,
    receipt_from_registry,
    roots_from_records,
    round_leaves,
    verify_registry,
)
from consortium.consent.commitments import Neighbour, RoundProof
from consortium.consent.erasure import rounds_using
from consortium.core.encoding import decode, encode, sha256
from consortium.ledger import merkle
from tests.records import round_body

P = "research"
NODE = "bafzbeigai3eoy2ccc7ybwjfz5r3rdxqrinwi4rwytly24tdbh6yk7zslrm"


@pytest.fixture
def reg(tmp_path: Path) -> ConsentRegistry:
    return ConsentRegistry(tmp_path / "consent.sqlite")


def ids(a: np.ndarray) -> list[int]:
    return [int(x) for x in a]


# -- registry -------------------------------------------------------------------------------------


def test_grant_expiry_and_withdrawal_take_effect_at_the_next_at(reg: ConsentRegistry) -> None:
    reg.grant("alice", [0, 1], [P, "ads"], at=10.0)
    reg.grant("bob", [2], [P], expires=50.0, at=20.0)
    assert ids(reg.eligible(P, 9.0)) == []
    assert ids(reg.eligible(P, 10.0)) == [0, 1]
    assert ids(reg.eligible(P, 20.0)) == [0, 1, 2]
    assert ids(reg.eligible(P, 49.9)) == [0, 1, 2]
    assert ids(reg.eligible(P, 50.0)) == [0, 1]  # expired exactly at `expires`
    reg.withdraw("alice", [P], at=30.0)
    # a round that started before the withdrawal still used the records; the next one does not
    assert ids(reg.eligible(P, 29.9)) == [0, 1, 2]
    assert ids(reg.eligible(P, 30.0)) == [2]
    assert ids(reg.eligible("ads", 30.0)) == [0, 1]  # other purposes untouched
    reg.withdraw("alice", at=31.0)
    assert ids(reg.eligible("ads", 31.0)) == []
    with pytest.raises(ConsentError, match="no consent to withdraw"):
        reg.withdraw("alice", at=32.0)
    with pytest.raises(ConsentError, match="unknown subject"):
        reg.withdraw("carol", at=32.0)
    # renewal after withdrawal counts from the new grant only
    reg.grant("alice", [0], [P], at=40.0)
    assert ids(reg.eligible(P, 40.0)) == [0, 2]
    reg.set_expiry("bob", None, 45.0, at=41.0)
    assert ids(reg.eligible(P, 45.0)) == [0]
    reg.verify_state()


def test_grant_refusals(reg: ConsentRegistry) -> None:
    reg.grant("alice", [0], [P], at=1.0)
    with pytest.raises(ConsentError, match="another subject"):
        reg.grant("bob", [0], [P], at=2.0)
    with pytest.raises(ConsentError, match="invalid purpose"):
        reg.grant("bob", [1], ["bad;purpose"], at=2.0)
    with pytest.raises(ConsentError, match="invalid subject"):
        reg.grant("", [1], [P], at=2.0)
    with pytest.raises(ConsentError, match="expires is not after"):
        reg.grant("bob", [1], [P], expires=2.0, at=2.0)
    with pytest.raises(ConsentError, match="out of range"):
        reg.grant("bob", [-1], [P], at=2.0)
    with pytest.raises(ConsentError, match="contains a control character"):
        reg.grant("bob", ["p-1", "p\n2"], [P], at=2.0)
    with pytest.raises(ConsentError, match="begins or ends with whitespace"):
        reg.grant("bob", ["p-1 "], [P], at=2.0)
    assert reg.records_of("alice") == ["0"]
    with pytest.raises(ConsentError, match="unknown subject"):
        reg.records_of("bob")


def test_history_is_append_only(reg: ConsentRegistry) -> None:
    reg.grant("alice", [3], [P], at=1.0)
    reg.withdraw("alice", at=2.0)
    kinds = [(e.kind, e.record_id, e.purpose, e.at) for e in reg.history("alice")]
    assert kinds == [("grant", "3", P, 1.0), ("withdraw", "3", P, 2.0)]
    raw = sqlite3.connect(reg.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE events SET at=0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM events")
    raw.close()
    assert len(reg.history()) == 2


def test_verify_state_detects_a_state_that_disagrees_with_history(reg: ConsentRegistry) -> None:
    reg.grant("alice", [1], [P], at=1.0)
    raw = sqlite3.connect(reg.path)
    raw.execute("UPDATE consent SET withdrawn=NULL, granted=0")
    raw.commit()
    raw.close()
    with pytest.raises(ConsentError, match="does not match its history"):
        reg.verify_state()


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("subject,record_id,purposes,granted,expires\n" + "\n".join(rows) + "\n")
    return path


def test_import_is_all_or_nothing_and_names_the_line(reg: ConsentRegistry, tmp_path: Path) -> None:
    good = ["s1,0,research;ads,2024-01-01T00:00:00Z,", "s2,1,research,2024-01-01,2030-01-01"]
    bad = _write_csv(tmp_path / "bad.csv", [*good, "s3,a\tb,research,2024-01-01,"])
    with pytest.raises(ConsentError, match=r"line 4: record id .* contains a control character"):
        reg.import_csv(bad)
    assert reg.history() == []
    assert reg.state() == []
    # a row that only the database can refuse (record owned by someone else) also rolls back
    reg.grant("zed", [7], [P], at=0.0)
    clash = _write_csv(tmp_path / "clash.csv", [*good, "s3,7,research,2024-01-01,"])
    with pytest.raises(ConsentError, match="line 4: record 7 belongs to another subject"):
        reg.import_csv(clash)
    assert [s.subject for s in reg.state()] == ["zed"]
    with pytest.raises(ConsentError, match="line 3: invalid expires"):
        reg.import_csv(_write_csv(tmp_path / "t.csv", [good[0], "s2,1,research,2024-01-01,soon"]))
    with pytest.raises(ConsentError, match="missing column"):
        (tmp_path / "h.csv").write_text("subject,record_id\ns,1\n")
        reg.import_csv(tmp_path / "h.csv")

    assert reg.import_csv(_write_csv(tmp_path / "ok.csv", good)) == 3
    t = 1_750_000_000.0
    assert ids(reg.eligible(P, t)) == [0, 1, 7]
    assert ids(reg.eligible("ads", t)) == [0]


def test_export_import_round_trip(reg: ConsentRegistry, tmp_path: Path) -> None:
    reg.grant("a", [0, 1], [P, "ads"], expires=100.0, at=1.0)
    reg.grant("b", [2], [P], at=2.0)
    reg.grant("c", [3], [P], at=2.0)
    reg.withdraw("c", at=3.0)
    out = tmp_path / "out.csv"
    assert reg.export_csv(out) == 3
    other = ConsentRegistry(tmp_path / "other.sqlite")
    other.import_csv(out)
    for purpose in (P, "ads"):
        for at in (3.0, 50.0, 99.0, 100.0):  # export is the state from now on
            assert ids(other.eligible(purpose, at)) == ids(reg.eligible(purpose, at))


def test_eligible_matches_a_naive_loop_on_100k_records(reg: ConsentRegistry) -> None:
    n = 100_000
    rng = np.random.default_rng(1)
    granted = rng.uniform(0, 100, n)
    has_exp = rng.random(n) < 0.3
    expires = granted + rng.uniform(1, 100, n)
    purposes = [(P,), ("ads",), (P, "ads")]
    which = rng.integers(0, 3, n)
    rows = [
        GrantRow(
            f"s{i // 2}",  # two records per subject
            i,
            purposes[which[i]],
            float(granted[i]),
            float(expires[i]) if has_exp[i] else None,
        )
        for i in range(n)
    ]
    assert reg.grant_many(rows) == int(sum(len(purposes[w]) for w in which))
    with_p = sorted({i // 2 for i in range(n) if P in purposes[which[i]]})
    for s in rng.choice(with_p, 300, replace=False):
        reg.withdraw(f"s{s}", [P], at=float(rng.uniform(50, 150)))
    state = reg.state(purpose=P)
    for at in (0.0, 25.0, 75.0, 120.0, 250.0):
        got = reg.eligible(P, at)
        naive = sorted(s.record_id for s in state if s.active(at))
        assert got.dtype.kind == "U"  # record ids are text, sorted as text
        assert got.tolist() == naive
    assert 0 < len(reg.eligible(P, 75.0)) < n


# -- commitments and receipts ----------------------------------------------------------------------


def _bodies(commitments: dict[int, RoundCommitment]) -> list[tuple[int, dict[str, object]]]:
    return [(r, {NODE: rc.to_body()}) for r, rc in commitments.items()]


def _run(reg: ConsentRegistry) -> dict[int, RoundCommitment]:
    """Three rounds; alice withdraws after round 1, dave expires after round 2."""
    for i in range(12):
        reg.grant(f"s{i}", [i], [P], at=0.0)
    reg.grant("alice", [20, 21], [P], at=0.0)
    reg.grant("dave", [30], [P], expires=25.0, at=0.0)
    out = {1: begin_round(reg, P, 1, at=10.0).commitment}
    reg.withdraw("alice", at=15.0)
    out[2] = begin_round(reg, P, 2, at=20.0).commitment
    out[3] = begin_round(reg, P, 3, at=30.0).commitment
    return out


def test_begin_round_selects_commits_and_remembers(reg: ConsentRegistry) -> None:
    published = _run(reg)
    assert [published[r].count for r in (1, 2, 3)] == [15, 13, 12]
    sel = begin_round(reg, P, 3, at=30.0)  # a retried attempt: same selection, same root
    assert sel.commitment == published[3]
    assert 20 not in ids(sel.record_ids) and 30 not in ids(sel.record_ids)
    # the root is the RFC 9162 root over the sorted salted commitments
    chosen = sel.record_ids.tolist()
    leaves = round_leaves(reg.salts(chosen), chosen, P, 3)
    assert leaves == reg.round_leaves(3, P)
    assert published[3].root == merkle.root_from_leaf_hashes([merkle.leaf_hash(c) for c in leaves])
    reg.grant("late", [99], [P], at=31.0)
    again = begin_round(reg, P, 3, at=32.0)  # a later attempt of round 3 keeps its selection
    assert again.at == 30.0 and 99 not in ids(again.record_ids)
    assert again.commitment == published[3]
    with pytest.raises(ConsentError, match="already has a different commitment"):
        reg.store_round(3, P, 33.0, bytes(32), [], np.array([], dtype=np.int64), 0, bytes(32))
    erase_subject(reg, "s5", at=34.0)
    after = begin_round(reg, P, 3, at=35.0)
    assert 5 not in ids(after.record_ids) and after.commitment == published[3]
    assert len(after.record_ids) == published[3].count - 1


def test_withdrawn_and_expired_records_are_never_committed(reg: ConsentRegistry) -> None:
    rng = np.random.default_rng(7)
    n = 200
    for i in range(n):
        exp = float(rng.uniform(5, 60)) if i % 5 == 0 else None
        reg.grant(f"s{i}", [i], [P], expires=exp, at=0.0)
    salts = reg.salts(range(n))
    gone: set[int] = set()
    for rnd in range(1, 8):
        at = rnd * 10.0
        for s in rng.choice(n, 10, replace=False):
            if int(s) not in gone:
                reg.withdraw(f"s{s}", at=at - 5.0)  # mid-round: effective next round
                gone.add(int(s))
        sel = begin_round(reg, P, rnd, at=at)
        expires = {int(s.record_id): s.expires for s in reg.state() if s.expires is not None}
        expired = {i for i, t in expires.items() if t <= at}
        used = set(ids(sel.record_ids))
        assert used == set(range(n)) - gone - expired
        leaves = set(reg.round_leaves(rnd, P))
        assert all(commitment(salts[str(i)], i, P, rnd) not in leaves for i in gone | expired)
        assert sel.commitment.count == len(used)


def test_receipt_check_round_trip(reg: ConsentRegistry) -> None:
    published = _run(reg)
    roots = roots_from_records(_bodies(published), NODE)
    assert roots == published

    rec = Receipt.loads(receipt_from_registry(reg, "alice", NODE).dumps())
    verdicts = check_receipt(rec, roots)
    got = {(v.round, v.record_id): v.status for v in verdicts}
    assert got == {
        (1, "20"): "used",
        (1, "21"): "used",
        (2, "20"): "not-used",
        (2, "21"): "not-used",
        (3, "20"): "not-used",
        (3, "21"): "not-used",
    }
    dave = check_receipt(receipt_from_registry(reg, "dave", NODE), roots)
    assert [v.status for v in dave] == ["used", "used", "not-used"]
    # a round published after the receipt was made is flagged, not silently passed
    later = {**roots, 4: commit([], P, bytes(32))}
    assert check_receipt(rec, later)[-1].status == "no-proof"
    assert [v.status for v in check_receipt(rec, {1: roots[1]})][-1] == "missing"


def test_tampered_roots_and_proofs_fail(reg: ConsentRegistry) -> None:
    published = _run(reg)
    rec = receipt_from_registry(reg, "alice", NODE)
    evil = dict(published)
    evil[1] = RoundCommitment(bytes(32), published[1].count, P, published[1].head)
    evil[2] = RoundCommitment(bytes(32), published[2].count, P, published[2].head)
    statuses = {(v.round, v.status) for v in check_receipt(rec, evil)}
    assert (1, "invalid") in statuses and (2, "invalid") in statuses
    assert (3, "not-used") in statuses
    wrong_count = {1: RoundCommitment(published[1].root, 14, P, published[1].head)}
    assert check_receipt(rec, wrong_count)[0].status == "invalid"
    wrong_purpose = {1: RoundCommitment(published[1].root, 15, "ads", published[1].head)}
    assert check_receipt(rec, wrong_purpose)[0].status == "invalid"

    # a node that used the record but claims it did not: the neighbours around it are not adjacent
    leaves = reg.round_leaves(1, P)
    mine = commitment(rec.salts["20"], "20", P, 1)
    pos = leaves.index(mine)
    lie_nbrs = [
        Neighbour(i, leaves[i], _proof_of(leaves, i))
        for i in (pos - 1, pos + 1)
        if 0 <= i < len(leaves)
    ]
    lie = RoundProof(1, P, "20", len(leaves), used=False, neighbours=lie_nbrs)
    forged = Receipt("alice", NODE, rec.salts, [lie])
    assert check_receipt(forged, {1: published[1]})[0].status == "invalid"


def _proof_of(leaves: list[bytes], i: int) -> list[bytes]:
    hashes = [merkle.leaf_hash(c) for c in leaves]

    def get(level: int, idx: int) -> bytes:
        return merkle.root_from_leaf_hashes(hashes[idx << level : (idx + 1) << level])

    return merkle.inclusion_proof(i, len(leaves), get)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 16])
def test_absence_proofs_at_every_position(size: int) -> None:
    rng = np.random.default_rng(size)
    salts = {str(i): rng.bytes(32) for i in range(size + 40)}
    used = [str(i) for i in range(size)]
    leaves = round_leaves(salts, used, P, 5)
    rc = commit(leaves, P, bytes(32))
    rec = build_receipt("x", salts, [(5, P, leaves)])
    verdicts = check_receipt(rec, {5: rc})
    assert all(v.status == ("used" if v.record_id in used else "not-used") for v in verdicts)
    assert len(verdicts) == size + 40  # 40 absent commitments land below, between and above


def test_receipt_json_refuses_garbage() -> None:
    with pytest.raises(ConsentError, match="not JSON"):
        Receipt.loads("{")
    with pytest.raises(ConsentError, match="malformed receipt"):
        Receipt.loads('{"format": "consortium-consent-receipt/1", "salts": 3}')
    with pytest.raises(ConsentError, match="root must be 32 bytes"):
        roots_from_records(
            [(1, {NODE: {"root": b"x", "count": 1, "purpose": P, "head": bytes(32)}})], NODE
        )
    with pytest.raises(ConsentError, match="head must be 32 bytes"):
        roots_from_records(
            [(1, {NODE: {"root": bytes(32), "count": 1, "purpose": P, "head": b"x"}})], NODE
        )
    with pytest.raises(ConsentError, match="with root, count, purpose and head"):
        roots_from_records([(1, {NODE: {"root": bytes(32), "count": 1, "purpose": P}})], NODE)
    assert roots_from_records([(1, {"other": {}})], NODE) == {}


def _leaves(obj: object) -> tuple[list[str], list[bytes]]:
    """Every text (values and map keys) and every byte string inside a decoded object."""
    texts: list[str] = []
    raw: list[bytes] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, bytes):
            raw.append(item)
        elif isinstance(item, dict):
            texts.extend(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return texts, raw


def test_no_identifier_in_published_commitments(reg: ConsentRegistry) -> None:
    published = _run(reg)
    subjects = [f"s{i}" for i in range(12)] + ["alice", "dave"]
    blobs = [encode(rc.to_body()) for rc in published.values()]
    blobs.append(encode([round_body(NODE, r, c.to_body()) for r, c in published.items()]))
    blobs.append(encode(erase_subject(reg, "alice", at=40.0).ledger_body()))
    for blob in blobs:
        # Only fixed-size hashes and known words may be published: no text names anyone, and
        # every byte string is a 32-byte hash (searching random hash bytes for a 2-letter name
        # would match by chance about once in 500 runs).
        texts, raw = _leaves(decode(blob))
        assert not [t for t in texts for s in subjects if s in t], texts
        assert all(len(b) == 32 for b in raw)
    for rc in published.values():
        assert set(rc.to_body()) == {"root", "count", "purpose", "head"}


# -- erasure ---------------------------------------------------------------------------------------


def test_erasure_shreds_salts_and_unlinks_old_commitments(reg: ConsentRegistry) -> None:
    published = _run(reg)
    alice_salts = reg.salts(["20", "21"])
    assert rounds_using(reg, "alice") == [(1, P)]
    er = erase_subject(reg, "alice", at=40.0)
    assert er.record_ids == ["20", "21"]
    assert er.first_used_round == 1
    plan = plan_retrain(er, 3)
    assert (plan.from_checkpoint, plan.rounds, plan.needed) == (0, 3, True)

    with pytest.raises(ConsentError, match="no salt"):
        receipt_from_registry(reg, "alice", NODE)
    with pytest.raises(ConsentError, match="erased"):
        reg.grant("alice", [20], [P], at=41.0)
    assert 20 not in ids(reg.eligible(P, 41.0))
    with pytest.raises(ConsentError, match="already erased"):
        reg.erase("alice", at=42.0)

    # brute force: every remaining salt (and a zero salt) against every record id explains every
    # leaf of round 1 except alice's two; those can no longer be linked to any record
    leaves = set(reg.round_leaves(1, P))
    remaining = reg.salts(r for s in reg.state() if s.erased is None for r in [s.record_id])
    guesses = [*remaining.values(), bytes(32)]
    explained = {commitment(s, r, P, 1) for s in guesses for r in range(40)}
    assert len(leaves - explained) == 2
    assert published[1].count == len(leaves)

    # crypto-shredding reaches the files: the salt bytes are gone from the database and its WAL
    reg.close()
    raw = b"".join(
        p.read_bytes() for p in reg.path.parent.iterdir() if p.name.startswith("consent.sqlite")
    )
    assert raw  # the files exist
    for salt in alice_salts.values():
        assert salt not in raw
    survivor = remaining["0"]
    assert survivor in raw  # the search above can find salts that were not shredded


def test_plan_retrain_for_unused_subject(reg: ConsentRegistry) -> None:
    reg.grant("ghost", [50], [P], at=100.0)  # granted after every round
    _run(reg)
    er = erase_subject(reg, "ghost", at=101.0)
    assert er.used_rounds == [] and er.first_used_round is None
    assert not plan_retrain(er, 3).needed


# -- report ----------------------------------------------------------------------------------------


def test_report_counts_and_effective_rounds(reg: ConsentRegistry) -> None:
    _run(reg)
    erase_subject(reg, "s3", at=35.0)
    begin_round(reg, P, 4, at=40.0)
    rep = build_report(reg, P)
    assert [(r.round, r.records) for r in rep.rounds] == [(1, 15), (2, 13), (3, 12), (4, 11)]
    changes = [(c.kind, c.records, c.effective_round) for c in rep.changes]
    assert changes == [("withdraw", 2, 2), ("expire", 1, 3), ("erase", 1, 4)]
    assert all(c.subject is None for c in rep.changes)
    named = build_report(reg, P, with_subjects=True)
    assert [c.subject for c in named.changes] == ["alice", "dave", "s3"]
    reg.withdraw("s4", at=50.0)
    assert build_report(reg, P).changes[-1].effective_round is None  # pending: no round since


def test_a_change_takes_effect_at_the_first_round_that_saw_it(reg: ConsentRegistry) -> None:
    """A withdrawal is stamped before it commits; a round selected meanwhile, from a history
    without it, starts after its time yet used the record. The report names the round that saw
    it, as the round heads on the ledger do."""
    reg.grant("alice", [1], [P], at=0.0)
    reg.grant("bob", [2], [P], at=0.0)
    first = begin_round(reg, P, 1, at=10.0)  # selected without the withdrawal below
    reg.withdraw("alice", at=9.0)  # stamped 9.0, committed after round 1's selection
    second = begin_round(reg, P, 2, at=20.0)
    assert (first.commitment.count, second.commitment.count) == (2, 1)
    change = build_report(reg, P).changes[0]
    assert (change.kind, change.at, change.effective_round) == ("withdraw", 9.0, 2)


# -- text record ids -------------------------------------------------------------------------------


def test_a_numeric_record_id_commits_as_the_integer_and_text_ids_apart(tmp_path: Path) -> None:
    """Numeric ids hash exactly as integer ids did (format 2's commitments stay valid); a text
    id has its own domain tag, so "017" and "17" are different records with different leaves."""
    salt = bytes(range(32))
    tag = b"consortium/v1/consent-leaf"
    as_integer = sha256(
        bytes([len(tag)]) + tag + salt + (17).to_bytes(8, "big") + b"\x00\x08research"
        + (3).to_bytes(8, "big")
    )  # fmt: skip
    assert commitment(salt, "17", P, 3) == commitment(salt, 17, P, 3) == as_integer
    text = {commitment(salt, rid, P, 3) for rid in ("017", "17a", "p-17", "x" * 256)}
    assert len(text) == 4 and as_integer not in text


def test_text_record_ids_through_rounds_receipts_and_erasure(reg: ConsentRegistry) -> None:
    reg.grant("alice", ["MRN-0042", "scan/2024-07.png"], [P], at=0.0)
    reg.grant("bob", ["MRN-0043", "7"], [P], at=0.0)
    first = begin_round(reg, P, 1, at=10.0)
    assert first.record_ids.tolist() == ["7", "MRN-0042", "MRN-0043", "scan/2024-07.png"]
    reg.withdraw("bob", at=15.0)
    second = begin_round(reg, P, 2, at=20.0)
    assert second.commitment.count == first.commitment.count - 2
    roots = {1: first.commitment, 2: second.commitment}
    receipt = Receipt.loads(receipt_from_registry(reg, "bob", NODE).dumps())
    assert set(receipt.salts) == {"7", "MRN-0043"}
    assert [(v.round, v.record_id, v.status) for v in check_receipt(receipt, roots)] == [
        (1, "7", "used"),
        (1, "MRN-0043", "used"),
        (2, "7", "not-used"),
        (2, "MRN-0043", "not-used"),
    ]
    er = erase_subject(reg, "alice", at=30.0)
    assert er.record_ids == ["MRN-0042", "scan/2024-07.png"] and er.first_used_round == 1
    assert begin_round(reg, P, 3, at=40.0).record_ids.tolist() == []
    verify_registry(reg, roots)

"""Committees (issue 15): each round's contributors are K members drawn from its beacon, every
member still checks and cosigns, and a record whose contributors are not the beacon's committee
is refused by name (docs/architecture.md, "Committees")."""

from __future__ import annotations

from dataclasses import replace

from consortium.core.genesis import Genesis
from consortium.ledger.entries import Entry, make_record
from consortium.node.config import RunConfig, consortium_refusals
from consortium.privacy.config import PrivacyConfig
from consortium.protocol.committee import committee_for
from consortium.protocol.messages import Message, Proposal, Propose, Update, Vote
from consortium.protocol.record import RoundRecord
from consortium.protocol.round import Note, Train
from tests.machines import Wire, cid_of, consortium, fedavg, model

N, K = 7, 4


def _committee(wire: Wire) -> list[str]:
    value = next(iter(wire.machines.values())).beacon
    assert value is not None
    return committee_for(value, sorted(wire.machines), K)


def _record(wire: Wire, nid: str) -> RoundRecord:
    return RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(nid)))


def test_only_the_beacons_committee_trains_and_contributes_and_every_member_cosigns() -> None:
    wire = Wire.build(N, committee=K)
    wire.begin()
    wire.settle()
    committee = _committee(wire)
    assert len({wire.entry_bytes(n) for n in wire.machines}) == 1  # every member committed it
    record = _record(wire, committee[0])
    assert record.participants == tuple(committee) and record.dropouts == ()
    assert record.committee == K and record.leader in committee
    assert {n for n, a in wire.trace if isinstance(a, Train)} == set(committee)
    votes = wire.committed[record.leader][-1].cosignatures
    assert len(votes) >= wire.genesis.quorum > K  # members outside the committee cosigned
    assert set(votes) - set(committee)


def test_a_secure_round_runs_secagg_among_the_committee_sized_for_it() -> None:
    wire = Wire.build(N, secure=True, committee=5, corrupt_fraction=0.1)
    wire.begin()
    wire.settle()
    value = next(iter(wire.machines.values())).beacon
    assert value is not None
    committee = committee_for(value, sorted(wire.machines), 5)
    record = _record(wire, committee[0])
    assert record.secagg is not None and record.committee == 5
    assert list(record.participants) == committee
    assert sorted(record.secagg.params["participants"]) == committee


def _forge(
    wire: Wire, honest: Proposal, participants: list[str], committee: int, everyone: bool
) -> Proposal:
    """The leader's own record, re-made over `participants` (model recomputed to match, with an
    update of its choosing for anyone whose update it does not hold; dropouts the rest of the
    beacon's committee, or with `everyone` every other member), stating a committee of
    `committee`, and re-signed."""
    record = RoundRecord.from_entry(Entry.from_bytes(honest.entry))
    parts = sorted(participants)
    forged_model = fedavg([(p, 10, model([0.5] * 8)) for p in parts])
    forged = replace(
        record,
        participants=tuple(parts),
        dropouts=tuple(
            m for m in (sorted(wire.machines) if everyone else _committee(wire)) if m not in parts
        ),
        samples={p: 10 for p in parts},
        updates={p: bytes(32) for p in parts},
        metrics={p: {} for p in parts},
        model=cid_of(forged_model),
        committee=committee,
    )
    ident = next(i for i in wire.ids if i.node_id == record.leader)
    entry = make_record(ident, "round", forged.to_body(), honest.time, wire.genesis).to_bytes()
    root = wire.frontier.append(entry).root()
    return Proposal(entry, honest.size, root, honest.time, forged_model)


def _refused_by_every_honest_member(
    wire: Wire, participants_of: object, committee: int, everyone: bool = False
) -> None:
    forged_roots: set[bytes] = set()

    def dishonest(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if not isinstance(msg, Propose) or msg.attempt != 0:
            return [(to, msg)]
        parts = participants_of(msg.proposal)  # type: ignore[operator]
        p = _forge(wire, msg.proposal, parts, committee, everyone)
        forged_roots.add(p.root)
        return [(to, replace(msg, proposal=p))]

    wire.filter = dishonest
    wire.begin()
    wire.run()
    leader = next(iter(wire.machines.values())).leader(0)
    for nid in wire.machines:
        if nid == leader:
            continue
        notes = wire.notes.get(nid, [])
        assert any("rule participants-not-committee" in t for t in notes), (nid, notes)
    votes = [
        a.message
        for n, a in wire.trace
        if n != leader and hasattr(a, "message") and isinstance(a.message, Vote)
    ]
    assert forged_roots and not any(v.root in forged_roots for v in votes)
    assert not wire.committed


def test_a_leader_that_swaps_a_member_outside_the_committee_in_is_refused() -> None:
    wire = Wire.build(N, committee=K)

    def swap(p: Proposal) -> list[str]:
        record = RoundRecord.from_entry(Entry.from_bytes(p.entry))
        outsider = next(m for m in sorted(wire.machines) if m not in _committee(wire))
        victim = next(m for m in record.participants if m != record.leader)
        return [m for m in record.participants if m != victim] + [outsider]

    _refused_by_every_honest_member(wire, swap, K)


def test_a_leader_that_drops_the_committee_section_for_its_colluders_is_refused() -> None:
    wire = Wire.build(N, committee=K)

    def colluders(p: Proposal) -> list[str]:
        record = RoundRecord.from_entry(Entry.from_bytes(p.entry))
        outside = [m for m in sorted(wire.machines) if m not in _committee(wire)]
        return [record.leader, *outside[:2]]

    _refused_by_every_honest_member(wire, colluders, 0)


def test_a_record_that_misstates_the_committee_size_is_refused() -> None:
    wire = Wire.build(N, committee=K)

    def same(p: Proposal) -> list[str]:
        return list(RoundRecord.from_entry(Entry.from_bytes(p.entry)).participants)

    _refused_by_every_honest_member(wire, same, K + 1)


def test_a_record_whose_dropouts_are_members_outside_the_committee_is_refused() -> None:
    wire = Wire.build(N, committee=K)

    def fewer(p: Proposal) -> list[str]:
        record = RoundRecord.from_entry(Entry.from_bytes(p.entry))
        return [m for m in record.participants if m != record.participants[-1]]

    _refused_by_every_honest_member(wire, fewer, K, everyone=True)


def test_the_leader_refuses_an_update_from_outside_the_committee() -> None:
    wire = Wire.build(N, committee=K)
    wire.begin()
    committee = _committee(wire)
    leader = next(iter(wire.machines.values())).leader(0)
    sent = next(
        m for s, to, m in wire.queue if isinstance(m, Update) and to == leader and s != leader
    )
    outsider = next(m for m in sorted(wire.machines) if m not in committee)
    notes = wire.machines[leader].on_message(outsider, replace(sent, report=None), wire.now)
    assert any(
        isinstance(n, Note) and "rule participants-not-committee" in n.text for n in notes
    ), notes


def _genesis(n: int) -> Genesis:
    return consortium(n)[1]


def test_committee_size_keeps_run_ids_at_its_default_and_is_refused_when_it_does_not_fit() -> None:
    base = RunConfig(task="x:y", task_hash="0" * 64, secagg_corrupt_fraction=0.1)
    assert "committee_size" not in base.body()
    assert base.model_copy(update={"committee_size": 0}).run_id() == base.run_id()
    run = base.model_copy(update={"committee_size": 4})
    assert run.body()["committee_size"] == 4 and run.run_id() != base.run_id()
    g = _genesis(N)
    assert consortium_refusals(run, g) == []
    too_big = base.model_copy(update={"committee_size": N})
    no_fraction = run.model_copy(update={"secagg_corrupt_fraction": None})
    dp = run.model_copy(update={"privacy": PrivacyConfig(unit="client", noise_multiplier=1.0)})
    thin = run.model_copy(update={"min_honest": 4})  # f = 1 of 4, + 4 honest > 4
    for bad, why in (
        (too_big, "between 4 and"),
        (thin, "cannot hold its SecAgg+ floor"),
        (no_fraction, "needs secagg_corrupt_fraction"),
        (dp, "differential privacy is not supported with committees"),
    ):
        (line,) = consortium_refusals(bad, g)
        assert why in line and "[rule committee-config]" in line


def test_a_dead_committee_leader_fails_over_to_the_next_committee_member() -> None:
    wire = Wire.build(N, committee=K)
    wire.begin()
    committee = _committee(wire)
    m = next(iter(wire.machines.values()))
    dead = m.leader(0)
    wire.down.add(dead)
    wire.settle()
    live = next(n for n in wire.machines if n != dead)
    record = _record(wire, live)
    assert record.attempt >= 1 and record.leader in committee and record.leader != dead
    assert record.participants == tuple(c for c in committee if c != dead)
    assert record.dropouts == (dead,)  # the rest of the committee; members outside are neither

"""Round machines wired together with no network, no torch and no wall clock (issue 10)."""

from __future__ import annotations

from dataclasses import replace

from consortium.core.encoding import Domain
from consortium.ledger.entries import Entry, make_record
from consortium.ledger.heads import TreeHead
from consortium.protocol.messages import (
    Commit,
    Message,
    Proposal,
    Propose,
    Update,
    Vote,
    VoteReport,
)
from consortium.protocol.record import RoundRecord
from consortium.protocol.round import (
    TRANSITIONS,
    CastVote,
    Committed,
    Event,
    PersistVote,
    Phase,
    Send,
)
from tests.machines import RUN, Wire, all_notes, cid_of, model


def test_three_machines_commit_one_round_and_persist_each_vote_before_sending_it() -> None:
    wire = Wire.build(3)
    wire.begin()
    wire.settle()
    entries = {wire.entry_bytes(n) for n in wire.machines}
    assert len(entries) == 1
    record = RoundRecord.from_entry(Entry.from_bytes(entries.pop()))
    assert record.participants == tuple(sorted(wire.machines)) and record.attempt == 0
    for nid, action in enumerate(wire.trace):
        if isinstance(action[1], Send) and isinstance(action[1].message, Vote):
            before = [a for n, a in wire.trace[:nid] if n == action[0]]
            assert isinstance(before[-1], PersistVote)  # durable, then sent
            assert before[-1].root == action[1].message.root


def test_a_secure_round_replays_exactly_from_a_seed() -> None:
    def once(seed: int) -> bytes:
        wire = Wire.build(4, secure=True, seed=seed)
        wire.begin()
        wire.settle()
        (committed,) = {wire.committed[n][-1].proposal.transcript for n in wire.machines}
        return committed

    assert once(1) == once(1)
    assert once(1) != once(2)  # masks and rounding come from the injected randomness


def _forged(wire: Wire, author: str, attempt: int, participants: tuple[str, ...]) -> Proposal:
    """A proposal `author` builds by hand: its own choice of participants and model."""
    m = wire.machines[author]
    evil = model([9] * 8)
    record = RoundRecord(
        run=RUN,
        round=1,
        attempt=attempt,
        leader=author,
        slot=1,
        participants=participants,
        dropouts=tuple(x for x in sorted(wire.machines) if x not in participants),
        samples={p: 10 for p in participants},
        updates={p: bytes(32) for p in participants},
        metrics={p: {} for p in participants},
        model=cid_of(evil),
        prev_model=cid_of(m.s.model),
        aggregation="fedavg",
        beacon=m.s.beacon.partials() if m.s.beacon is not None else (),
    )
    ident = next(i for i in wire.ids if i.node_id == author)
    entry = make_record(ident, "round", record.to_body(), 5, wire.genesis).to_bytes()
    f = wire.frontier
    return Proposal(entry, 2, f.append(entry).root(), 5, evil)


def test_a_member_leading_attempt_1_cannot_propose_during_attempt_0() -> None:
    wire = Wire.build(4)
    wire.begin()
    m0 = next(iter(wire.machines.values()))
    mallory = m0.leader(1)
    fake = (mallory, "fake-a", "fake-b")
    p = _forged(wire, mallory, 1, tuple(sorted(fake)))
    victim = next(n for n in wire.machines if n not in (mallory, m0.leader(0)))
    actions = wire.machines[victim].on_message(mallory, Propose(RUN, 1, 1, p), wire.now)
    assert not any(isinstance(a, Send) for a in actions)
    assert "rule attempt-not-current" in actions[0].text  # type: ignore[union-attr]


def test_fake_participants_are_refused_even_from_the_attempts_leader() -> None:
    wire = Wire.build(4)
    wire.begin()
    m0 = next(iter(wire.machines.values()))
    mallory = m0.leader(0)
    p = _forged(wire, mallory, 0, tuple(sorted((mallory, "fake-a", "fake-b"))))
    victim = next(n for n in wire.machines if n != mallory)
    actions = wire.machines[victim].on_message(mallory, Propose(RUN, 1, 0, p), wire.now)
    assert not any(isinstance(a, Send) for a in actions)
    assert "rule participants-not-members" in actions[0].text  # type: ignore[union-attr]


def test_a_commit_is_checked_again_unless_it_is_the_proposal_this_voter_checked() -> None:
    """A voter skips re-checking a commit of exactly the bytes it checked before cosigning; a
    commit of any other proposal, even with a quorum of valid cosignatures, is checked in full."""
    wire = Wire.build(4)
    wire.begin()
    wire.deliver(Update)
    wire.deliver(Propose)  # every voter checked the proposal; the votes stay queued
    m0 = next(iter(wire.machines.values()))
    leader = m0.leader(0)
    voter = next(n for n in wire.machines if n != leader)
    machine = wire.machines[voter]
    checked = machine.s.accepted
    assert checked is not None and machine.s.checked is not None
    forged = _forged(wire, leader, 0, tuple(sorted((leader, "fake-a", "fake-b"))))

    def cosigned(p: Proposal) -> dict[str, bytes]:
        head = TreeHead(p.size, p.root, p.time)
        return {i.node_id: head.sign(i, wire.genesis).signature for i in wire.ids}

    (note,) = machine.on_message(leader, Commit(RUN, 1, forged, cosigned(forged)), wire.now)
    assert "refused commit" in note.text  # type: ignore[union-attr]
    assert "rule participants-not-members" in note.text  # type: ignore[union-attr]
    assert machine.phase is not Phase.DONE
    actions = machine.on_message(leader, Commit(RUN, 1, checked, cosigned(checked)), wire.now)
    (done,) = [a for a in actions if isinstance(a, Committed)]
    assert done.entry == Entry.from_bytes(checked.entry) and machine.phase is Phase.DONE


def test_an_event_in_the_wrong_phase_is_refused_and_names_the_sender() -> None:
    wire = Wire.build(3)
    wire.begin()
    m0 = next(iter(wire.machines.values()))
    follower = next(n for n in wire.machines if n != m0.leader(0))
    machine = wire.machines[follower]
    assert machine.phase is Phase.AWAITING  # trained, update sent
    assert (Phase.AWAITING, Event.VOTE) not in TRANSITIONS
    vote = Vote(RUN, 1, 2, bytes(32), bytes(64))
    (note,) = machine.on_message(m0.leader(0), vote, wire.now)
    assert "refused vote from m" in note.text and "phase awaiting" in note.text  # type: ignore[union-attr]


def test_a_restarted_node_never_cosigns_a_second_head_of_one_size() -> None:
    wire = Wire.build(3)
    wire.begin()
    m0 = next(iter(wire.machines.values()))
    leader = m0.leader(0)
    victim = next(n for n in wire.machines if n != leader)
    # Before its restart the victim cosigned another head of size 2 in this attempt.
    restarted = Wire.build(3, votes={victim: {2: CastVote(b"\x01" * 32, 0)}})
    restarted.begin()
    restarted.run()
    notes = restarted.notes.get(victim, [])
    assert any("refused to cosign a second head of size 2" in t for t in notes), notes
    sent = [a for n, a in restarted.trace if n == victim and isinstance(a, Send)]
    assert not any(isinstance(a.message, Vote) for a in sent)


def _split(wire: Wire, halves: tuple[set[str], set[str]]) -> None:
    """The leader of attempt 0 shows one proposal to one half and another to the other half."""
    leader = next(iter(wire.machines.values())).leader(0)
    alt: dict[bytes, Proposal] = {}

    def split(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender != leader or not isinstance(msg, Propose) or msg.attempt != 0:
            return [(to, msg)]
        if to in halves[1]:
            p = msg.proposal
            if p.root not in alt:  # the same record, signed at another time: another head
                entry = Entry.from_bytes(p.entry)
                ident = next(i for i in wire.ids if i.node_id == leader)
                data = make_record(
                    ident, "round", entry.body, entry.time + 1, wire.genesis
                ).to_bytes()
                root = wire.frontier.append(data).root()
                alt[p.root] = replace(p, entry=data, root=root, time=p.time + 1)
            return [(to, replace(msg, proposal=alt[p.root]))]
        return [(to, msg)]

    wire.filter = split


def test_a_split_vote_by_an_equivocating_leader_completes_in_the_next_attempt() -> None:
    wire = Wire.build(5)  # quorum 4
    m0 = next(iter(wire.machines.values()))
    wire.begin()
    leader = m0.leader(0)
    others = sorted(n for n in wire.machines if n != leader)
    _split(wire, (set(others[:2]), set(others[2:])))
    wire.run()  # the leader equivocates: 3 and 2 of the 4 cosignatures needed
    assert not any(wire.committed.get(n) for n in wire.machines)
    assert sorted(len(wire.persisted.get(n, [])) for n in others) == [1, 1, 1, 1]
    wire.down.add(leader)  # then goes silent
    wire.settle(step=5.0)
    heads = {wire.entry_bytes(n) for n in others}
    assert len(heads) == 1
    assert all(wire.committed[n][-1].cosignatures.keys() >= set(others) for n in others)
    assert "refused to cosign a second head" not in all_notes(wire)


def test_without_vote_reports_a_split_vote_cannot_move() -> None:
    """The unlock rule is what completes the round above: strip the reports and it stalls."""
    wire = Wire.build(5)
    m0 = next(iter(wire.machines.values()))
    wire.begin()
    leader = m0.leader(0)
    others = sorted(n for n in wire.machines if n != leader)
    _split(wire, (set(others[:2]), set(others[2:])))
    split = wire.filter
    assert split is not None

    def no_reports(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        out = split(sender, to, msg)
        return [(t, replace(m, reports=()) if isinstance(m, Propose) else m) for t, m in out]

    wire.filter = no_reports
    wire.run()
    wire.down.add(leader)
    for _ in range(10):
        wire.tick(5.0)
    assert not any(wire.committed.get(n) for n in others)
    assert "refused to cosign a second head" in all_notes(wire)


def _reports(wire: Wire, roots: dict[str, bytes], attempt: int) -> list[VoteReport]:
    out = []
    for nid, root in roots.items():
        ident = next(i for i in wire.ids if i.node_id == nid)
        r = VoteReport(RUN, 1, attempt, nid, 2, root)
        out.append(replace(r, signature=ident.sign(Domain.ROUND, r.signed_body(), DIGEST(wire))))
    return out


def DIGEST(wire: Wire) -> bytes:
    return wire.genesis.digest()


def test_moving_a_vote_allows_for_lying_reporters_unless_the_author_is_proven_dishonest() -> None:
    """5 members, quorum 4, f = 1. The voter cosigned A (attempt 0) and is shown B."""
    wire = Wire.build(5)
    wire.begin()
    m = next(iter(wire.machines.values()))
    members = sorted(wire.machines)
    a = _forged(wire, m.leader(0), 0, tuple(members))
    b_other = _forged(wire, m.leader(1), 1, tuple(members))  # another author: no proof
    b_same = _forged(wire, m.leader(0), 0, tuple(members[:4]))  # same author and attempt
    voter = wire.machines[next(n for n in members if n not in (m.leader(0), m.leader(1)))]
    voter.s.attempt = 1
    prior = CastVote(a.root, 0, m.leader(0), 0)
    others = [n for n in members if n != m.leader(0)]  # A's author stays silent
    two_each = {others[0]: a.root, others[1]: a.root, others[2]: b_other.root}
    two_each[others[3]] = b_other.root
    # A: 2 reports + 1 unreported + 1 possible liar = 4 = quorum: A might be final, refuse.
    why = voter._unlock_refusal(b_other, prior, _reports(wire, two_each, 1))
    assert why is not None and "lying reporters" in why
    # Same counts, but A's author also signed B for the same attempt: it is the one liar, and
    # A has at most 2 + 1 (its author) cosignatures.
    same = {k: (b_same.root if v == b_other.root else v) for k, v in two_each.items()}
    assert voter._unlock_refusal(b_same, prior, _reports(wire, same, 1)) is None
    # Reports for another attempt prove nothing.
    why = voter._unlock_refusal(b_same, prior, _reports(wire, same, 0))
    assert why is not None and "another run, round, attempt" in why
    # And never within the attempt it voted in.
    voter.s.attempt = 0
    why = voter._unlock_refusal(b_same, prior, _reports(wire, same, 0))
    assert why is not None and "would equivocate" in why

"""The round machine's own refusals, one test each: what a node checks beyond the record verifier.

Each test triggers exactly one check (the stale-proposal attempt check, the vote-report checks on
updates and on a proposal's unlock, the persist-before-send order of the leader's own vote) and
asserts its refusal text, so removing the check fails it (`benchmarks/mutations.py` shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from consortium.core.encoding import Domain
from consortium.protocol.messages import Commit, Message, Propose, Update, Vote, VoteReport
from consortium.protocol.round import CastVote, Committed, Note, PersistVote, Send
from tests.machines import Wire, all_notes
from tests.test_round_machine import _split

Reports = tuple[VoteReport, ...]


def _notes(actions: Sequence[object]) -> str:
    return "\n".join(a.text for a in actions if isinstance(a, Note))


def _votes(wire: Wire, node: str) -> list[Vote]:
    return [
        a.message
        for n, a in wire.trace
        if n == node and isinstance(a, Send) and isinstance(a.message, Vote)
    ]


# -- a proposal of an earlier attempt -------------------------------------------------------------


def test_a_node_that_moved_on_refuses_the_late_proposal_of_an_earlier_attempt() -> None:
    wire = Wire.build(4)
    held: list[tuple[str, str, Message]] = []

    def hold_proposals(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if isinstance(msg, Propose):
            held.append((sender, to, msg))
            return []
        return [(to, msg)]

    wire.filter = hold_proposals
    wire.begin()
    wire.run()  # attempt 0's leader collects every update and proposes; the proposal is held
    m0 = next(iter(wire.machines.values()))
    victim = next(n for n in wire.machines if n not in (m0.leader(0), m0.leader(1)))
    machine = wire.machines[victim]
    machine.tick(wire.now + 20.0)  # its round timeout: it moves on to attempt 1
    assert machine.attempt == 1
    sender, _, late = next(h for h in held if h[1] == victim)
    assert isinstance(late, Propose) and late.attempt == 0 and sender == m0.leader(0)
    actions = machine.on_message(sender, late, wire.now + 20.0)
    assert not any(isinstance(a, (PersistVote, Send)) for a in actions), actions
    refusal = "proposal for attempt 0, this node is at attempt 1 [rule attempt-not-current]"
    assert refusal in _notes(actions)


# -- vote reports carried by updates --------------------------------------------------------------


def _update_to_leader(wire: Wire) -> tuple[str, str, Update]:
    """(follower, leader, the update the follower sends attempt 0's leader), not delivered."""
    wire.begin()
    sender, to, msg = next(
        (s, t, m) for s, t, m in wire.queue if isinstance(m, Update) and m.attempt == 0
    )
    assert isinstance(msg, Update) and msg.report is not None
    return sender, to, msg


def _signed(wire: Wire, report: VoteReport) -> VoteReport:
    ident = next(i for i in wire.ids if i.node_id == report.node)
    sig = ident.sign(Domain.ROUND, report.signed_body(), wire.genesis.digest())
    return replace(report, signature=sig)


def test_an_update_carrying_a_vote_report_for_another_attempt_is_refused() -> None:
    wire = Wire.build(3)
    sender, leader, msg = _update_to_leader(wire)
    assert msg.report is not None
    other = _signed(wire, replace(msg.report, attempt=1))  # the sender's own, validly signed
    bad = replace(msg, report=other)
    actions = wire.machines[leader].on_message(sender, bad, wire.now)
    assert "vote report is not the sender's, for this attempt" in _notes(actions)
    assert sender not in wire.machines[leader].s.updates  # the update does not count


def test_an_update_carrying_a_forged_vote_report_is_refused() -> None:
    wire = Wire.build(3)
    sender, leader, msg = _update_to_leader(wire)
    assert msg.report is not None
    bad = replace(msg, report=replace(msg.report, signature=bytes(64)))
    actions = wire.machines[leader].on_message(sender, bad, wire.now)
    assert "vote report signature does not verify" in _notes(actions)
    assert sender not in wire.machines[leader].s.updates


# -- moving a vote: the unlock rule ---------------------------------------------------------------


def test_a_node_never_moves_its_vote_within_one_attempt_even_with_reports() -> None:
    """Reports from 4 of 5 members leave the victim's earlier head short of quorum (1 + 1 < 4),
    so only the same-attempt rule stops the victim cosigning a second head in attempt 0."""
    probe = Wire.build(5)
    probe.begin()
    m0 = next(iter(probe.machines.values()))
    victim = next(n for n in probe.machines if n != m0.leader(0))
    wire = Wire.build(5, votes={victim: {2: CastVote(b"\x01" * 32, 0)}})
    wire.begin()
    wire.run()
    assert (
        "refused to cosign a second head of size 2: it cosigned another head in attempt 0 "
        "(would equivocate)"
    ) in "\n".join(wire.notes.get(victim, []))
    assert not _votes(wire, victim)


def _unlock_with(wire: Wire, tamper: Callable[[Reports], Reports]) -> None:
    """The split vote of `test_round_machine`, whose attempt-1 proposal carries `tamper`ed
    reports: the nodes that cosigned the other head in attempt 0 must judge them."""
    m0 = next(iter(wire.machines.values()))
    wire.begin()
    leader = m0.leader(0)
    others = sorted(n for n in wire.machines if n != leader)
    _split(wire, (set(others[:2]), set(others[2:])))
    split = wire.filter
    assert split is not None

    def tampered(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        out = split(sender, to, msg)
        return [
            (t, replace(m, reports=tamper(m.reports)))
            if isinstance(m, Propose) and m.attempt == 1
            else (t, m)
            for t, m in out
        ]

    wire.filter = tampered
    wire.run()  # the leader equivocates: no head has a quorum
    wire.down.add(leader)
    for _ in range(6):  # attempt 1 starts at t=20; its leader proposes after collecting
        wire.tick(5.0)
    assert all(wire.machines[n].attempt == 1 for n in others)
    assert not any(wire.committed.get(n) for n in others)


def _refusal(why: str) -> str:
    return f"refused to cosign a second head of size 2: {why}"


def test_the_unlock_refuses_a_vote_report_of_another_attempt() -> None:
    wire = Wire.build(5)

    def stale(reports: Reports) -> Reports:
        first = _signed(wire, replace(reports[0], attempt=0, root=b""))  # replayed from attempt 0
        return (first, *reports[1:])

    _unlock_with(wire, stale)
    assert _refusal("a vote report is for another run, round, attempt or size") in all_notes(wire)


def test_the_unlock_refuses_two_vote_reports_from_one_member() -> None:
    wire = Wire.build(5)
    _unlock_with(wire, lambda reports: (*reports, reports[0]))
    assert _refusal("vote reports from a non-member or twice from one member") in all_notes(wire)


def test_the_unlock_refuses_a_forged_vote_report() -> None:
    wire = Wire.build(5)

    def forged(reports: Reports) -> Reports:
        return (replace(reports[0], signature=bytes(64)), *reports[1:])

    _unlock_with(wire, forged)
    assert _refusal("invalid vote report from m") in all_notes(wire)


# -- the leader's own vote ------------------------------------------------------------------------


def test_a_leader_whose_own_vote_makes_the_quorum_persists_it_before_committing() -> None:
    """`_vote_for` returns [PersistVote, *commit] for the leader's own vote: only a quorum of one
    makes the commit part non-empty, so only this case shows the order."""
    wire = Wire.build(1)  # one member: the leader's own cosignature is the quorum
    wire.begin()
    wire.settle()
    (node,) = wire.machines
    actions = [a for n, a in wire.trace if n == node]
    persist = next(k for k, a in enumerate(actions) if isinstance(a, PersistVote))
    final = next(
        k
        for k, a in enumerate(actions)
        if isinstance(a, Committed) or (isinstance(a, Send) and isinstance(a.message, Commit))
    )
    assert persist < final, actions

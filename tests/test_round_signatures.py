"""The round protocol's signed objects are bound to the consortium (its genesis digest).

Two consortia with the very same members (keys) but different manifests: a round record, a vote
and a commit's cosignatures made in consortium A are refused by the round machines of B, while the
same objects made in B are accepted (so each refusal is due to the binding alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from multiformats import CID, multihash

from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import Entry, genesis_entry, make_record
from consortium.ledger.frontier import Frontier
from consortium.ledger.heads import TreeHead
from consortium.protocol.messages import Commit, Propose, Update, Vote
from consortium.protocol.round import (
    Action,
    Broadcast,
    Committed,
    Note,
    RoundMachine,
    RoundSettings,
    Send,
)

SETTINGS = RoundSettings(run_id="run-1", config={"rounds": 1}, min_updates=3)


def _aggregate(updates: Sequence[tuple[str, int, bytes]]) -> bytes:
    return b"model:" + b"|".join(u for _, _, u in sorted(updates))


def _cid_of(data: bytes) -> CID:
    return CID("base32", 1, "raw", multihash.digest(data, "sha2-256"))


@pytest.fixture(scope="module")
def ids() -> list[NodeIdentity]:
    return [NodeIdentity.generate(f"n{i}", seed=b"round-bind%d" % i) for i in range(3)]


def _genesis(ids: list[NodeIdentity], purpose: str) -> Genesis:
    g = Genesis.ceremony("bind", ids, [Purpose(purpose)], 1)
    return g


@pytest.fixture(scope="module")
def consortia(ids: list[NodeIdentity]) -> tuple[Genesis, Genesis]:
    a, b = _genesis(ids, "research"), _genesis(ids, "marketing")
    assert a.digest() != b.digest()
    return a, b


def _of(actions: list[Action], kind: type) -> list[object]:
    found: list[object] = []
    for a in actions:
        msg = a.message if isinstance(a, Send | Broadcast) else a
        if isinstance(msg, kind):
            found.append(msg)
    return found


def _proposing(
    ids: list[NodeIdentity], genesis: Genesis
) -> tuple[dict[str, RoundMachine], str, Propose]:
    """Round 1 of `genesis`'s consortium up to the leader's Propose (every update delivered)."""
    frontier = Frontier.empty().append(genesis_entry(genesis).data)
    machines = {i.node_id: RoundMachine(i, genesis, SETTINGS, _aggregate, _cid_of) for i in ids}
    for m in machines.values():
        m.begin(1, frontier, 0.0, model=b"model:0")  # three members: a beacon of one partial
    leader = next(iter(machines.values())).leader()
    sends: list[tuple[str, Action]] = []
    for nid, m in machines.items():
        sends += [(nid, a) for a in m.on_trained(10, b"update:" + nid.encode(), {}, 1.0)]
    proposes: list[object] = []
    for sender, action in sends:
        assert isinstance(action, Send) and action.to == leader
        assert isinstance(action.message, Update)
        proposes += _of(machines[leader].on_message(sender, action.message, 1.0), Propose)
    assert len(proposes) == 1 and isinstance(proposes[0], Propose)
    return machines, leader, proposes[0]


def test_a_round_record_signed_for_another_consortium_is_refused(
    ids: list[NodeIdentity], consortia: tuple[Genesis, Genesis]
) -> None:
    a, b = consortia
    machines, leader, propose = _proposing(ids, b)
    voter = next(nid for nid in machines if nid != leader)
    # The leader's very record, re-signed by the leader for consortium A: only the binding differs.
    entry = Entry.from_bytes(propose.proposal.entry)
    author = next(i for i in ids if i.node_id == leader)
    in_a = make_record(author, entry.kind, entry.body, entry.time, a).data
    frontier = Frontier.empty().append(genesis_entry(b).data)
    forged = replace(propose.proposal, entry=in_a, root=frontier.append(in_a).root())
    refused = machines[voter].on_message(leader, replace(propose, proposal=forged), 2.0)
    assert len(refused) == 1 and isinstance(refused[0], Note)
    assert "invalid signature on round entry" in refused[0].text
    # The record signed for B is accepted: the voter cosigns it.
    assert _of(machines[voter].on_message(leader, propose, 2.0), Vote)


def test_a_vote_signed_for_another_consortium_is_refused(
    ids: list[NodeIdentity], consortia: tuple[Genesis, Genesis]
) -> None:
    a, b = consortia
    machines, leader, propose = _proposing(ids, b)
    voter = next(nid for nid in machines if nid != leader)
    p = propose.proposal
    voter_id = next(i for i in ids if i.node_id == voter)
    sig_a = TreeHead(p.size, p.root, p.time).sign(voter_id, a).signature
    vote_a = Vote(SETTINGS.run_id, 1, p.size, p.root, sig_a)
    # The leader's own vote plus this one would be a quorum (2 of 3) if the vote counted.
    refused = machines[leader].on_message(voter, vote_a, 2.0)
    assert len(refused) == 1 and isinstance(refused[0], Note)
    assert "invalid cosignature" in refused[0].text
    votes = _of(machines[voter].on_message(leader, propose, 2.0), Vote)
    assert len(votes) == 1 and isinstance(votes[0], Vote)
    assert _of(machines[leader].on_message(voter, votes[0], 2.0), Committed)


def test_a_commit_cosigned_for_another_consortium_is_refused(
    ids: list[NodeIdentity], consortia: tuple[Genesis, Genesis]
) -> None:
    a, b = consortia
    machines, leader, propose = _proposing(ids, b)
    p = propose.proposal
    head = TreeHead(p.size, p.root, p.time)
    outsider = next(nid for nid in machines if nid != leader)  # has not seen the proposal
    in_a = {i.node_id: head.sign(i, a).signature for i in ids}
    refused = machines[outsider].on_message(leader, Commit(SETTINGS.run_id, 1, p, in_a), 2.0)
    assert len(refused) == 1 and isinstance(refused[0], Note)
    assert "0 valid cosignatures" in refused[0].text
    in_b = {i.node_id: head.sign(i, b).signature for i in ids}
    assert _of(
        machines[outsider].on_message(leader, Commit(SETTINGS.run_id, 1, p, in_b), 2.0), Committed
    )

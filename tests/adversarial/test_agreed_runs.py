"""Runs the members agreed to (issue 12): a quorum-cosigned run-config entry, local policy, and
budgets that cannot be bypassed. Each test has a member try to break a rule and be refused by
name."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from consortium.audit import audit
from consortium.core.encoding import Domain, decode, encode
from consortium.core.errors import AuditError, ConfigError
from consortium.core.genesis import Purpose
from consortium.core.identity import NodeIdentity, is_valid_signature
from consortium.ledger.entries import Entry, make_record
from consortium.node.config import PolicyConfig, RunConfig
from consortium.node.node import Node
from consortium.privacy.config import PrivacyConfig
from consortium.protocol import agreement
from consortium.protocol.messages import Proposal, StartRun, encode_message
from consortium.protocol.record import RUN_KIND, RunRecord
from consortium.transport.inprocess import InProcessTransport
from tests.inprocess_cluster import cluster, run_config, start
from tests.records import forge_folder

BUDGET = Purpose("research", 8.0, 1e-5)


def _strict(nodes: list, names: list[str]) -> None:
    """Give these members a policy that requires secure aggregation."""
    for n in nodes:
        if n.name in names:
            n.config = n.config.model_copy(update={"policy": PolicyConfig()})


def test_a_run_without_a_quorum_does_not_start_and_names_the_refusers(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 4, seed=61, consent=False)  # quorum 3
        try:
            _strict(nodes, ["node1", "node2"])  # two of four refuse plaintext runs
            report = await nodes[0].propose_run(run_config(2, 0))  # plaintext
            assert not report["started"]
            assert set(report["refused"]) == {"node1", "node2"}
            assert all(
                "policy requires secure aggregation" in r for r in report["refused"].values()
            )
            assert all(n.machine is None for n in nodes)  # nobody trains
            assert all(n.ledger.size == 1 for n in nodes)  # nothing on the ledger
            # Refused in the first phase: no vote was locked, so a secure run starts at once.
            report = await nodes[0].propose_run(run_config(1, 0, secure="secagg+"))
            assert report["started"], report
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_start_run_messages_from_one_member_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, net, _ = await cluster(tmp_path, 3, seed=62, consent=False)
        try:
            payload = encode_message(StartRun(run_config(1, 0).body()))
            mallory = InProcessTransport(net, nodes[1].identity.node_id)
            del mallory
            with pytest.raises(Exception, match="run-config entry a quorum cosigned"):
                await nodes[1].transport.request(nodes[0].identity.node_id, "msg", payload)
            assert nodes[0].machine is None
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_budgeted_purpose_is_never_trained_without_dp(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 3, seed=63, consent=False, purpose=BUDGET)
        try:
            report = await nodes[0].propose_run(run_config(1, 0, secure="secagg+"))
            assert not report["started"]
            assert all("rule budget-bypass" in r for r in report["refused"].values())
            assert len(report["refused"]) == 3
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_proposal_for_another_ledger_size_or_a_second_head_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 3, seed=64, consent=False)
        try:
            from consortium.protocol import agreement

            n0, n1 = nodes[0], nodes[1]
            run = run_config(1, 0)
            body = RunRecord(run.run_id(), run.body()).to_body()
            stale = agreement.propose(
                n0.identity, n0.genesis, n1.ledger.frontier().append(b"x"), RUN_KIND, body, 5
            )
            with pytest.raises(agreement.AgreementRefused, match="not this ledger"):
                n1._vote_run(stale)
            first = agreement.propose(
                n0.identity, n0.genesis, n1.ledger.frontier(), RUN_KIND, body, 5
            )
            n1._vote_run(first)
            other = agreement.propose(
                n0.identity, n0.genesis, n1.ledger.frontier(), RUN_KIND, body, 6
            )
            # Asked first whether it would accept, it already says no: the proposer must not
            # count it among the willing.
            with pytest.raises(
                agreement.AgreementRefused, match=r"already cosigned another head of size 2$"
            ):
                n1._vote_run(other, dry_run=True)
            with pytest.raises(agreement.AgreementRefused, match="would equivocate"):
                n1._vote_run(other)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_audit_refuses_rounds_of_a_run_no_quorum_agreed(tmp_path: Path) -> None:
    async def go() -> Path:
        nodes, net, clock = await cluster(tmp_path, 3, seed=65, consent=False)
        try:
            from tests.inprocess_cluster import drive, start

            await start(nodes, run_config(1, 0))
            await drive(nodes, net, clock)
            return nodes[0].dir
        finally:
            for n in nodes:
                await n.stop()

    folder = asyncio.run(go())
    audit(folder)
    # The run was never agreed: its run-config entry is left out.
    forged = forge_folder(
        folder, tmp_path / "forged", lambda e: None if e.kind == RUN_KIND else (e.author, e.body)
    )
    with pytest.raises(AuditError, match=r"no run-config entry agreed .*rule config-mismatch"):
        audit(forged)


def test_run_config_validation_refuses_unknown_fields() -> None:
    with pytest.raises(ConfigError):
        RunConfig.from_body({**RunConfig().body(), "sneaky": 1})
    assert PrivacyConfig().client_sampling_rate == 1.0


def test_signed_refusals_lift_a_vote_only_when_the_proposal_cannot_pass(tmp_path: Path) -> None:
    """4 members, quorum 3, f = 1: a cosigned run proposal may be abandoned only with 3 signed
    refusals (2 + one possibly lying refuser could still make 3 cosignatures)."""

    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 4, seed=66, consent=False)
        try:
            from consortium.core.encoding import Domain, encode
            from consortium.protocol import agreement

            n0, voter = nodes[0], nodes[1]
            run = run_config(1, 0)
            body = RunRecord(run.run_id(), run.body()).to_body()
            f = voter.ledger.frontier()
            first = agreement.propose(n0.identity, n0.genesis, f, RUN_KIND, body, 5)
            voter._vote_run(first)
            statement = agreement.refusal_statement(first)
            digest = n0.genesis.digest()
            refusals = {
                n.identity.node_id: n.identity.sign(Domain.MESSAGE, statement, digest)
                for n in (nodes[0], nodes[2], nodes[3])
            }
            two = dict(list(refusals.items())[:2])
            note = {"proposal": first.to_body(), "refusals": two}
            with pytest.raises(agreement.AgreementRefused, match="too few signed refusals"):
                voter._abandon_run(encode(note))
            assert 2 in voter.ledger.my_votes()
            voter._abandon_run(encode({"proposal": first.to_body(), "refusals": refusals}))
            assert 2 not in voter.ledger.my_votes()
            second = agreement.propose(n0.identity, n0.genesis, f, RUN_KIND, body, 6)
            voter._vote_run(second)  # no longer locked
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_run_stops_only_when_a_quorum_agrees_and_audit_sees_the_stop(tmp_path: Path) -> None:
    async def go() -> Path:
        nodes, _, _ = await cluster(tmp_path, 3, seed=67, consent=False)
        try:
            from tests.inprocess_cluster import start

            await start(nodes, run_config(50, 0))
            report = await nodes[1].propose_stop("the data controller asked for a pause")
            assert report["agreed"], report
            assert all(n.finished.is_set() for n in nodes)
            assert all("stopped by agreement" in n.stopped for n in nodes)
            with pytest.raises(ConfigError, match="no run is in progress"):
                await nodes[0].propose_stop("again")
            return nodes[0].dir
        finally:
            for n in nodes:
                await n.stop()

    folder = asyncio.run(go())
    report = audit(folder)
    assert report.kinds.get("run-stop") == 1


def _run_proposal(proposer: Node, voter: Node, run: RunConfig, kind: str = RUN_KIND) -> Proposal:
    body = RunRecord(run.run_id(), run.body()).to_body()
    frontier = voter.ledger.frontier()
    return agreement.propose(proposer.identity, proposer.genesis, frontier, kind, body, 5)


#: case -> (the refusal, the voter's [policy], changes to the run)
REFUSALS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "min-honest": ("policy requires min_honest >= 4, the run has 3", {"min_honest": 4}, {}),
    "purpose": ("policy does not allow purpose 'research'", {"purposes": ["clinical"]}, {}),
    "dataset": ("policy does not allow dataset 'digits'", {"datasets": ["fashion-mnist"]}, {}),
    "unknown-purpose": (
        "purpose 'marketing' is not declared in genesis",
        {},
        {"purpose": "marketing"},
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_is_named_signed_and_locks_no_vote(tmp_path: Path, case: str) -> None:
    text, policy, change = REFUSALS[case]

    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 3, seed=67, consent=False)
        try:
            n0, voter = nodes[0], nodes[1]
            lenient = PolicyConfig(require_secure_aggregation=False, **policy)
            voter.config = voter.config.model_copy(update={"policy": lenient})
            p = _run_proposal(n0, voter, run_config(1, 0).model_copy(update=change))
            for dry_run in (True, False):
                answer = decode(voter._vote_run(p, dry_run=dry_run))
                assert text in answer["refused"], answer
                key = voter.genesis.member(voter.identity.node_id).public_key
                statement = agreement.refusal_statement(p)
                digest = voter.genesis.digest()
                assert is_valid_signature(key, Domain.MESSAGE, statement, answer["sig"], digest)
            assert p.size not in voter.ledger.my_votes()
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_proposal_of_another_kind_or_by_an_outsider_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 3, seed=68, consent=False)
        try:
            n0, voter = nodes[0], nodes[1]
            note = _run_proposal(n0, voter, run_config(1, 0), kind="note")
            text = "the proposed entry is a 'note', not one of"
            with pytest.raises(agreement.AgreementRefused, match=text):
                voter._vote_run(note)
            mallory = NodeIdentity.generate("mallory", seed=b"agreed-runs/mallory")
            forged = _run_proposal(n0, voter, run_config(1, 0))
            entry = make_record(
                mallory, RUN_KIND, Entry.from_bytes(forged.entry).body, 5, n0.genesis
            )
            forged = replace(forged, entry=entry.to_bytes())
            with pytest.raises(
                agreement.AgreementRefused, match="the proposed entry does not verify"
            ):
                voter._vote_run(forged)
            assert not voter.ledger.my_votes()
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_run_commit_without_a_quorum_of_valid_cosignatures_is_refused(tmp_path: Path) -> None:
    """4 members, quorum 3: two cosignatures, then with a third copied under another name."""

    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 4, seed=69, consent=False)
        try:
            n0, target, n2, n3 = nodes
            p = _run_proposal(n0, target, run_config(1, 0))
            two = {n.identity.node_id: decode(n._vote_run(p))["sig"] for n in (n0, n2)}
            copied = {**two, n3.identity.node_id: two[n0.identity.node_id]}  # not n3's
            for sigs in (two, copied):
                commit = encode({"proposal": p.to_body(), "cosignatures": sigs})
                with pytest.raises(
                    agreement.AgreementRefused, match="2 valid cosignatures, the quorum is 3"
                ):
                    await target._handle(n0.identity.node_id, "run-commit", commit)
            assert target.ledger.size == 1 and target.machine is None
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_forged_cosignature_beside_a_quorum_is_dropped_not_stored(tmp_path: Path) -> None:
    """A quorum of valid cosignatures commits the run; a forged one sent beside them (n3's name
    on n0's signature) is left out of what the member stores, so its ledger still verifies."""

    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 4, seed=70, consent=False)
        try:
            n0, target, n2, n3 = nodes
            p = _run_proposal(n0, target, run_config(1, 0))
            valid = {n.identity.node_id: decode(n._vote_run(p))["sig"] for n in (n0, target, n2)}
            forged = {**valid, n3.identity.node_id: valid[n0.identity.node_id]}
            commit = encode({"proposal": p.to_body(), "cosignatures": forged})
            await target._handle(n0.identity.node_id, "run-commit", commit)
            assert target.ledger.size == 2
            stored = target.ledger.cosigned_head(target.ledger.head(p.time))
            signers = {c.node_id for c in stored.cosignatures}
            assert n3.identity.node_id not in signers and len(signers) >= 3
            for c in stored.cosignatures:  # every stored cosignature verifies
                stored.head.check_signature(target.genesis, c.node_id, c.signature)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_member_running_a_run_votes_for_no_other(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path, 3, seed=70, consent=False)
        try:
            await start(nodes, run_config(5, 0))
            voter = nodes[1]
            assert voter.machine is not None and not voter.finished.is_set()
            p = _run_proposal(nodes[0], voter, run_config(2, 0))
            for dry_run in (True, False):
                with pytest.raises(
                    agreement.AgreementRefused, match="a run is already in progress on this node"
                ):
                    voter._vote_run(p, dry_run=dry_run)
            assert p.size not in voter.ledger.my_votes()
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())

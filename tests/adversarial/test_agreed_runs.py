"""Runs the members agreed to (issue 12): a quorum-cosigned run-config entry, local policy, and
budgets that cannot be bypassed. Each test has a member try to break a rule and be refused by
name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consortium.audit import audit
from consortium.core.errors import AuditError, ConfigError
from consortium.core.genesis import Purpose
from consortium.node.config import PolicyConfig, RunConfig
from consortium.privacy.config import PrivacyConfig
from consortium.protocol.messages import StartRun, encode_message
from consortium.protocol.record import RUN_KIND, RunRecord
from consortium.transport.inprocess import InProcessTransport
from tests.inprocess_cluster import cluster, run_config
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
            with pytest.raises(agreement.AgreementRefused, match="would equivocate"):
                n1._vote_run(other)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_audit_refuses_rounds_of_a_run_no_quorum_agreed(tmp_path: Path) -> None:
    async def go() -> Path:
        nodes, _, clock = await cluster(tmp_path, 3, seed=65, consent=False)
        try:
            from tests.inprocess_cluster import start, until_finished

            await start(nodes, run_config(1, 0))
            await until_finished(nodes, clock, step=0.0)
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

"""Differential privacy in real rounds: spends on the ledger, budget stop, client-level noise."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from consortium.audit import audit
from consortium.core.errors import AuditError
from consortium.core.genesis import Purpose
from consortium.ledger.entries import Entry
from consortium.protocol.record import run_records
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.records import forge_folder


def test_record_level_spends_are_on_the_ledger_and_the_budget_stops_the_run(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        nodes, net, clock = await cluster(
            tmp_path, 3, seed=41, purpose=Purpose("research", 6.0, 1e-5)
        )
        try:
            privacy = {"unit": "record", "noise_multiplier": 1.5, "clip_norm": 1.0}
            await start(nodes, run_config(20, 0, privacy=privacy))
            await drive(nodes, net, clock)
            records = run_records(nodes[0].ledger)
            assert 0 < len(records) < 20  # stopped before the budget was exceeded
            me = nodes[0].identity.node_id
            totals = [r.privacy["record"][me]["total_epsilon"] for r in records]
            assert totals == sorted(totals) and totals[-1] <= 6.0 * (1 + 1e-6)
            assert all(n.stopped.startswith("stopping before round") for n in nodes)
            status = json.loads((nodes[0].dir / "status.json").read_text())
            assert "budget" in status["stopped"]
            report = audit(nodes[0].dir)
            assert report.privacy["research"]
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_client_level_noise_under_secure_aggregation(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, net, clock = await cluster(
            tmp_path, 4, seed=42, purpose=Purpose("research", 50.0, 1e-5)
        )
        try:
            privacy = {
                "unit": "client",
                "noise_multiplier": 0.5,
                "client_clip": 5.0,
                "dropout_tolerance": 1,
            }
            await start(nodes, run_config(2, 0, secure="secagg+", privacy=privacy))
            await drive(nodes, net, clock)
            records = run_records(nodes[0].ledger)
            assert len(records) == 2
            spent = [r.privacy["client"] for r in records]
            assert (
                spent[0]["noise_multiplier"] == 0.5
                and spent[1]["total_epsilon"] > spent[0]["total_epsilon"]
            )
            report = audit(nodes[0].dir)
            assert report.secure_rounds == 2 and report.privacy["research"]
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_audit_flags_a_tampered_privacy_total(tmp_path: Path) -> None:
    """A record whose spend was rewritten (and re-signed by a member) no longer audits."""

    async def go() -> Path:
        nodes, net, clock = await cluster(
            tmp_path, 3, seed=43, purpose=Purpose("research", 20.0, 1e-5)
        )
        try:
            privacy = {"unit": "record", "noise_multiplier": 2.0}
            await start(nodes, run_config(2, 0, privacy=privacy))
            await drive(nodes, net, clock)
            return nodes[0].dir
        finally:
            for n in nodes:
                await n.stop()

    folder = asyncio.run(go())
    audit(folder)

    # Each leader re-signs its own record with a tenth of the spend (same artifacts).
    def tenth(e: Entry) -> tuple[str, dict[str, Any]]:
        body = dict(e.body)
        if e.kind == "round":
            priv = json.loads(json.dumps(body["privacy"]))
            for r in priv["record"].values():
                r["total_epsilon"] = r["total_epsilon"] / 10  # claim a tenth of the spend
            body["privacy"] = priv
        return e.author, body

    forged = forge_folder(folder, tmp_path / "forged", tenth)
    with pytest.raises(AuditError, match=r"entry 2: .*rule privacy-mismatch"):
        audit(forged)


def test_an_update_released_in_a_round_that_never_commits_is_counted_by_its_node(
    tmp_path: Path,
) -> None:
    """Round 2's leader is cut off after the members sent it their updates, and a quorum stops
    the run: no record ever charges round 2, so each member that released its update counts the
    spend itself, and its own budget check refuses a round the ledger alone would allow."""
    from consortium.privacy.budget import Budget, BudgetTracker
    from consortium.protocol.privacy_round import RoundPrivacy
    from consortium.protocol.record import privacy_history, round_records
    from consortium.protocol.round import Phase

    privacy = {"unit": "record", "noise_multiplier": 2.0}

    async def go() -> list[tuple[str, list[Any], list[Any]]]:
        nodes, net, _ = await cluster(tmp_path, 4, seed=44, purpose=Purpose("research", 50.0, 1e-5))
        try:
            await start(nodes, run_config(3, 0, privacy=privacy))
            loop = asyncio.get_running_loop()
            end = loop.time() + 120
            while not all(n.machine and n.machine.round == 2 and n.machine.beacon for n in nodes):
                assert loop.time() < end, "round 2 did not begin"
                await asyncio.sleep(0.01)
            leader = nodes[0].machine.leader()  # type: ignore[union-attr]
            net.disconnect(leader)  # the updates it is sent are seen (released), never recorded
            others = [n for n in nodes if n.identity.node_id != leader]
            while not all(n.machine.phase is Phase.AWAITING for n in others):  # type: ignore[union-attr]
                assert loop.time() < end, "the members did not send their updates"
                await asyncio.sleep(0.01)
            report = await others[0].propose_stop("the leader went silent")
            assert report["agreed"], report
            seen = []
            for n in others:
                entries = list(enumerate(n.ledger.iter_entries()))
                history = privacy_history((r for _, r in round_records(entries)), "research")
                assert n.unrecorded_releases("clinical") == []
                seen.append((n.identity.node_id, n.unrecorded_releases("research"), history))
            return seen
        finally:
            for n in nodes:
                await n.stop()

    config = run_config(3, 0, privacy=privacy).privacy
    for me, bodies, history in asyncio.run(go()):
        (body,) = bodies  # round 2: released, and no record charged it
        assert me in body["record"]
        assert len(history) == 1  # the ledger charged round 1 only
        r = body["record"][me]
        mine = (float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"]))
        # This node's own spends only (the others' sizes, hence spends, differ).
        history = [{**h, "record": {me: h["record"][me]}} for h in history]
        # A budget between "round 1 + the next round" and "round 1 + round 2 + the next round".
        loose = Budget(1e9, 1e-5, "research")
        ledger_only = BudgetTracker(loose, "record", config.accountant)
        counted = BudgetTracker(loose, "record", config.accountant)
        for b in history:
            ledger_only.commit(b)
            counted.commit(b)
        counted.commit(body)
        e_ledger = ledger_only.next_round(3, record={me: mine})["record"][me]["total_epsilon"]
        e_counted = counted.next_round(3, record={me: mine})["record"][me]["total_epsilon"]
        assert e_counted > e_ledger
        budget = Budget((e_ledger + e_counted) / 2, 1e-5, "research")
        assert RoundPrivacy(config, budget, history).stop_reason(3, me, mine) is None
        reason = RoundPrivacy(config, budget, history, unrecorded=[body]).stop_reason(3, me, mine)
        assert reason is not None and "counting 1 round(s) in which this node's update" in reason

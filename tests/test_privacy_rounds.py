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
from consortium.node.node import run_records
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

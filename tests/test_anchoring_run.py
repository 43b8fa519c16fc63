"""A run anchors its final heads on the node's embedded chain; audit catches a rewritten history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consortium.audit import audit
from consortium.core.errors import AuditError
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger.entries import make_record
from consortium.ledger.log import Ledger
from tests.inprocess_cluster import cluster, drive, run_config, start


def _train(root: Path) -> list[Path]:
    async def go() -> list[Path]:
        nodes, net, clock = await cluster(root, 3, seed=11)
        try:
            await start(nodes, run_config(3, 11, anchor_every=2))
            await drive(nodes, net, clock)
        finally:
            for n in nodes:
                await n.stop()  # waits for anchors in flight
        return [n.dir for n in nodes]

    return asyncio.run(go())


def test_anchored_run_audits_and_rewrite_is_caught(tmp_path: Path) -> None:
    dirs = _train(tmp_path)
    report = audit(dirs[0])
    assert report.anchored == 2  # rounds 2 and 3 (the last round is always anchored)
    assert report.latest_anchored_size == report.entries == 5  # genesis, run-config, 3 rounds

    # Rewrite node0's history with every member's key (all folders are on this disk): the forged
    # ledger is internally perfect, but it does not extend what the chain holds.
    with Ledger.open(dirs[0] / LEDGER_FILE) as real:
        genesis = real.genesis()
    ids = [NodeIdentity.load(d) for d in dirs]
    forged_path = tmp_path / "forged.sqlite"
    with Ledger.create(forged_path, genesis) as forged:
        for k in range(4):  # as long as the real history (run-config and 3 rounds)
            forged.append(
                make_record(ids[0], "note", {"round": k + 1, "note": "forged"}, k, genesis)
            )
            for ident in ids:
                forged.sign_head(ident, 10 + k)
    audit_copy = tmp_path / "copy"
    audit_copy.mkdir()
    for name in ("genesis.json",):
        (audit_copy / name).write_bytes((dirs[0] / name).read_bytes())
    import shutil

    shutil.copytree(dirs[0] / "chain", audit_copy / "chain")
    shutil.copy(forged_path, audit_copy / LEDGER_FILE)
    with pytest.raises(AuditError, match="does not extend anchored head"):
        audit(audit_copy)
    # Without the chain, the forgery would have passed: the anchor is what catches it.
    shutil.rmtree(audit_copy / "chain")
    assert audit(audit_copy).entries == 5

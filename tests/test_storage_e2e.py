"""Replication with retrievability challenges end to end (issue 16 item 4): real nodes over the
in-process transport, replicas = 3 of 4 members, a challenge every 2 rounds. One holder loses
round 1's model after round 2; round 4's challenge names it missing, the member the beacon picks
next fetches the model from a holder that proved it, and round 5 commits it as a holder; `audit`
names the member that lost data, and an audit of a folder that dropped an artifact it does not
hold says which members hold it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from consortium.audit.auditor import audit
from consortium.core.errors import AuditError
from consortium.node.node import Node
from consortium.protocol.record import RoundRecord, run_records
from consortium.protocol.round import Committed
from consortium.protocol.storage import artifact_name
from consortium.store.objects import get_bytes, is_complete, walk
from tests.inprocess_cluster import cluster, drive, run_config, start


def _lose_after_round_2(nodes: list[Node], lost: dict[str, str]) -> None:
    """The second holder of round 1's model loses its copy once it committed round 2."""
    for node in nodes:
        original = node._commit

        def commit(c: Committed, node: Node = node, original: Any = original) -> None:
            original(c)
            if c.round != 2:
                return
            first = run_records(node.ledger)[0]
            assert first.storage is not None
            (held,) = first.storage.commitments
            if held.holders[1] == node.identity.node_id:
                for block in list(walk(node.store, held.artifact)):
                    node.store.delete(block)
                lost["holder"], lost["artifact"] = node.identity.node_id, held.artifact

        node._commit = commit  # type: ignore[method-assign]


Ran = tuple[list[Node], dict[str, str], list[RoundRecord], set[bytes]]


async def _run(root: Path) -> Ran:
    nodes, net, clock = await cluster(root, 4, seed=2, consent=False)
    lost: dict[str, str] = {}
    _lose_after_round_2(nodes, lost)
    run = run_config(5, 2).model_copy(update={"replicas": 3, "challenge_every": 2})
    try:
        await start(nodes, run)
        await drive(nodes, net, clock)
        # The re-replication fetch is spawned on commit: let it land.
        for _ in range(200):
            if not any(n._tasks for n in nodes):
                break
            await asyncio.sleep(0.01)
        records = run_records(nodes[0].ledger)
        roots = {n.ledger.root() for n in nodes}
    finally:
        for n in nodes:
            await n.stop()
    return nodes, lost, records, roots


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    return asyncio.run(_run(tmp_path_factory.mktemp("storage-e2e")))


def test_the_lost_copy_is_named_missing_and_re_replicated(
    ran: Ran,
) -> None:
    nodes, lost, records, roots = ran
    assert len(roots) == 1
    assert [r.round for r in records] == [1, 2, 3, 4, 5]
    assert all(r.storage is not None for r in records)
    victim, artifact = lost["holder"], lost["artifact"]
    held = records[0].storage.commitments[0]  # type: ignore[union-attr]
    assert held.artifact == artifact == artifact_name(records[0].model)
    # Round 2 challenged round 1's model before the loss: all three proved it.
    r2 = records[1].storage
    assert r2 is not None and r2.missing == ()
    assert sorted(a.holder for a in r2.answers if a.artifact == artifact) == sorted(held.holders)
    # Round 4 challenged it again: the victim is named missing, the others proved it.
    r4 = records[3].storage
    assert r4 is not None and r4.missing == ((artifact, victim),)
    # Round 5 re-commits it (same root), the victim replaced by the one member not holding it.
    r5 = records[4].storage
    assert r5 is not None
    (again,) = [c for c in r5.commitments if c.artifact == artifact]
    (spare,) = {n.identity.node_id for n in nodes} - set(held.holders)
    assert (again.root, again.size) == (held.root, held.size)
    assert again.holders == tuple(spare if h == victim else h for h in held.holders)
    # The replacement fetched it from a holder that proved it, every block verified.
    by_id = {n.identity.node_id: n for n in nodes}
    assert is_complete(by_id[spare].store, artifact)
    data = get_bytes(by_id[spare].store, artifact)
    assert artifact_name(records[0].model) == artifact and len(data) == held.size


def test_a_folder_lacking_an_artifact_it_does_not_hold_names_its_holders(
    ran: Ran,
) -> None:
    nodes, lost, _, _ = ran
    victim = next(n for n in nodes if n.identity.node_id == lost["holder"])
    with pytest.raises(AuditError) as exc:
        audit(victim.dir, workers=1)
    text = str(exc.value)
    assert "is not in this folder" in text and "consortium store import" in text, text
    holders = {n.name for n in nodes if n.name in text}
    assert len(holders) >= 3, text


def test_audit_names_the_member_that_lost_data(ran: Ran, tmp_path: Path) -> None:
    """What an outside auditor does with replicas < members: one member's ledger, and a CAR of
    what each member holds (`store export --held`, `store import`); the result audits, checking
    every commitment and proof, and names the holder that lost round 1's model."""
    from typer.testing import CliRunner

    from consortium.cli.store import app

    nodes, lost, _, _ = ran
    folder = tmp_path / "auditor"
    folder.mkdir()
    shutil.copy(nodes[0].dir / "ledger.sqlite", folder / "ledger.sqlite")
    runner = CliRunner()
    for node in nodes:
        car = tmp_path / f"{node.name}.car"
        res = runner.invoke(app, ["export", str(node.dir), "--held", "--car", str(car)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["import", str(car), "--dir", str(folder)])
        assert res.exit_code == 0, res.output
    report = audit(folder, workers=1)
    victim = next(n for n in nodes if n.identity.node_id == lost["holder"])
    assert report.storage_proofs > 0
    assert len(report.storage_missing) == 1
    assert (
        victim.name in report.storage_missing[0] and lost["artifact"] in (report.storage_missing[0])
    )
    # Without --held, a member's export refuses to leave out what it dropped, naming it.
    res = runner.invoke(app, ["export", str(victim.dir), "--car", str(tmp_path / "x.car")])
    assert res.exit_code != 0 and lost["artifact"] in res.output, res.output


def test_a_restart_does_not_fetch_back_what_the_node_dropped(ran: Ran) -> None:
    """`repair_store` on start fetches what the ledger references and the store lacks, except
    what this member does not hold: with no peer reachable, nothing is reported lost."""
    from consortium.core.identity import NodeIdentity
    from consortium.node.config import load_node_config
    from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

    nodes, _, records, _ = ran
    node = nodes[0]
    assert any(not is_complete(node.store, r.model) for r in records)  # it dropped some
    ident = NodeIdentity.load(node.dir)
    again = Node(
        node.dir,
        ident,
        InProcessTransport(InProcessNetwork(), ident.node_id),
        load_node_config(node.dir),
    )
    try:
        assert asyncio.run(again.repair_store()) == []
    finally:
        again.ledger.close()
        again._lock.release()


def test_run_status_shows_each_holders_last_challenge_result(ran: Ran) -> None:
    """`consortium run status` (table and --json): round 4 named the victim missing on round 1's
    model; every other holder it challenged proved what it was asked."""
    import json

    from typer.testing import CliRunner

    from consortium.cli.app import app
    from consortium.node.run_status import read_run_status

    nodes, lost, records, _ = ran
    status = read_run_status(nodes[0].dir)
    views = {v.holder: v for v in status.challenges}
    victim = views[lost["holder"]]
    assert (victim.round, victim.result, victim.missing) == (4, "missing", (lost["artifact"],))
    r4 = records[3].storage
    assert r4 is not None
    assert {h for h, v in views.items() if v.result == "proved"} == {
        a.holder for a in r4.answers
    } - {lost["holder"]}
    assert all(v.round == 4 for v in views.values())
    runner = CliRunner()
    res = runner.invoke(app, ["run", "status", str(nodes[0].dir)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    name = status.name(lost["holder"])
    assert f"{name} missing {lost['artifact']}" in res.output, res.output
    res = runner.invoke(app, ["run", "status", str(nodes[0].dir), "--json"])
    assert res.exit_code == 0, res.output
    shown = {c["holder"]["name"]: c for c in json.loads(res.output)["challenges"]}
    assert shown[name]["result"] == "missing" and shown[name]["missing"] == [lost["artifact"]]

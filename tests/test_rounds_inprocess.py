"""Training rounds over the in-process transport: agreement, determinism, leader failover."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger.log import Ledger
from consortium.node.node import Node
from consortium.protocol.messages import StartRun
from consortium.protocol.record import RoundRecord, RunIndex, run_records
from consortium.protocol.round import Phase
from consortium.transport.inprocess import InProcessTransport
from tests.inprocess_cluster import cluster, drive, run_config, start


def _roots(nodes: list[Node]) -> set[bytes]:
    return {n.ledger.root() for n in nodes}


async def _train_once(root: Path, seed: int) -> tuple[bytes, list[RoundRecord]]:
    nodes, net, clock = await cluster(root, 3, seed, consent=False)
    try:
        await start(nodes, run_config(3, seed))
        began = clock.now
        await drive(nodes, net, clock)
        assert clock.now == began, "a deadline passed: the entry times would differ"
        assert len(_roots(nodes)) == 1, "replicas disagree"
        records = run_records(nodes[0].ledger)
        # Each node's index, read incrementally at every commit, gives the full re-read's answer.
        assert all(n._runs.records() == records for n in nodes)
        assert RunIndex(nodes[0].ledger).records() == records
        return nodes[0].ledger.root(), records
    finally:
        for n in nodes:
            await n.stop()


def test_same_seed_gives_same_ledger_root(tmp_path: Path) -> None:
    root_a, records = asyncio.run(_train_once(tmp_path / "a", seed=3))
    root_b, _ = asyncio.run(_train_once(tmp_path / "b", seed=3))
    assert root_a == root_b
    assert [r.round for r in records] == [1, 2, 3]
    assert all(len(r.participants) == 3 for r in records)
    root_c, _ = asyncio.run(_train_once(tmp_path / "c", seed=4))
    assert root_c != root_a


async def _failover(root: Path) -> None:
    nodes, net, clock = await cluster(root, 4, seed=1)
    by_id = {n.identity.node_id: n for n in nodes}
    try:
        await start(nodes, run_config(3, 1))
        # Wait for round 2 to begin, then cut its leader off while it collects updates.
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while True:
            m = nodes[0].machine
            if m is not None and m.round == 2 and m.phase is not Phase.DONE and m.beacon:
                break
            assert loop.time() < end
            await asyncio.sleep(0.01)
        leader = by_id[nodes[0].machine.leader()]  # type: ignore[union-attr]
        net.disconnect(leader.identity.node_id)
        survivors = [n for n in nodes if n is not leader]
        await drive(survivors, net, clock)
        assert len(_roots(survivors)) == 1
        records = run_records(survivors[0].ledger)
        r2 = records[1]
        assert r2.round == 2 and r2.attempt >= 1
        assert r2.leader != leader.identity.node_id
        assert leader.identity.node_id not in r2.participants
        assert len(records) == 3
        # The dropped leader's replica is behind but consistent: a prefix of the survivors'.
        with Ledger.open(survivors[0].dir / LEDGER_FILE) as full:
            assert full.root(leader.ledger.size) == leader.ledger.root()
    finally:
        for n in nodes:
            await n.stop()


def test_leader_cut_off_mid_round_is_replaced(tmp_path: Path) -> None:
    asyncio.run(_failover(tmp_path))


def test_outsider_messages_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, net, _ = await cluster(tmp_path, 3, seed=2)
        try:
            await start(nodes, run_config(1, 2))
            mallory = NodeIdentity.generate("mallory")
            t = InProcessTransport(net, mallory.node_id)
            assert nodes[0].machine is not None
            actions = nodes[0].machine.on_message(
                mallory.node_id,
                StartRun({}),
                0.0,  # type: ignore[arg-type]
            )
            assert "non-member" in actions[0].text  # type: ignore[union-attr]
            del t
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


@pytest.mark.parametrize("n", [3])
def test_all_replicas_identical_afterrun_config(tmp_path: Path, n: int) -> None:
    async def go() -> None:
        nodes, net, clock = await cluster(tmp_path, n, seed=5)
        try:
            await start(nodes, run_config(2, 5))
            await drive(nodes, net, clock)
            assert len(_roots(nodes)) == 1
            assert all(n.ledger.size == 4 for n in nodes)  # genesis, run-config, 2 rounds
            final = nodes[0].ledger.latest_final_head()
            assert final is not None and final.head.size == 4
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(go())

"""End to end: real node processes over gRPC with mutual TLS; faults by killing them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from consortium.audit import audit
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.learning import build_model, evaluate, load_dataset, set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.node import run_records
from consortium.node.runner import start_run
from consortium.node.sim import Cluster, create_consortium
from consortium.protocol.record import RoundRecord
from consortium.protocol.schedule import leader_for
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes

pytestmark = pytest.mark.slow


def _records(d: Path) -> list[RoundRecord]:
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return run_records(ledger)


def _wait(cond: object, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not cond():  # type: ignore[operator]
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def _run(rounds: int) -> RunConfig:
    return RunConfig(
        rounds=rounds,
        lr=0.1,
        epochs=2,
        min_updates=2,
        collect_timeout=3.0,
        round_timeout=8.0,
        started=int(time.time() * 1000),
    )


def _accuracy(d: Path, model_cid: object) -> float:
    ds = load_dataset("digits")
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=0)
    set_weights(model, weights_from_bytes(get_bytes(BlockStore(d / STORE_DIR), model_cid)))  # type: ignore[arg-type]
    return evaluate(model, ds.x_test, ds.y_test)[1]


def test_processes_train_over_grpc_and_survive_faults(tmp_path: Path) -> None:
    dirs = create_consortium(tmp_path, 4, alpha=0.5, seed=0)
    cluster = Cluster(dirs)
    run = _run(6)
    try:
        cluster.start_all()
        cluster.wait_ready()
        assert asyncio.run(start_run(dirs[0], None, run))["started"]
        _wait(lambda: len(_records(dirs[0])) >= 1, 90, "round 1")

        # Kill a non-leader of the next round: the round completes without it.
        with Ledger.open(dirs[0] / LEDGER_FILE) as ledger:
            root, size = ledger.root(), ledger.size
        from consortium.core.genesis import Genesis

        members = sorted(m.node_id for m in Genesis.load(dirs[0] / "genesis.json").members)
        ids = [Genesis.load(d / "genesis.json").member_by_name(d.name).node_id for d in dirs]
        nxt = len(_records(dirs[0])) + 1
        leader = ids.index(leader_for(root, nxt, 0, members))
        victim = next(i for i in range(4) if i not in (leader, 0))
        cluster.kill(victim)
        # It may have sent its update for round nxt before dying; round nxt+1 it misses entirely.
        _wait(
            lambda: len(_records(dirs[0])) >= nxt + 1, 90, f"round {nxt + 1} without node{victim}"
        )
        rec = _records(dirs[0])[nxt]
        assert ids[victim] not in rec.participants
        assert len(rec.participants) == 3

        # Restart it: it catches up the ledger and the latest model from its peers and rejoins.
        cluster.start(victim)
        _wait(lambda: len(_records(dirs[victim])) >= nxt, 60, "restarted node to catch up")

        # Kill the leader of the round after: the next member in the order completes it.
        with Ledger.open(dirs[0] / LEDGER_FILE) as ledger:
            root = ledger.root()
        nxt = len(_records(dirs[0])) + 1
        if nxt <= run.rounds:
            leader = ids.index(leader_for(root, nxt, 0, members))
            watcher = next(i for i in range(4) if i != leader)
            cluster.kill(leader)
            _wait(lambda: len(_records(dirs[watcher])) >= nxt, 90, f"round {nxt} after leader loss")
            rec = _records(dirs[watcher])[nxt - 1]
            assert rec.leader != ids[leader] and rec.attempt >= 1
            cluster.start(leader)
        else:
            watcher = 0
        _wait(lambda: len(_records(dirs[watcher])) >= run.rounds, 120, "the run to finish")
        del size
    finally:
        cluster.stop_all()
    records = _records(dirs[watcher])
    assert [r.round for r in records] == list(range(1, run.rounds + 1))
    acc = _accuracy(dirs[watcher], records[-1].model)
    assert acc > 0.7, f"federated accuracy {acc:.3f} below floor"
    report = audit(dirs[watcher])
    assert report.entries == run.rounds + 1 and report.final_heads == run.rounds
    # The node that crashed and caught up holds every artifact too (fetched and re-hashed).
    assert audit(dirs[victim]).entries >= 4

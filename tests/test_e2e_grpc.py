"""End to end: real node processes over gRPC with mutual TLS; faults by killing them.

Five members, so quorum is 4 and a round tolerates one member down (at n = 4 a round that needs
a dishonest-third floor tolerates none). The test waits on conditions (the ledgers the nodes
write) with generous deadlines, never on timings: 5 node processes share 2 busy cores here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from consortium.audit import audit
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.learning import build_model, evaluate, load_dataset, set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.runner import start_run
from consortium.node.sim import Cluster, create_consortium, member_shares, scheduled_leader
from consortium.protocol.record import RoundRecord, run_records
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes

pytestmark = pytest.mark.slow

N = 5
#: Enough that rounds remain for the leader kill after the first victim's restart (a node process
#: takes many seconds to start on a busy machine, and the others keep committing meanwhile).
ROUNDS = 16
#: Seconds any one condition may take to come true: generous, the machine is slow and busy.
DEADLINE = 300.0


def _records(d: Path) -> list[RoundRecord]:
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return run_records(ledger)


def _state(d: Path) -> tuple[int, int, bytes]:
    """(ledger size, rounds committed, root) of a node's folder, read at one moment."""
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return ledger.size, len(run_records(ledger)), ledger.root()


def _size(d: Path) -> int:
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return ledger.size


def _wait(cluster: Cluster, cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > end:
            logs = "\n".join(
                f"--- {d.name} (alive: {i in cluster.alive()}):\n"
                + (d / "node.log").read_text(errors="replace")[-1500:]
                for i, d in enumerate(cluster.dirs)
            )
            raise AssertionError(f"timed out after {DEADLINE:.0f} s waiting for {what}\n{logs}")
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
    dirs = create_consortium(tmp_path, N, alpha=0.5, seed=0)
    genesis = Genesis.load(dirs[0] / GENESIS_FILE)
    assert genesis.quorum == N - 1
    ids = [genesis.member_by_name(d.name).node_id for d in dirs]
    # Nodes serve on after the run, so a node restarted late still catches up; stopped below.
    cluster = Cluster(dirs, exit_when_finished=False)
    run = _run(ROUNDS)

    def caught_up(i: int) -> Callable[[], bool]:
        """node i holds at least as many entries as every other member (they go on meanwhile)."""
        return lambda: _size(dirs[i]) >= max(_size(d) for d in dirs if d != dirs[i])

    try:
        cluster.start_all()
        cluster.wait_ready(DEADLINE)
        report = asyncio.run(start_run(dirs[0], None, run))
        assert report["started"], report
        run_id = report["run"]  # the agreed config's id (the proposer pins the task's hash)
        shares = member_shares(dirs, genesis)  # this disk holds every member's keys
        _wait(cluster, lambda: _state(dirs[0])[1] >= 1, "round 1")

        # 1. Kill a member that does not lead the next round: the rounds go on without it.
        _, committed, _ = _state(dirs[0])
        leader = ids.index(scheduled_leader(genesis, shares, run_id, committed + 1))
        victim = next(i for i in range(1, N) if i != leader)
        cluster.kill(victim)
        # It had not committed round `had` + 1, so it never began (sent an update in) any round
        # after that one.
        had = _state(dirs[victim])[1]
        without = f"round {had + 2} without node{victim}"
        _wait(cluster, lambda: _state(dirs[0])[1] >= had + 2, without)
        rec = _records(dirs[0])[had + 1]
        assert rec.round == had + 2
        assert ids[victim] not in rec.participants

        # 2. Restart it: it catches up (ledger and models, from its peers) before anything else.
        cluster.start(victim)
        _wait(cluster, caught_up(victim), f"node{victim} to catch up")

        # 3. Kill the leader of a round as the round starts, never the member restarted last:
        # a later attempt's leader completes the round, wherever the dead one had got to (even
        # past its members signing its survivor set: they may leave out a leader of an attempt
        # in which they signed).
        killed, last = None, victim
        while killed is None:
            seen = _state(dirs[0])[1]
            _wait(cluster, lambda s=seen: _state(dirs[0])[1] > s, f"round {seen + 1}")
            size, committed, _ = _state(dirs[0])
            nxt = committed + 1
            assert nxt <= ROUNDS, "no round left in which to kill a leader: raise ROUNDS"
            candidate = ids.index(scheduled_leader(genesis, shares, run_id, nxt))
            if candidate == last:
                continue
            cluster.kill(candidate)
            if _state(dirs[candidate])[1] >= nxt:  # it had committed round nxt: too late
                cluster.start(candidate)
                _wait(cluster, caught_up(candidate), f"node{candidate} to catch up")
                last = candidate
                continue
            killed = candidate
        watcher = next(i for i in range(N) if i != killed)
        _wait(cluster, lambda: _state(dirs[watcher])[1] >= nxt, f"round {nxt} after leader loss")
        rec = _records(dirs[watcher])[nxt - 1]
        assert (rec.round, rec.slot) == (nxt, size)  # the round whose leader was computed
        # Its leader is the scheduled one of its attempt: a later attempt's, unless that leader
        # re-proposed the entry the dead one had proposed (participants had cosigned it).
        assert rec.leader == scheduled_leader(genesis, shares, run_id, nxt, rec.attempt)

        # 4. Restart it; the run finishes, and every member, both restarted ones included,
        # holds the whole run before the cluster is stopped.
        cluster.start(killed)
        _wait(
            cluster,
            lambda: all(_state(d)[1] >= ROUNDS for d in dirs),
            "every member to hold the whole run",
        )
    finally:
        cluster.stop_all()

    # Every folder audits clean (every artifact fetched and re-hashed), with one root.
    reports = [audit(d) for d in dirs]
    assert {r.root for r in reports} == {reports[0].root}
    for r in reports:
        # genesis, the agreed run-config entry, one entry per round
        assert r.entries == ROUNDS + 2 and r.latest_final_size == ROUNDS + 2
    records = _records(dirs[watcher])
    assert [r.round for r in records] == list(range(1, ROUNDS + 1))
    acc = _accuracy(dirs[watcher], records[-1].model)
    assert acc > 0.7, f"federated accuracy {acc:.3f} below floor"

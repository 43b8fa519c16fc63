"""An engineer's own model and CSV data, end to end: a task package outside the repository, CSV
files with text record ids described in each node.toml, consent imported by those ids.

- over gRPC between node processes (slow): one subject withdraws mid-run (while node0 trains round
  1, which the task holds until the withdrawal is stored, so the order is fixed, not raced) and
  round 2 commits to one record fewer; every folder audits clean (consent registries with text
  ids included) and the model comes out through `consortium model export` / `evaluate`;
- in process: a node whose CSV has a malformed row refuses the proposal saying which line (the
  proposer's report names it) and sits the run out.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from consortium.audit import audit
from consortium.cli.app import app
from consortium.consent import (
    ConsentRegistry,
    build_report,
    check_receipt,
    receipt_from_registry,
)
from consortium.consent.commitments import roots_from_records
from consortium.core.identity import PublicIdentity
from consortium.core.layout import CONSENT_FILE, LEDGER_FILE, NODE_CONFIG_FILE, STATUS_FILE
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.runner import start_run
from consortium.node.sim import Cluster, create_consortium
from consortium.protocol.record import RoundRecord, run_records
from tests.inprocess_cluster import drive, run_config, start_nodes

runner = CliRunner()
PACKAGE = "csvtask_e2e"
TASK = f"{PACKAGE}.task:task"
TASK_SOURCE = """
import os
import time
from pathlib import Path

import torch

from consortium.learning.loaders import table_data
from consortium.learning.task import Task
from consortium.learning.train import train_local

_calls = 0


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def train(model, examples, cfg, weights):
    # Test gate: node0 (records "H0/...") says when it trains its first round, then waits
    # until the test says go; so a withdrawal made meanwhile falls between round 1's consent
    # selection and round 2's, whatever the machine's speed.
    global _calls
    _calls += 1
    gate = os.environ.get("CSVTASK_GATE")
    if gate and _calls == 1 and str(examples.record_ids[0]).startswith("H0/"):
        (Path(gate) / "training").touch()
        end = time.monotonic() + 300
        while not (Path(gate) / "go").exists() and time.monotonic() < end:
            time.sleep(0.05)
    return train_local(model, examples.x, examples.y, cfg, weights)


task = Task("csv-outcome", model=model, data=table_data, train=train)
"""
TABLE = """
[data.table]
format = "csv"
train = "train.csv"
test = "test.csv"
record_id = "patient"
features = ["age", "bmi", "glucose", "pressure"]
label = "outcome"
"""
#: Seconds any one condition may take to come true (node processes share 2 busy cores).
DEADLINE = 300.0


def write_package(root: Path) -> Path:
    """The engineer's task package, in a folder of its own (never inside this repository)."""
    pkg = root / "pkgs" / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TASK_SOURCE)
    return root / "pkgs"


def rows(node: int, n: int, seed: int) -> list[tuple[str, list[float], int]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return [(f"H{node}/MRN-{k:04d}", [round(v, 4) for v in x[k]], int(y[k])) for k in range(n)]


def write_csv(path: Path, data: list[tuple[str, list[float], int]]) -> None:
    lines = ["patient,age,bmi,glucose,pressure,outcome"]
    lines += [f"{rid},{','.join(str(v) for v in x)},{y}" for rid, x, y in data]
    path.write_text("\n".join(lines) + "\n")


def own_data(dirs: list[Path], train: int = 60, *, consent: bool = True) -> None:
    """Each node's own CSVs and node.toml [data.table]; its subjects' consent, imported from a
    CSV of text record ids with `consortium consent import`."""
    for i, d in enumerate(dirs):
        data = d.parent / f"{d.name}-data"
        data.mkdir()
        mine = rows(i, train, seed=i)
        write_csv(data / "train.csv", mine)
        write_csv(data / "test.csv", rows(i, 30, seed=100 + i))
        toml = (d / NODE_CONFIG_FILE).read_text()
        policy = toml[toml.index("[policy]") :] if "[policy]" in toml else ""
        (d / NODE_CONFIG_FILE).write_text(
            ("" if consent else 'consent = "off"\n')
            + f'[data]\ndata_dir = "{data}"\n{TABLE}\n{policy}'
        )
        if consent:
            grants = ["subject,record_id,purposes,granted,expires"]
            grants += [f"S-{rid},{rid},research,2020-01-01," for rid, _, _ in mine]
            (data / "consent.csv").write_text("\n".join(grants) + "\n")
            res = runner.invoke(
                app, ["consent", "import", str(data / "consent.csv"), "--dir", str(d)]
            )
            assert res.exit_code == 0, res.output


def records(d: Path) -> list[RoundRecord]:
    with Ledger.open(d / LEDGER_FILE, readonly=True) as ledger:
        return run_records(ledger)


def wait(cluster: Cluster, cond: object, what: str) -> None:
    assert callable(cond)
    end = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > end:
            logs = "\n".join(
                f"--- {d.name}:\n" + (d / "node.log").read_text(errors="replace")[-1500:]
                for d in cluster.dirs
            )
            raise AssertionError(f"timed out after {DEADLINE:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.2)


@pytest.mark.slow
def test_own_task_and_csv_over_grpc_with_a_withdrawal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkgs = write_package(tmp_path)
    # The node processes import the task from the engineer's installation (here: a folder on
    # their PYTHONPATH); this test process does too, to evaluate the model afterwards.
    paths = [str(pkgs), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.syspath_prepend(str(pkgs))
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("CSVTASK_GATE", str(gate))
    dirs = create_consortium(tmp_path / "c", 3, consent=False)
    own_data(dirs)
    node0 = PublicIdentity.load(dirs[0] / "node.pub").node_id
    rounds = 4
    run = RunConfig(
        task=TASK,
        rounds=rounds,
        lr=0.1,
        epochs=2,
        # Long enough that the leader waits for node0 while the test withdraws (a round whose
        # updates have all arrived closes at once, so this costs nothing otherwise).
        collect_timeout=60.0,
        round_timeout=120.0,
        started=int(time.time() * 1000),
    )
    cluster = Cluster(dirs)
    try:
        cluster.start_all()
        cluster.wait_ready(DEADLINE)
        report = asyncio.run(start_run(dirs[0], None, run))
        assert report["started"], report
        wait(cluster, lambda: (gate / "training").exists(), "node0 to train round 1")
        # A data subject of node0 withdraws while node0 trains round 1 (its consent selection
        # is made): from the next round, node0 commits to (and trains on) one record fewer.
        res = runner.invoke(app, ["consent", "withdraw", "S-H0/MRN-0007", "--dir", str(dirs[0])])
        assert res.exit_code == 0, res.output
        assert not records(dirs[0])  # round 1 waited for node0: the order is fixed
        (gate / "go").touch()
        wait(cluster, lambda: all(len(records(d)) >= rounds for d in dirs), "every round")
        wait(cluster, lambda: not cluster.alive(), "the nodes to exit")
    finally:
        cluster.stop_all()

    done = records(dirs[0])
    assert [r.round for r in done] == list(range(1, rounds + 1))
    with ConsentRegistry(dirs[0] / CONSENT_FILE) as reg:  # the nodes have exited
        (withdrawal,) = [e.seq for e in reg.history("S-H0/MRN-0007") if e.kind == "withdraw"]
        saw = {r.round: r.events for r in reg.rounds()}  # ledger slot -> history it saw
        receipt = receipt_from_registry(reg, "S-H0/MRN-0007", node0)
        report = build_report(reg)
    # "From the next round": the first whose selection saw the withdrawal (the history a round
    # saw is what its commitment's head fixes on the ledger), and every round after it.
    counts = [(saw[r.slot] >= withdrawal, r.consent[node0].count) for r in done]
    assert counts == [(False, 60)] + [(True, 59)] * (rounds - 1)
    (change,) = report.changes
    assert change.kind == "withdraw" and change.effective_round == done[1].slot
    # The subject's receipt proves it against the ledger, round by round.
    roots = roots_from_records(((r.slot, r.consent) for r in done), node0)
    verdicts = check_receipt(receipt, roots)
    assert [v.status == "used" for v in verdicts] == [not after for after, _ in counts]

    reports = [audit(d) for d in dirs]  # consent registries keyed by text ids included
    assert len({r.root for r in reports}) == 1

    out = tmp_path / "model.safetensors"
    res = runner.invoke(app, ["model", "export", str(dirs[1]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    model.load_state_dict(load_file(out))
    res = runner.invoke(app, ["model", "evaluate", str(dirs[1]), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["task"] == TASK and got["examples"] == 30 and got["round"] == rounds
    assert got["metrics"]["accuracy"] > 0.6  # a separable problem: the model learnt something


def test_a_node_whose_csv_has_a_malformed_row_sits_the_run_out_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(write_package(tmp_path)))

    dirs = create_consortium(
        tmp_path / "c", 3, seed=3, reproducible=True, consent=False, allow_plaintext=True
    )
    own_data(dirs, consent=False)
    bad = dirs[2].parent / f"{dirs[2].name}-data" / "train.csv"
    lines = bad.read_text().splitlines()
    fields = lines[6].split(",")
    lines[6] = ",".join([*fields[:2], "NaN", *fields[3:]])  # line 7, column bmi
    bad.write_text("\n".join(lines) + "\n")

    async def go() -> None:
        nodes, net, clock = await start_nodes(dirs)
        try:
            run = run_config(2).model_copy(update={"task": TASK, "task_hash": ""})
            report = await nodes[0].propose_run(run)
            # node2 says so when it answers the proposal (`run start` prints it); the two others
            # are a quorum, so the run starts without it: no member vetoes a run this way.
            assert report["started"] and report["accepted"] == ["node0", "node1"], report
            assert set(report["refused"]) == {"node2"}, report
            why = report["refused"]["node2"]
            assert f"cannot load its data for task {TASK!r}" in why and "[rule task-data]" in why
            assert "train.csv line 7: column 'bmi' holds 'NaN'" in why, why
            await drive(nodes[:2], net, clock)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())
    status = json.loads((dirs[2] / STATUS_FILE).read_text())
    assert "sitting this run out" in status["stopped"]
    assert "train.csv line 7: column 'bmi' holds 'NaN', which is not a finite" in status["stopped"]
    assert [len(r.participants) for r in records(dirs[0])] == [2, 2]

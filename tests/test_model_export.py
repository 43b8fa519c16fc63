"""`consortium model export` and `model evaluate` on real run folders.

The folders come from real in-process runs: run A (2 rounds); then a data subject of node1 is
erased and run B retrains from the checkpoint before their first use (as the demo does), which
supersedes every round of A; then run C restarts from the model before B's round 2 (so it
supersedes B's round 2 only). The commands go through typer's runner.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from consortium.consent import erase_subject
from consortium.consent.erasure import checkpoint_for
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.learning.builtin import builtin_task
from consortium.learning.task import build_model, evaluate_task, load_data
from consortium.ledger.log import Ledger
from consortium.node.config import load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium, synthetic_subject
from consortium.protocol.record import RoundRecord
from consortium.store.cid import cid_key
from consortium.store.objects import file_cid
from tests.cli_support import cli, words
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.records import ledger_records


async def _stop(nodes: list[Node]) -> None:
    for n in nodes:
        await n.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("models")
    out: dict[str, object] = {}

    async def go() -> None:
        nodes, net, clock = await cluster(root / "c", 3, 5)
        try:
            a = run_config(2, 0)
            await start(nodes, a)
            await drive(nodes, net, clock)
            node1 = nodes[1]
            assert node1.registry is not None and node1.learner is not None
            subject = synthetic_subject(1, int(node1.learner.record_ids[0]))
            clock.now += 1.0
            er = erase_subject(node1.registry, subject, at=clock.now)
            old = [r for r in ledger_records(node1.dir) if r.run == a.run_id()]
            checkpoint, redo = checkpoint_for(er, [r.ref() for r in old])
            assert checkpoint == old[0].prev_model and redo == 2  # used since round 1
            b = run_config(redo, 0).model_copy(
                update={"initial_model": str(checkpoint), "started": 2}
            )
            await start(nodes, b)
            await drive(nodes, net, clock)
            b_rounds = [r for r in ledger_records(node1.dir) if r.run == b.run_id()]
            c = run_config(1, 0).model_copy(
                update={"initial_model": str(b_rounds[1].prev_model), "started": 3}
            )
            await start(nodes, c)
            await drive(nodes, net, clock)
            out.update(folder=nodes[0].dir, a=a.run_id(), b=b.run_id(), c=c.run_id())
        finally:
            await _stop(nodes)

    asyncio.run(go())
    yield out


def folder(runs: dict[str, object]) -> Path:
    f = runs["folder"]
    assert isinstance(f, Path)
    return f


def the_round(runs: dict[str, object], run: str, round_no: int) -> RoundRecord:
    return next(
        r for r in ledger_records(folder(runs)) if r.run == runs[run] and r.round == round_no
    )


def test_export_writes_the_ledgers_model_which_load_state_dict_accepts(
    runs: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "model.safetensors"
    code, stdout, stderr = cli("model", "export", str(folder(runs)), "--out", str(out))
    assert code == 0, stderr
    latest = the_round(runs, "c", 1)  # the latest run's last round
    text = words(stdout)
    assert f"round 1 of run {runs['c']}" in text and cid_key(latest.model) in text
    data = out.read_bytes()
    assert file_cid(data) == latest.model  # the file re-hashes to the ledger's CID
    model, _ = build_model(builtin_task("digits", "mlp"), 0)
    model.load_state_dict(load_file(out))  # strict: every key, every shape
    state = model.state_dict()
    assert all(state[k].dtype == torch.float32 for k in state)


def test_a_model_superseded_by_an_erasures_retraining_is_refused(
    runs: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "a.safetensors"
    for round_no in ("1", "2"):
        code, _, stderr = cli(
            "model", "export", str(folder(runs)), "--run", str(runs["a"]), "--round", round_no,
            "--out", str(out),
        )  # fmt: skip
        text = words(stderr)
        assert code == 1 and "superseded" in text, text
        assert f"run {runs['b']}" in text and "before round 1" in text
        assert "1 erased record(s)" in text and "--allow-superseded" in text
        assert not out.exists()  # nothing written
    code, stdout, _ = cli(
        "model", "export", str(folder(runs)), "--run", str(runs["a"]), "--out", str(out),
        "--allow-superseded",
    )  # fmt: skip
    assert code == 0 and "note: superseded" in words(stdout)
    assert file_cid(out.read_bytes()) == the_round(runs, "a", 2).model


def test_a_restart_supersedes_only_the_rounds_after_its_checkpoint(
    runs: dict[str, object], tmp_path: Path
) -> None:
    """Run C restarted from the model before B's round 2: B's round 1 stays exportable."""
    out = tmp_path / "b1.safetensors"
    base = ("model", "export", str(folder(runs)), "--run", str(runs["b"]))
    code, _, stderr = cli(*base, "--round", "1", "--out", str(out))
    assert code == 0, stderr
    assert file_cid(out.read_bytes()) == the_round(runs, "b", 1).model
    code, _, stderr = cli(*base, "--round", "2", "--out", str(tmp_path / "b2"))
    text = words(stderr)
    assert code == 1 and f"run {runs['c']}" in text and "before round 2" in text
    assert "erased" not in text  # C's rounds record no erasure


def test_export_refuses_to_overwrite_unless_forced(runs: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"keep me")
    code, _, stderr = cli("model", "export", str(folder(runs)), "--out", str(out))
    assert code == 2 and "exists; pass --force" in words(stderr)
    assert out.read_bytes() == b"keep me"
    code, _, _ = cli("model", "export", str(folder(runs)), "--out", str(out), "--force")
    assert code == 0 and file_cid(out.read_bytes()) == the_round(runs, "c", 1).model
    code, _, stderr = cli("model", "export", str(folder(runs)), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in words(stderr)


def test_unknown_rounds_runs_and_folders_are_one_line_each(
    runs: dict[str, object], tmp_path: Path
) -> None:
    f, out = str(folder(runs)), str(tmp_path / "m")
    cases = [
        (("model", "export", f, "--round", "9", "--out", out), "has no round 9"),
        (("model", "export", f, "--run", "feedbeef", "--out", out), "no run feedbeef"),
        (("model", "evaluate", f, "--round", "9"), "has no round 9"),
        (("model", "export", str(tmp_path), "--out", out), "is not a node folder"),
        (("model", "evaluate", str(tmp_path / "nope")), "no such folder"),
    ]
    for args, expected in cases:
        code, _, stderr = cli(*args)
        assert code != 0 and expected in words(stderr), (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert not Path(out).exists()


def test_a_folder_without_a_run_says_so(tmp_path: Path) -> None:
    d = create_consortium(tmp_path, 3, consent=False)[0]
    Ledger.create(d / LEDGER_FILE, Genesis.load(d / GENESIS_FILE)).close()
    code, _, stderr = cli("model", "export", str(d), "--out", str(tmp_path / "m"))
    assert code == 1 and "no run on the ledger" in words(stderr)


def test_a_damaged_model_block_is_refused_and_nothing_written(
    runs: dict[str, object], tmp_path: Path
) -> None:
    copy = tmp_path / "node"
    shutil.copytree(folder(runs), copy)
    cid = the_round(runs, "c", 1).model
    path = next(p for p in (copy / STORE_DIR).rglob("*") if p.is_file() and cid_key(cid) in p.name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    out = tmp_path / "m.safetensors"
    code, _, stderr = cli("model", "export", str(copy), "--out", str(out))
    assert code != 0 and cid_key(cid) in words(stderr), stderr
    assert not out.exists()


def test_evaluate_reports_the_models_accuracy_on_the_nodes_test_data(
    runs: dict[str, object],
) -> None:
    code, stdout, stderr = cli("model", "evaluate", str(folder(runs)), "--json")
    assert code == 0, stderr
    got = json.loads(stdout)
    assert got["run"] == runs["c"] and got["round"] == 1 and got["superseded"] is None
    # The same figure computed here from the ledger's model and the task's test split.
    task = builtin_task("digits", "mlp")
    model, _ = build_model(task, 0)
    out = folder(runs).parent / "eval.safetensors"
    assert cli("model", "export", str(folder(runs)), "--out", str(out), "--force")[0] == 0
    model.load_state_dict(load_file(out))
    test = load_data(task, load_node_config(folder(runs)).data.context("node0"))[1]
    assert got["examples"] == len(test)
    assert got["metrics"] == pytest.approx(evaluate_task(task, model, test))
    assert 0.0 <= got["metrics"]["accuracy"] <= 1.0
    code, stdout, _ = cli(
        "model", "evaluate", str(folder(runs)), "--run", str(runs["a"]), "--round", "1"
    )
    assert code == 0 and "accuracy" in stdout and "note: superseded" in words(stdout)


TASK = """
import numpy as np
import torch

from consortium.learning.task import Examples, NodeContext, Task


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def split(seed: int, n: int) -> Examples:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return Examples(x, y, np.arange(n, dtype=np.int64))


def data(node: NodeContext) -> tuple[Examples, Examples]:
    return split(node.index, 96), split(100 + node.index, 40)


task = Task("evaltask", model=model, data=data)
"""


def test_evaluate_refuses_a_task_whose_sources_differ_from_the_pinned_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engineer's own task (a package outside the repository): evaluation goes through it,
    and only as the run pinned it."""
    pkg = tmp_path / "pkgs" / "evaltask_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TASK)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))

    async def go() -> Path:
        nodes, net, clock = await cluster(tmp_path / "c", 3, 9, consent=False)
        try:
            run = run_config(1, 0).model_copy(
                update={"task": "evaltask_models.task:task", "task_hash": ""}
            )
            await start(nodes, run.pinned())
            await drive(nodes, net, clock)
            return nodes[2].dir
        finally:
            await _stop(nodes)

    node2 = asyncio.run(go())
    code, stdout, stderr = cli("model", "evaluate", str(node2), "--json")
    assert code == 0, stderr
    got = json.loads(stdout)
    assert got["task"] == "evaltask_models.task:task" and got["examples"] == 40
    assert 0.0 <= got["metrics"]["accuracy"] <= 1.0
    (pkg / "task.py").write_text(TASK + "# edited after the run\n")
    code, _, stderr = cli("model", "evaluate", str(node2))
    text = words(stderr)
    assert code == 2 and "installed here has code hash" in text and "the run pins sha256:" in text

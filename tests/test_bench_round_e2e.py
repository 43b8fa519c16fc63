"""`consortium bench round-e2e` at tiny sizes (no Flower), and the pieces it is built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consortium.bench import fixed_task, round_e2e
from consortium.cli.bench import load_script
from consortium.core.encoding import Domain
from consortium.core.identity import NodeIdentity, verify_signature
from consortium.learning.task import NodeContext, TaskError, load_task, train_task
from consortium.learning.train import TrainConfig

DIGEST = bytes(32)  # a consortium's genesis digest, for a consortium-bound signature


def test_fixed_task_returns_the_members_vector_whatever_it_is_given() -> None:
    task = load_task(fixed_task.task_spec(7))
    assert task.name == "fixed-vector/7" and task.source == "consortium.bench.fixed_task"
    train, _ = task.data(NodeContext(index=3))
    model = task.model()
    result = train_task(task, model, train, TrainConfig(), None)
    got = np.concatenate([p.detach().numpy() for p in model.parameters()])
    assert np.array_equal(got, fixed_task.member_vector(3, 7)) and result.num_samples == 1


def test_fixed_task_names_only_vector_sizes() -> None:
    with pytest.raises(TaskError, match="no attribute"):
        load_task("consortium.bench.fixed_task:vector_0")
    with pytest.raises(TaskError, match="no attribute"):
        load_task("consortium.bench.fixed_task:vectors")


def test_counting_verifications_counts_and_restores(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("a", "127.0.0.1:1")
    sig = ident.sign(Domain.MESSAGE, {"x": 1}, DIGEST)
    counter = round_e2e.VerifyCounter()
    with round_e2e.counting_verifications(counter):
        for _ in range(3):
            verify_signature(ident.public_key, Domain.MESSAGE, {"x": 1}, sig, DIGEST)
    verify_signature(ident.public_key, Domain.MESSAGE, {"x": 1}, sig, DIGEST)  # not counted
    assert counter.ed25519 == 3


def test_round_e2e_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.md"
    argv = ["--n", "4", "--d", "50", "--rounds", "2", "--grpc-n", "", "--compare-n", "4"]
    assert load_script("round-e2e").main([*argv, "--no-flower", "--out", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    rows = [ln for ln in table.splitlines() if ln.startswith("| ours, in-process")]
    assert len(rows) == 2  # the default setting, and the sparse one at --compare-n
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "4" and cells[4] == "1"  # round 2 timed
        assert float(cells[5]) > 0 and float(cells[7].split()[0]) > 0
        assert int(cells[9].split()[0]) > 0  # signatures were verified, and counted
    assert "Flower not run (--no-flower)" in table
    assert "replicas disagree" not in table and "unfinished" not in table
    floor = next(ln for ln in table.splitlines() if "floor: one contributor's commitment" in ln)
    assert "an MSM of length 50" in floor and "the 4 contributors' commitments" in floor


def test_the_floor_names_the_target_it_misses() -> None:
    script = load_script("round-e2e")
    flower = script.Row("Flower 1.41 SecAgg+, Ray simulation", 100, "shares 15, t 8", 14, 8)
    flower.latencies = [0.3, 0.3]
    lines = script.floor_lines([flower], 100, 50)
    assert lines[1].startswith("3x faster than Flower (shares 15, t 8, 0.30 s) asks for 0.10 s")

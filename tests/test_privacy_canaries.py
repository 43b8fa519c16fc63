"""One-run DP auditing (`audit.privacy.one_run`, `audit.privacy.canaries`, `--canaries m`): the
bound against known values, and canary runs made from real run folders: an undefended run
(plaintext, no DP) gives a positive bound; a SecAgg+ run with record-level DP never a bound above
its accountant's ε; a bound above the claimed ε is reported as a defect."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom
from typer.testing import CliRunner

from consortium.audit.privacy.canaries import CanaryAudit, CanarySettings, audit_canaries
from consortium.audit.privacy.one_run import cap, epsilon_lower_bound, guesses, p_value
from consortium.cli.app import app
from consortium.core.genesis import Purpose
from consortium.ui.privacy import canary_summary
from tests.inprocess_cluster import cluster, drive, run_config, start

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the bound -------------------------------------------------------------------------------


def test_the_bound_with_every_guess_right_is_the_cap() -> None:
    # δ = 0: every guess right has probability q^r under ε-DP, q = e^ε/(1+e^ε); the bound is
    # the ε with q^r = β.
    for m in (100, 1000):
        q = 0.05 ** (1 / m)
        closed = math.log(q / (1 - q))
        assert epsilon_lower_bound(m, m, m, 0.0) == pytest.approx(closed, abs=1e-6)
        assert cap(m, m, 0.0) == epsilon_lower_bound(m, m, m, 0.0)
    # The limit a few hundred canaries set (issue 17: "cannot show more than ε ≈ 3-6").
    assert 3.4 < cap(100, 100, 1e-5) < 3.6 and 5.7 < cap(1000, 1000, 1e-5) < 5.9
    # δ only lowers what can be shown.
    assert cap(1000, 1000, 1e-5) < cap(1000, 1000, 0.0)


def test_the_bound_against_known_values() -> None:
    # The example of the paper's Appendix D (m = 1000, r = 100, v = 75, δ = 1e-4): 0.673.
    assert epsilon_lower_bound(1000, 100, 75, 1e-4) == pytest.approx(0.673, abs=5e-4)
    # At ε = 0, δ = 0 the right guesses are Binomial(r, 1/2).
    assert p_value(100, 100, 60, 0.0, 0.0) == pytest.approx(float(binom.sf(59, 100, 0.5)))
    # Half right (or fewer) proves nothing; more right, a higher bound.
    assert epsilon_lower_bound(100, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(100, 100, 30, 1e-5) == 0.0
    bounds = [epsilon_lower_bound(100, 100, v, 1e-5) for v in range(55, 101, 5)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    # The bound rejects what it claims: its p-value is below 5%, and just above it is not.
    b = epsilon_lower_bound(200, 200, 150, 1e-5)
    assert p_value(200, 200, 150, b, 1e-5) < 0.05 <= p_value(200, 200, 150, b + 1e-6, 1e-5)
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 20, 5, 0.0)


def test_guesses_take_the_highest_in_and_the_lowest_out() -> None:
    scores = np.array([0.5, 3.0, -1.0, 2.0, 0.0, -2.0])
    pos, guess = guesses(scores, 4)
    assert pos.tolist() == [1, 3, 2, 5] and guess.tolist() == [True, True, False, False]
    pos, guess = guesses(scores, 6)
    assert sorted(pos.tolist()) == list(range(6)) and int(guess.sum()) == 3
    pos, guess = guesses(scores, 1)
    assert pos.tolist() == [1] and guess.tolist() == [True]


# -- canary runs -----------------------------------------------------------------------------


def _make(root: Path, secure: str, privacy: dict[str, object] | None, epochs: int) -> Path:
    async def go() -> Path:
        purpose = Purpose("research", 7.0, 1e-5) if privacy else None
        nodes, net, clock = await cluster(root, 3, 81, consent=False, purpose=purpose)
        try:
            cfg = run_config(3 if privacy else 4, 0, secure=secure, privacy=privacy)
            await start(nodes, cfg.model_copy(update={"epochs": epochs, "task_hash": ""}).pinned())
            await drive(nodes, net, clock)
        finally:
            for n in nodes:
                await n.stop()
        return nodes[0].dir

    return asyncio.run(go())


@pytest.fixture(scope="module")
def undefended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node0's folder after a plaintext run without DP that trains long enough to memorise."""
    return _make(tmp_path_factory.mktemp("undefended"), "none", None, epochs=10)


@pytest.fixture(scope="module")
def defended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node0's folder after a SecAgg+ run with record-level DP-SGD (z = 1, 3 rounds)."""
    dp = {"unit": "record", "noise_multiplier": 1.0, "clip_norm": 1.0}
    return _make(tmp_path_factory.mktemp("defended"), "secagg+", dp, epochs=2)


def test_an_undefended_run_gives_a_positive_bound(undefended: Path) -> None:
    a = audit_canaries(undefended, CanarySettings(canaries=100))
    assert a.canaries == a.guesses == 100 and 30 < a.included < 70
    assert a.config.secure_aggregation == "none" and a.config.privacy.unit == "none"
    assert a.rounds == 4 and a.members == 3
    assert a.correct > 60 and a.epsilon_lower > 0
    assert a.claimed is None and not a.defect  # no guarantee claimed: nothing to contradict
    assert a.epsilon_lower < a.cap == cap(100, 100, a.delta)
    # Deterministic for a seed: plaintext rounds without DP noise.
    again = audit_canaries(undefended, CanarySettings(canaries=100))
    assert (again.correct, again.epsilon_lower) == (a.correct, a.epsilon_lower)


def test_a_bound_above_the_claimed_epsilon_is_a_defect(undefended: Path) -> None:
    """The check: an accountant that claims less than the canaries prove is named a defect."""
    a = audit_canaries(undefended, CanarySettings(canaries=100))
    wrong: CanaryAudit = replace(a, claimed=a.epsilon_lower / 2, claim_source="record-level")
    assert wrong.defect and wrong.to_json()["defect"] is True
    text, tone = canary_summary(wrong)
    assert "DEFECT" in text and tone == "warning"
    fine = replace(a, claimed=a.epsilon_lower * 2, claim_source="record-level")
    assert not fine.defect and "consistent" in canary_summary(fine)[0]


def test_a_dp_run_never_shows_more_than_its_accountant(defended: Path) -> None:
    a = audit_canaries(defended, CanarySettings(canaries=100))
    assert a.config.secure_aggregation == "secagg+" and a.config.privacy.unit == "record"
    assert a.claimed is not None and a.claim_source == "record-level"
    assert 0 < a.claimed < 7  # the canary run's own ledger, within the purpose's budget
    assert a.epsilon_lower <= a.claimed and not a.defect
    # 100 canaries cannot show the claimed ε at all: the report says so.
    assert a.cap < a.claimed
    assert "cannot tell whether" in canary_summary(a)[0]


def test_the_command_line(undefended: Path, tmp_path: Path) -> None:
    html, figures = tmp_path / "r.html", tmp_path / "f.json"
    res = runner.invoke(
        app,
        [
            "audit",
            "privacy",
            str(undefended),
            "--out",
            str(html),
            "--json",
            str(figures),
            "--reference-models",
            "2",
            "--inversion-iterations",
            "0",
            "--canaries",
            "100",
        ],
    )
    assert res.exit_code == 0, res.stderr
    assert "one-run audit: " in res.stdout and "no ε claimed" in res.stdout
    text = html.read_text()
    assert "One-run ε audit (canaries)" in text and "--canaries 100" in text
    data = json.loads(figures.read_text())["one_run_audit"]
    assert data["canaries"] == 100 and data["epsilon_lower_bound"] > 0
    assert data["highest_bound_these_guesses_can_show"] == pytest.approx(3.49, abs=0.01)
    for args, message in (
        (["--canaries", "1"], "at least 2"),
        (["--canaries", "10", "--canary-guesses", "11"], "between 1 and"),
    ):
        res = runner.invoke(app, ["audit", "privacy", str(undefended), "--out", str(html), *args])
        assert res.exit_code == 2 and message in res.stderr
        assert "Traceback" not in res.stdout + res.stderr


def test_the_canary_task_adds_the_canaries_only_where_named(tmp_path: Path) -> None:
    from consortium.audit.privacy import canary_task
    from consortium.learning.task import NodeContext, load_task

    task = load_task(canary_task.spec("builtin:digits/mlp"))
    assert task.name == "canaries:digits/mlp"
    assert not hasattr(canary_task, "test_anything") and not hasattr(canary_task, "tzz")
    path = tmp_path / "c.npz"
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    np.savez(path, x=x, y=np.array([3, 4]), record_ids=np.array(["canary-0", "canary-1"]))
    plain, _ = task.data(NodeContext())
    with_file, test = task.data(NodeContext(options={canary_task.CANARY_FILE: str(path)}))
    assert len(with_file) == len(plain) + 2 and len(test) == 359
    assert with_file.record_ids[-2:].tolist() == ["canary-0", "canary-1"]
    assert with_file.y[-2:].tolist() == [3, 4]

"""Gradient inversion (`audit.privacy.inversion`): the image figures against known values, label
inference, and the attack on a tiny model with fixed seeds: a plaintext update of one record is
rebuilt; a SecAgg+ sum of several nodes' updates hides the same update's records far better; a
sum of single-record updates does not hide them (the limitation the report states); DP noise
does."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from consortium.audit.privacy.inversion import (
    InversionSettings,
    Reconstruction,
    attack,
    gradient,
    infer_labels,
    psnr,
    ssim,
)
from consortium.cli.app import app
from consortium.learning.datasets import load_dataset
from consortium.learning.models import build_model
from consortium.node.sim import create_consortium
from tests.inprocess_cluster import drive, run_config, start, start_nodes

SETTINGS = InversionSettings(iterations=300, restarts=1, seed=0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits")
    return torch.from_numpy(ds.x_train[:64].copy()), torch.from_numpy(ds.y_train[:64].copy())


def tiny() -> torch.nn.Module:
    """The built-in MLP (64 inputs, 64 hidden, 10 classes) at its seed-0 initial weights."""
    return build_model("mlp", (1, 8, 8), 10, seed=0)


def run(
    scenario: str,
    data: tuple[torch.Tensor, torch.Tensor],
    batch: int,
    contributors: int,
    settings: InversionSettings = SETTINGS,
) -> Reconstruction:
    x, y = data
    victim = (x[:batch], y[:batch])
    others = [
        (x[batch * (i + 1) : batch * (i + 2)], y[batch * (i + 1) : batch * (i + 2)])
        for i in range(contributors - 1)
    ]
    return attack(scenario, tiny(), victim, others, settings, classes=10)


def test_psnr_and_ssim_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((8, 8))
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    # A uniform error of 0.1 on a range of 1: MSE 0.01, 20 dB.
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    # On a 7x7 image there is one window: SSIM is the formula on the whole image's statistics
    # (sample covariances), which the windowed code must reproduce.
    x, z = rng.random((7, 7)), rng.random((7, 7))
    c1, c2 = 0.01**2, 0.03**2
    vx, vz = x.var(ddof=1), z.var(ddof=1)
    cov = np.cov(x.ravel(), z.ravel())[0, 1]
    want = ((2 * x.mean() * z.mean() + c1) * (2 * cov + c2)) / (
        (x.mean() ** 2 + z.mean() ** 2 + c1) * (vx + vz + c2)
    )
    assert ssim(x, z) == pytest.approx(want)
    assert ssim(x, z) == pytest.approx(ssim(z, x))
    assert ssim(x, 1 - x) < 0  # the negative of an image is anti-correlated
    with pytest.raises(ValueError, match="too small"):
        ssim(np.zeros((2, 2)), np.zeros((2, 2)))


def test_labels_are_inferred_from_the_last_layer(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    model = tiny()
    for i in range(5):
        g = gradient(model, x[i : i + 1], y[i : i + 1])
        assert infer_labels(g, 1, 10).tolist() == [int(y[i])]
    g = gradient(model, x[:3], y[:3])
    assert set(infer_labels(g, 3, 10).tolist()) == set(y[:3].tolist())


def test_a_plaintext_update_of_one_record_is_rebuilt(
    digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    r = run("plaintext", digits, batch=1, contributors=1)
    assert r.images_rebuilt == 1 and r.noise is None
    assert r.best_psnr > 25 and r.best_ssim > 0.9
    inferred = run(
        "plaintext", digits, 1, 1, InversionSettings(iterations=300, restarts=1, labels="inferred")
    )
    assert inferred.best_psnr > 25  # iDLG finds the one label


def test_a_secagg_sum_of_several_nodes_hides_far_more_than_one_update(
    digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    one = run("plaintext", digits, batch=1, contributors=1)
    alone = run("plaintext", digits, batch=8, contributors=1)
    summed = run("secagg", digits, batch=8, contributors=4)
    assert summed.images_rebuilt == 32 and alone.images_rebuilt == 8
    # The same update of 8 records, alone (what a plaintext leader sees) or in a sum of 4
    # nodes' updates (what a SecAgg+ leader sees).
    assert alone.best_psnr > summed.best_psnr + 8
    assert one.best_psnr > summed.best_psnr + 10


def test_a_sum_of_single_record_updates_does_not_hide_them(
    digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """What the report says of secure aggregation: it hides a record among many, not among a
    few. Three nodes' updates of one record each are unmixed by the attacker."""
    r = run("secagg", digits, batch=1, contributors=3)
    assert r.images_rebuilt == 3 and r.best_psnr > 25


def test_dp_noise_hides_the_records(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    plain = run("secagg", digits, batch=1, contributors=3)
    noisy = run("secagg+dp", digits, batch=1, contributors=3)
    assert noisy.noise == 1.0 and noisy.clip == 1.0
    assert noisy.best_psnr < 10 and noisy.best_ssim < 0.3
    assert plain.best_psnr > noisy.best_psnr + 15
    # Deterministic for a seed.
    again = run("secagg+dp", digits, batch=1, contributors=3)
    assert again.best_psnr == noisy.best_psnr


def test_a_task_without_images_is_audited_without_inversion(tmp_path: Path) -> None:
    """Inversion is on by default; a task whose records are not images is audited without it,
    and the report says why, instead of the whole audit failing."""

    async def go() -> Path:
        dirs = create_consortium(
            tmp_path / "c",
            3,
            dataset="breast_cancer",
            seed=5,
            consent=False,
            reproducible=True,
            allow_plaintext=True,
        )
        nodes, net, clock = await start_nodes(dirs)
        try:
            cfg = (
                run_config(2, 0)
                .model_copy(update={"dataset": "breast_cancer", "task_hash": ""})
                .pinned()
            )
            await start(nodes, cfg)
            await drive(nodes, net, clock)
        finally:
            for n in nodes:
                await n.stop()
        return nodes[0].dir

    folder = asyncio.run(go())
    html = tmp_path / "r.html"
    res = CliRunner().invoke(
        app, ["audit", "privacy", str(folder), "--out", str(html), "--reference-models", "2"]
    )
    assert res.exit_code == 0, res.stderr
    assert "No gradient inversion: gradient inversion rebuilds images" in res.stdout
    text = html.read_text()
    assert "No gradient inversion: gradient inversion rebuilds images" in text
    assert "Gradient inversion</h2>" not in text

"""Record-level DP-SGD with Opacus: sigma = 0 is exactly the plain training, DP steps clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consortium.core.errors import ConfigError
from consortium.learning.adapter import get_weights
from consortium.learning.models import build_model
from consortium.learning.train import TrainConfig, train_local
from consortium.privacy.config import PrivacyConfig
from consortium.privacy.dpsgd import train_local_dp

CFG = TrainConfig(epochs=2, batch_size=16, lr=0.1, seed=3)


def _data(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = (x.reshape(n, -1).sum(axis=1) > 0).astype(np.int64)
    return x, y


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "privacy",
    [
        PrivacyConfig(),
        PrivacyConfig(unit="record", noise_multiplier=0.0),
        PrivacyConfig(unit="client", noise_multiplier=1.0),
    ],
)
def test_sigma_zero_reproduces_the_non_private_result_exactly(privacy: PrivacyConfig) -> None:
    x, y = _data()
    plain = build_model("cnn", (1, 8, 8), 2, seed=1)
    private = build_model("cnn", (1, 8, 8), 2, seed=1)
    want = train_local(plain, x, y, CFG)
    z = privacy.noise_multiplier or 0.0
    got = train_local_dp(private, x, y, CFG, privacy, z, seed=9)
    assert _same(get_weights(plain), get_weights(private))
    assert got.loss == want.loss and got.steps == 0 and got.num_samples == 100


def test_dp_sgd_steps_are_seeded_and_leave_a_plain_model() -> None:
    x, y = _data()
    privacy = PrivacyConfig(unit="record", noise_multiplier=1.0)
    models = [build_model("cnn", (1, 8, 8), 2, seed=1) for _ in range(3)]
    results = [
        train_local_dp(m, x, y, CFG, privacy, 1.0, seed=s)
        for m, s in zip(models, (5, 5, 6), strict=True)
    ]
    assert results[0].steps == 2 * 7 and results[0].sample_rate == pytest.approx(1 / 7)
    assert _same(get_weights(models[0]), get_weights(models[1]))
    assert not _same(get_weights(models[0]), get_weights(models[2]))
    plain = build_model("cnn", (1, 8, 8), 2, seed=1)
    train_local(plain, x, y, CFG)
    assert not _same(get_weights(plain), get_weights(models[0]))
    # Opacus' hooks and per-sample attributes are gone: the model trains normally afterwards.
    m = models[0]
    assert all(not hasattr(p, "grad_sample") for p in m.parameters())
    assert all(not mod._forward_hooks and not mod._backward_hooks for mod in m.modules())
    train_local(m, x, y, CFG)


def test_per_sample_clipping_bounds_the_update() -> None:
    """With (almost) no noise, every step moves the weights by at most
    lr · clip · |batch| / E|batch|, since each per-sample gradient is clipped to `clip`."""
    x, y = _data(64)
    clip, lr = 1e-3, 1.0
    cfg = TrainConfig(epochs=1, batch_size=8, lr=lr, seed=0)
    privacy = PrivacyConfig(unit="record", noise_multiplier=1e-9, clip_norm=clip)
    model = build_model("logreg", (1, 8, 8), 2, seed=1)
    before = np.concatenate([w.ravel() for w in get_weights(model).values()])
    res = train_local_dp(model, x, y, cfg, privacy, 1e-9, seed=2)
    after = np.concatenate([w.ravel() for w in get_weights(model).values()])
    moved = float(np.linalg.norm(after - before))
    # At most every record in every step: steps · lr · clip · n / (q n).
    assert 0 < moved <= res.steps * lr * clip * len(y) / 8 * (1 + 1e-6)
    # Unclipped plain SGD moves much further on the same data.
    plain = build_model("logreg", (1, 8, 8), 2, seed=1)
    train_local(plain, x, y, cfg)
    plain_moved = np.linalg.norm(
        np.concatenate([w.ravel() for w in get_weights(plain).values()]) - before
    )
    assert plain_moved > 10 * moved


def test_noise_has_the_configured_scale() -> None:
    """With a zero gradient signal (lr applied to pure noise), one step's update is
    lr · N(0, (z · clip)²) / E|batch| per coordinate."""
    n, z, clip = 400, 2.0, 0.5
    x = np.zeros((n, 1, 8, 8), dtype=np.float32)  # zero input: weight gradients vanish
    y = np.zeros(n, dtype=np.int64)
    cfg = TrainConfig(epochs=1, batch_size=n, lr=1.0, seed=0)  # q = 1: one step, whole data
    model = build_model("logreg", (1, 8, 8), 2, seed=1)
    with torch.no_grad():
        model.get_parameter("1.weight").zero_()
    res = train_local_dp(
        model,
        x,
        y,
        cfg,
        PrivacyConfig(unit="record", noise_multiplier=z, clip_norm=clip),
        z,
        seed=4,
    )
    assert res.steps == 1
    w = get_weights(model)["1.weight"].ravel()  # 128 coordinates of pure noise / n
    sd = z * clip / n
    assert abs(float(w.std()) - sd) <= 5 * sd / np.sqrt(2 * w.size)


def test_fedprox_is_refused_with_record_dp() -> None:
    x, y = _data()
    cfg = CFG.model_copy(update={"proximal_mu": 0.1})
    with pytest.raises(ConfigError, match="FedProx"):
        train_local_dp(
            build_model("logreg", (1, 8, 8), 2, seed=1),
            x,
            y,
            cfg,
            PrivacyConfig(unit="record", noise_multiplier=1.0),
            1.0,
            seed=1,
        )

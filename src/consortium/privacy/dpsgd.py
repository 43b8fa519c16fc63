"""Record-level DP-SGD at one node with Opacus: per-sample clipping, Gaussian noise, Poisson
sampling of the node's records.

Opacus' building blocks are used directly (GradSampleModule + DPOptimizer) rather than
PrivacyEngine.make_private: the batches come from our own Poisson sampler driven by a seeded
torch.Generator (so a run is reproducible for a seed), the accounting is ours (`accounting.py`,
one accountant for nodes and auditor), and the model is handed back without Opacus hooks.
With no record-level noise (unit none/client, or noise multiplier 0) training is exactly
`consortium.learning.train_local`: sigma = 0 reproduces the non-private result bit for bit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from opacus import GradSampleModule  # type: ignore[import-untyped]  # no type information
from opacus.optimizers import DPOptimizer  # type: ignore[import-untyped]
from opacus.utils.module_utils import trainable_modules  # type: ignore[import-untyped]
from opacus.validators import ModuleValidator  # type: ignore[import-untyped]
from torch import nn

from consortium.core.errors import ConfigError
from consortium.learning.train import TrainConfig, train_local
from consortium.privacy.accounting import record_sample_rate, record_steps_per_round
from consortium.privacy.config import PrivacyConfig


@dataclass(frozen=True)
class DPTrainResult:
    num_samples: int
    loss: float  # mean data loss over the samples drawn in the last epoch
    steps: int  # DP-SGD steps taken (0 without record-level noise)
    sample_rate: float  # Poisson rate q of those steps (1.0 when steps = 0)
    noise_multiplier: float


def _tensors(
    x: npt.NDArray[np.floating], y: npt.NDArray[np.integer]
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"features {x.shape} and labels {y.shape} do not line up")
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


#: What to use instead of a layer Opacus' validator refuses (by the layer's class name prefix).
_FIXES = (
    ("BatchNorm", "replace it with nn.GroupNorm (or nn.LayerNorm)"),
    ("SyncBatchNorm", "replace it with nn.GroupNorm (or nn.LayerNorm)"),
    ("InstanceNorm", "build it with track_running_stats=False"),
    ("LSTM", "use opacus.layers.DPLSTM"),
    ("GRU", "use opacus.layers.DPGRU"),
    ("MultiheadAttention", "use opacus.layers.DPMultiheadAttention"),
)


def dpsgd_problems(model: nn.Module) -> list[str]:
    """Why DP-SGD cannot train `model` (empty: it can), one line per offending layer, by name,
    with the fix; decided by Opacus' validator (`ModuleValidator.validate`), which the layers it
    refuses are found with. Looks at a model in training mode (how DP-SGD trains it)."""
    was_training = model.training
    model.train()
    try:
        if not ModuleValidator.validate(model, strict=False):
            return []
        out = []
        for name, layer in trainable_modules(model):
            check = ModuleValidator.VALIDATORS.get(type(layer))
            if check is None or not check(layer):
                continue
            kind = type(layer).__name__
            fix = next((f for p, f in _FIXES if kind.startswith(p)), "replace it")
            out.append(f"layer {name or '(the model itself)'!r} ({kind}): {fix}")
        if not out:  # refused, but by no single layer: say what Opacus said
            out = [str(e).split(". ")[0] for e in ModuleValidator.validate(model, strict=False)]
        return out
    finally:
        model.train(was_training)


def train_local_dp(
    model: nn.Module,
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    cfg: TrainConfig,
    privacy: PrivacyConfig,
    noise_multiplier: float,
    seed: int | None = None,
    global_weights: Mapping[str, npt.NDArray[np.float32]] | None = None,
) -> DPTrainResult:
    """Train `model` in place. Record-level DP when privacy.record_level and noise_multiplier > 0:
    epochs · ceil(n / batch_size) steps, each on a Poisson sample of rate q = 1/ceil(n/batch),
    per-sample gradients clipped to privacy.clip_norm, noise std noise_multiplier · clip_norm.
    `seed` seeds sampling and noise (tests, benchmarks); None draws it from the OS."""
    if not privacy.record_level or noise_multiplier == 0.0:
        plain = train_local(model, x, y, cfg, global_weights)
        return DPTrainResult(plain.num_samples, plain.loss, 0, 1.0, 0.0)
    if noise_multiplier < 0:
        raise ConfigError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    problems = dpsgd_problems(model)
    if problems:
        raise ConfigError(f"DP-SGD cannot train this model: {'; '.join(problems)}")
    if cfg.proximal_mu > 0.0:
        raise ConfigError(
            "record-level DP does not support FedProx (proximal_mu > 0): the proximal gradient "
            "is not a per-sample gradient; set proximal_mu = 0"
        )
    xt, yt = _tensors(x, y)
    n = len(yt)
    q = record_sample_rate(n, cfg.batch_size)
    steps_per_epoch = record_steps_per_round(n, cfg.batch_size, 1)
    seed_ = int.from_bytes(os.urandom(8), "big") >> 1 if seed is None else seed
    sampler = torch.Generator().manual_seed(seed_)
    noise_gen = torch.Generator().manual_seed(seed_ ^ 0x5EED)
    base = (
        torch.optim.Adam(model.parameters(), lr=cfg.lr)
        if cfg.optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    )
    gsm = GradSampleModule(model, loss_reduction="sum")
    # "mean": the summed noisy gradient is divided by the *expected* batch size q·n, as DP-SGD
    # with Poisson sampling requires (the actual size would leak through the update).
    optimizer = DPOptimizer(
        base,
        noise_multiplier=noise_multiplier,
        max_grad_norm=privacy.clip_norm,
        expected_batch_size=max(1, round(q * n)),
        loss_reduction="mean",
        generator=noise_gen,
    )
    model.train()
    loss_sum, seen = 0.0, 0
    try:
        with warnings.catch_warnings():
            # Opacus' full backward hooks warn when inputs need no grad: expected here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(cfg.epochs):
                loss_sum, seen = 0.0, 0
                for _ in range(steps_per_epoch):
                    mask = torch.rand(n, generator=sampler) < q
                    xb, yb = xt[mask], yt[mask]
                    optimizer.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(gsm(xb), yb, reduction="sum")
                    loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch 2.13
                    optimizer.step()
                    loss_sum += float(loss.detach())
                    seen += len(yb)
    finally:
        gsm._close()  # remove hooks and grad_sample attributes: hand back a plain model
    return DPTrainResult(
        num_samples=n,
        loss=loss_sum / max(seen, 1),
        steps=cfg.epochs * steps_per_epoch,
        sample_rate=q,
        noise_multiplier=noise_multiplier,
    )

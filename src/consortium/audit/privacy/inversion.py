"""Gradient inversion: rebuild a node's training images from an update, in the style of Geiping,
Bauermeister, Dröge and Moeller, "Inverting Gradients - How easy is it to break privacy in
federated learning?" (NeurIPS 2020).

The attacker holds the model an update was computed from and the update (or a sum of updates).
It starts from random images, computes the gradient they would give, and moves the images (Adam
on the signed gradient, step size decayed at 3/8, 5/8 and 7/8 of the iterations, pixels kept in
the data's range) to make that gradient point the same way as the target:

    loss(x') = 1 - cos(∇θ L(x', y), target) + a · TV(x')

cosine similarity over all parameters at once (so the update's scale, the learning rate, does
not matter) and a total-variation prior a·TV (mean absolute difference of neighbouring pixels).
Several restarts; the attacker keeps the one with the lowest matching loss (it cannot see the
true images). Labels are either known (the strongest attacker) or inferred from the last
layer's bias gradient (iDLG, Zhao et al. 2020: for cross-entropy, the entries of the classes
present are negative; for more images than negative entries, the most negative are repeated).

Three views of one node's records (the "victim" batch), `scenarios`:

- **plaintext**: a FedAvg leader sees the node's own update: one local step over the batch
  (FedSGD; the attacker-favourable case Geiping et al. start from: several local steps and
  hundreds of records per update make it harder).
- **secagg**: a SecAgg+ leader sees only the sum of the contributors' updates. The other
  contributors are stood in for by other records of the auditing node's own data (the audit
  holds no one else's), each an update over as many records; the attacker knows the total
  count (the ledger publishes sample counts) and rebuilds that many images, all labels known.
- **secagg+dp**: the same sum when every contributor runs record-level DP-SGD: per-example
  gradients clipped to C in L2 and Gaussian noise of standard deviation z·C added by each
  contributor (so z·C·√n on the sum).

Figures per view: PSNR (dB, data range 1) and SSIM of the best reconstruction, i.e. the highest
over the victim's images of the best match among the rebuilt images; and the same averaged over
the victim's images. SSIM is Wang et al. 2004 as scikit-image computes it by default (7x7
uniform window, sample covariance, K1 = 0.01, K2 = 0.03), written here with SciPy (scikit-image
is not a dependency); `test_privacy_inversion` checks its known values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from scipy.ndimage import uniform_filter
from torch import nn

from consortium.audit.privacy.membership import PrivacyAuditError, _read, _selections, _task
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.layout import STORE_DIR
from consortium.learning.adapter import check_weights, set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.learning.task import build_model
from consortium.node.config import load_node_config
from consortium.node.learner import Learner, initial_weights
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes

FloatArray = npt.NDArray[np.float64]
Labels = Literal["known", "inferred"]
#: The views, in report order.
SCENARIOS = ("plaintext", "secagg", "secagg+dp")
SCENARIO_NAMES = {
    "plaintext": "plaintext FedAvg: the leader sees the node's own update",
    "secagg": "SecAgg+: the leader sees only the sum of the contributors' updates",
    "secagg+dp": "SecAgg+ with record-level DP-SGD: the noisy sum",
}


@dataclass(frozen=True)
class InversionSettings:
    """The attack's knobs (every random choice seeded)."""

    iterations: int = 400
    restarts: int = 2
    batch: int = 1  # victim records in the update
    contributors: int = 3  # updates in a SecAgg+ sum (the victim's among them)
    lr: float = 0.1
    tv: float = 1e-2
    labels: Labels = "known"
    seed: int = 0


@dataclass(frozen=True)
class Reconstruction:
    """One view's result: the victim's images, the best rebuilt match of each, and figures."""

    scenario: str
    truth: FloatArray  # (victim images, H, W), the first channel
    rebuilt: FloatArray  # the best match of each, same shape
    psnr: Sequence[float]  # per victim image
    ssim: Sequence[float]
    images_rebuilt: int
    labels: str
    noise: float | None  # the noise multiplier z on each contributor, None without DP
    clip: float | None
    matching_loss: float

    @property
    def best(self) -> int:
        return int(np.argmax(self.psnr))

    @property
    def best_psnr(self) -> float:
        return float(self.psnr[self.best])

    @property
    def best_ssim(self) -> float:
        return float(self.ssim[self.best])

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "best_psnr_db": self.best_psnr,
            "best_ssim": self.best_ssim,
            "mean_psnr_db": float(np.mean(self.psnr)),
            "mean_ssim": float(np.mean(self.ssim)),
            "victim_images": len(self.psnr),
            "images_rebuilt": self.images_rebuilt,
            "labels": self.labels,
            "noise_multiplier": self.noise,
            "clip_norm": self.clip,
            "matching_loss": self.matching_loss,
        }


# -- image quality ---------------------------------------------------------------------------


def psnr(truth: FloatArray, image: FloatArray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    mse = float(np.mean((np.asarray(truth, np.float64) - np.asarray(image, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(truth: FloatArray, image: FloatArray, data_range: float = 1.0) -> float:
    """Structural similarity of two 2-D images, as `skimage.metrics.structural_similarity`
    computes it by default: a 7x7 uniform window (smaller images: the largest odd size that
    fits), sample covariances, K1 = 0.01, K2 = 0.03, the mean over the window centres at least
    half a window from the border."""
    a = np.asarray(truth, np.float64)
    b = np.asarray(image, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim: two 2-D images of one shape, got {a.shape} and {b.shape}")
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape))
    if win < 3:
        raise ValueError(f"ssim: images of {a.shape} are too small")
    n = win * win
    cov = n / (n - 1)

    def mean(v: FloatArray) -> FloatArray:
        out: FloatArray = uniform_filter(v, size=win)
        return out

    ux, uy = mean(a), mean(b)
    vx = cov * (mean(a * a) - ux * ux)
    vy = cov * (mean(b * b) - uy * uy)
    vxy = cov * (mean(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad : a.shape[0] - pad, pad : a.shape[1] - pad].mean())


# -- updates ---------------------------------------------------------------------------------


def _loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy; with `weight` (one per example), the weighted sum instead."""
    if weight is None:
        return nn.functional.cross_entropy(model(x), y)
    return (nn.functional.cross_entropy(model(x), y, reduction="none") * weight).sum()


def group_weights(sizes: Sequence[int]) -> torch.Tensor:
    """Per-example weights that make one loss's gradient the sum of each group's mean gradient:
    a sum of FedAvg updates, one per contributor of `sizes[i]` records."""
    return torch.cat([torch.full((n,), 1.0 / n) for n in sizes])


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """∇θ of the mean cross-entropy over the batch (a one-step update is -lr times this)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [g.detach() for g in torch.autograd.grad(_loss(model, x, y), params)]


def dp_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    noise: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """One DP-SGD step's gradient: each example's gradient clipped to L2 norm `clip`, summed,
    Gaussian noise of std `noise`·`clip` added, divided by the batch size (as Opacus does)."""
    total: list[torch.Tensor] | None = None
    for i in range(len(x)):
        g = gradient(model, x[i : i + 1], y[i : i + 1])
        norm = float(torch.sqrt(sum((t**2).sum() for t in g)))  # type: ignore[arg-type]
        scale = min(1.0, clip / (norm + 1e-12))
        g = [t * scale for t in g]
        total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
    assert total is not None
    noisy = [t + noise * clip * torch.randn(t.shape, generator=generator) for t in total]
    return [t / len(x) for t in noisy]


def infer_labels(target: Sequence[torch.Tensor], count: int, classes: int) -> torch.Tensor:
    """Labels from the last layer's bias gradient (iDLG): the classes whose entry is negative,
    most negative first, the most negative repeated to make up `count`."""
    bias = next((t for t in reversed(target) if t.shape == (classes,)), None)
    if bias is None:
        raise ValueError("labels cannot be inferred: the model's last layer has no bias")
    order = torch.argsort(bias)
    negative = [int(c) for c in order if float(bias[c]) < 0][:count]
    if not negative:
        negative = [int(order[0])]
    while len(negative) < count:
        negative.append(negative[0])
    return torch.tensor(negative, dtype=torch.int64)


# -- the attack ------------------------------------------------------------------------------


def _tv(x: torch.Tensor) -> torch.Tensor:
    dx = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dy = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dx + dy


def _cosine_loss(grads: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    gn = sum((g**2).sum() for g in grads)
    tn = sum((t**2).sum() for t in target)
    return 1 - dot / (torch.sqrt(gn) * torch.sqrt(tn) + 1e-12)  # type: ignore[operator, arg-type]


def invert(
    model: nn.Module,
    target: Sequence[torch.Tensor],
    labels: torch.Tensor,
    shape: tuple[int, ...],
    settings: InversionSettings,
    *,
    groups: Sequence[int] | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, float]:
    """Images (len(labels), *shape) whose gradient best matches `target` in direction, and the
    matching loss of the restart kept (the lowest). `groups`: the sizes of the contributors'
    batches whose updates `target` sums, in order (the ledger publishes sample counts), so the
    rebuilt gradient is the same sum of per-contributor means; None: one batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    weight = None if groups is None else group_weights(groups)
    gen = torch.Generator().manual_seed(settings.seed * 7919 + 17)
    steps = settings.iterations
    best: tuple[float, torch.Tensor] | None = None
    total = settings.restarts * steps
    for restart in range(settings.restarts):
        x = (lo + (hi - lo) * torch.rand((len(labels), *shape), generator=gen)).requires_grad_()
        opt = torch.optim.Adam([x], lr=settings.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[steps * 3 // 8, steps * 5 // 8, steps * 7 // 8], gamma=0.1
        )
        for it in range(steps):
            if progress is not None and it % 25 == 0:
                progress(restart * steps + it, total)
            opt.zero_grad()
            grads = torch.autograd.grad(_loss(model, x, labels, weight), params, create_graph=True)
            loss = _cosine_loss(grads, target) + settings.tv * _tv(x)
            loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch 2.13
            assert x.grad is not None
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        grads = torch.autograd.grad(_loss(model, x, labels, weight), params)
        final = float(_cosine_loss([g.detach() for g in grads], target))
        if best is None or final < best[0]:
            best = (final, x.detach().clone())
    if progress is not None:
        progress(total, total)
    assert best is not None
    return best[1], best[0]


def _match(
    truth: FloatArray, rebuilt: FloatArray, data_range: float = 1.0
) -> tuple[FloatArray, list[float], list[float]]:
    """For each true image, the rebuilt image of highest PSNR, and its PSNR and SSIM."""
    picks, ps, ss = [], [], []
    for t in truth:
        scores = [psnr(t, r, data_range) for r in rebuilt]
        j = int(np.argmax(scores))
        picks.append(rebuilt[j])
        ps.append(scores[j])
        ss.append(ssim(t, rebuilt[j], data_range))
    return np.stack(picks), ps, ss


def attack(
    scenario: str,
    model: nn.Module,
    victim: tuple[torch.Tensor, torch.Tensor],
    others: Sequence[tuple[torch.Tensor, torch.Tensor]],
    settings: InversionSettings,
    *,
    classes: int,
    clip: float = 1.0,
    noise: float = 1.0,
    lo: float = 0.0,
    hi: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> Reconstruction:
    """Run one view (`SCENARIOS`) against the victim batch (x, y); `others` are the other
    contributors' batches (for the SecAgg+ views). Deterministic for a seed."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    x, y = victim
    model.eval()
    gen = torch.Generator().manual_seed(settings.seed * 104_729 + SCENARIOS.index(scenario))
    batches = [(x, y)] if scenario == "plaintext" else [(x, y), *others]
    dp = scenario == "secagg+dp"
    parts = [
        dp_gradient(model, bx, by, clip, noise, gen) if dp else gradient(model, bx, by)
        for bx, by in batches
    ]
    # The sum a SecAgg+ leader sees (plaintext: the one update).
    target = [torch.stack(ts).sum(0) for ts in zip(*parts, strict=True)]
    labels_all = torch.cat([by for _, by in batches])
    count = len(labels_all)
    labels = labels_all if settings.labels == "known" else infer_labels(target, count, classes)
    rebuilt, loss = invert(
        model,
        target,
        labels,
        tuple(x.shape[1:]),
        settings,
        groups=[len(by) for _, by in batches],
        lo=lo,
        hi=hi,
        progress=progress,
    )
    truth = x[:, 0].double().numpy()
    picks, ps, ss = _match(truth, rebuilt[:, 0].double().numpy(), hi - lo)
    return Reconstruction(
        scenario=scenario,
        truth=truth,
        rebuilt=picks,
        psnr=ps,
        ssim=ss,
        images_rebuilt=count,
        labels=settings.labels,
        noise=noise if dp else None,
        clip=clip if dp else None,
        matching_loss=loss,
    )


# -- the audit of a folder -------------------------------------------------------------------


class InversionUnsupported(PrivacyAuditError):
    """The run's task is not one this attack applies to (not images, or its own loss)."""


@dataclass(frozen=True)
class InversionAudit:
    """Gradient inversion against one round of a run folder, from the three views."""

    round: int
    model: str  # CID of the global model the round started from (what the updates are taken at)
    contributors: int
    batch: int
    settings: InversionSettings
    results: Sequence[Reconstruction]
    noise_source: str  # where the DP view's noise multiplier comes from
    notes: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "round": self.round,
            "model": self.model,
            "contributors": self.contributors,
            "records_per_update": self.batch,
            "settings": {
                "iterations": s.iterations,
                "restarts": s.restarts,
                "lr": s.lr,
                "tv": s.tv,
                "labels": s.labels,
                "seed": s.seed,
            },
            "noise_source": self.noise_source,
            "views": [r.to_json() for r in self.results],
            "notes": list(self.notes),
        }


def audit_inversion(
    folder: Path,
    *,
    run: str | None = None,
    settings: InversionSettings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> InversionAudit:
    """Gradient inversion against the last round the folder's node took part in: the node's
    own records (`settings.batch` of those the round used, seeded) as the victim, updates taken
    at the global model that round started from (read from the folder's store), the SecAgg+
    sum over as many contributors as the round had (at least 2; the others stood in for by
    other records of the node's own training data, as many each), DP at the noise multiplier
    the ledger records for the node in that round (else z = 1 at the run's clip norm, noted)."""
    settings = settings or InversionSettings()
    if settings.iterations < 1 or settings.restarts < 1 or settings.batch < 1:
        raise ConfigError("inversion iterations, restarts and batch must be at least 1")
    folder = Path(folder)
    notes: list[str] = []
    data = _read(folder, run)
    config = data.status.config
    task = _task(data.status, notes)
    node_config = load_node_config(folder)
    learner = Learner(node_config.data, config, task=task, name=data.node_name)
    used = _selections(
        folder,
        learner,
        data.node,
        config.purpose,
        node_config.consent == "off",
        data.run_records,
        notes,
    )
    examples = learner.examples
    if examples.x.ndim != 4 or min(examples.x.shape[2:]) < 3:
        raise InversionUnsupported(
            f"gradient inversion rebuilds images; this task's records have shape "
            f"{examples.x.shape[1:]}"
        )
    if task.loss is not None or not np.issubdtype(examples.y.dtype, np.integer):
        raise InversionUnsupported(
            "gradient inversion here attacks cross-entropy classifiers; this task has its own "
            "loss or float targets"
        )
    mine = [(i, r) for i, r in data.run_records if r.round in used]
    if not mine:
        raise PrivacyAuditError(
            f"{data.node_name} contributed to no round of run {data.status.run}"
        )
    _, record = mine[-1]
    rng = np.random.default_rng(settings.seed)
    pos = rng.permutation(used[record.round])
    if len(pos) < settings.batch:
        raise PrivacyAuditError(
            f"round {record.round} used {len(pos)} records of {data.node_name}, fewer than the "
            f"inversion batch {settings.batch}"
        )
    contributors = max(2, len(record.participants))
    rest = np.setdiff1d(learner._train_pos, pos[: settings.batch])
    need = settings.batch * (contributors - 1)
    if len(rest) < need:
        contributors = 1 + len(rest) // settings.batch
        notes.append(
            f"the node holds too few other records to stand in for {len(record.participants)} "
            f"contributors: {contributors} used"
        )
        if contributors < 2:
            raise PrivacyAuditError("too few records to stand in for a second contributor")
    rest = rng.permutation(rest)
    _, like = build_model(task, config.seed)
    try:
        if record.round == 1 and not config.initial_model:
            start = initial_weights(config, task)
        else:
            store = BlockStore(folder / STORE_DIR, create=False)
            start = weights_from_bytes(get_bytes(store, record.prev_model), like)
    except ConsortiumError as exc:
        raise PrivacyAuditError(
            f"the model round {record.round} started from ({record.prev_model}) cannot be "
            f"read from {folder / STORE_DIR}: {exc}"
        ) from exc
    model, _ = build_model(task, config.seed)
    set_weights(model, check_weights(start, like))
    for p in model.parameters():
        p.requires_grad_(True)

    def batch(positions: npt.NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
        ex = examples.take(positions.astype(np.int64))
        return torch.from_numpy(ex.x.copy()), torch.from_numpy(ex.y.astype(np.int64))

    victim = batch(pos[: settings.batch])
    others = [
        batch(rest[i * settings.batch : (i + 1) * settings.batch]) for i in range(contributors - 1)
    ]
    recorded = ((record.privacy or {}).get("record") or {}).get(data.node)
    clip = config.privacy.clip_norm
    if recorded and float(recorded.get("noise_multiplier", 0.0)) > 0:
        noise = float(recorded["noise_multiplier"])
        source = (
            f"the noise multiplier the ledger records for {data.node_name} in round "
            f"{record.round} (z = {noise:.3g}), at the run's clip norm C = {clip:g}"
        )
    else:
        noise = 1.0
        source = (
            f"this run used no record-level DP: z = 1 at clip norm C = {clip:g} shows what it "
            "would do"
        )
    with torch.no_grad():
        classes = int(model(victim[0]).shape[1])
    lo, hi = float(examples.x.min()), float(examples.x.max())
    if (lo, hi) != (0.0, 1.0):
        notes.append(f"pixels range over [{lo:g}, {hi:g}]: PSNR and SSIM at that data range")
    results = []
    for scenario in SCENARIOS:
        stage = f"gradient inversion ({scenario})"

        def step(done: int, total: int, stage: str = stage) -> None:
            if progress is not None:
                progress(stage, done, total)

        results.append(
            attack(
                scenario,
                model,
                victim,
                others,
                settings,
                classes=classes,
                clip=clip,
                noise=noise,
                lo=lo,
                hi=hi,
                progress=step,
            )
        )
    return InversionAudit(
        round=record.round,
        model=str(record.prev_model),
        contributors=contributors,
        batch=settings.batch,
        settings=settings,
        results=results,
        noise_source=source,
        notes=tuple(dict.fromkeys(notes)),
    )

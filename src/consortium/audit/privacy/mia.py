"""Membership inference: what a published model says about whether a record was trained on.

Two attacks, both from the view of someone holding only the published model(s):

- **Loss threshold** (Yeom, Giacomelli, Fredrikson, Jha, CSF 2018): a record whose loss under
  the model is low is guessed to be a member. Score = -loss. Yeom et al. fix the threshold at
  the mean training loss; we sweep every threshold (the ROC), which is at least as strong.
- **LiRA, offline, fixed variance** (Carlini, Chien, Nasr, Song, Terzis, Tramèr, S&P 2022):
  the attacker trains reference models on data from the same population that excludes the
  records it tests ("OUT" models) and asks how much more confident the target model is on a
  record than models that never saw it. Per record x with label y, the statistic is the
  logit-scaled confidence φ = log p_y - log(1 - p_y) (for a task with its own loss or float
  targets, -loss); the score is (φ_target - μ_out(x)) / sigma_out, μ_out(x) the mean of φ over the
  OUT models and sigma_out one standard deviation pooled over all records (the paper's choice with
  few reference models). The one-sided test on this score is what the paper's offline attack
  computes; its ROC does not depend on sigma_out.
- **RMIA, offline** (Zarifzadeh, Liu, Mahloujifar, Shokri, ICML 2024): the likelihood ratio
  Pr(x | target) / Pr(x), Pr(x | model) = p_y (= exp(-loss) for cross-entropy; exp(-loss) for
  a task with its own loss) and Pr(x) = ((1 + a) mean_OUT Pr(x | ref) + (1 - a)) / 2, the
  paper's offline approximation of the average over IN and OUT models, with a = 0.3 fixed here
  (the paper tunes it on reference models). RMIA then compares x's ratio with population
  records z; for one set of z that comparison is a monotone function of x's own ratio, so its
  ROC is the ratio's, which is what we score.

Everything here takes arrays and models; which records are members and how the reference models
are trained is `audit.privacy.run` (the folder and the run's task).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from consortium.learning.task import Examples, Task
from consortium.learning.train import predict

FloatArray = npt.NDArray[np.float64]

#: Examples scored per forward pass.
BATCH = 1024


def per_example_loss(model: nn.Module, examples: Examples, task: Task | None = None) -> FloatArray:
    """The loss of each example under `model`: the task's own `loss` (called one example at a
    time, as it returns a mean), else cross-entropy."""
    loss_fn = None if task is None else task.loss
    out = predict(model, examples.x, BATCH)
    target = torch.from_numpy(np.ascontiguousarray(examples.y))
    with torch.no_grad():
        if loss_fn is None:
            if target.is_floating_point():
                raise ValueError("float targets need the task's own loss")
            # In float64: a confident model's losses near 0 stay apart instead of tying.
            values = nn.functional.cross_entropy(out.double(), target, reduction="none")
        else:
            values = torch.stack(
                [loss_fn(out[i : i + 1], target[i : i + 1]).reshape(()) for i in range(len(out))]
            )
    return values.double().numpy()


def uses_confidence(task: Task | None, examples: Examples) -> bool:
    """Whether φ (the logit-scaled confidence) applies: integer labels and the default loss."""
    return (task is None or task.loss is None) and np.issubdtype(examples.y.dtype, np.integer)


def statistic(model: nn.Module, examples: Examples, task: Task | None = None) -> FloatArray:
    """LiRA's per-example statistic: φ = z_y - logsumexp_{j≠y} z_j (equal to log p_y -
    log(1 - p_y), computed without rounding p_y to 1), or -loss where φ does not apply."""
    if not uses_confidence(task, examples):
        return -per_example_loss(model, examples, task)
    logits = predict(model, examples.x, BATCH).double()
    if logits.ndim != 2 or logits.shape[1] < 2:
        return -per_example_loss(model, examples, task)
    y = torch.from_numpy(np.ascontiguousarray(examples.y, dtype=np.int64))
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    phi = true - torch.logsumexp(others, dim=1)
    return phi.numpy()


def lira_offline(
    target: FloatArray, reference: FloatArray, out: npt.NDArray[np.bool_] | None = None
) -> FloatArray:
    """LiRA scores from the target model's statistic (n,) and the reference models'
    statistics (models, n) on the same records: (φ - μ_out) / sigma_out, sigma_out pooled. `out`
    (models, n) says which reference models may be used for which record (those that never saw
    it, and as many for every record); default: all."""
    if reference.ndim != 2 or reference.shape[1] != len(target) or reference.shape[0] < 1:
        raise ValueError("reference statistics must be (models, records)")
    use = np.ones(reference.shape, dtype=bool) if out is None else out
    if use.shape != reference.shape or not use.any(axis=0).all():
        raise ValueError("every record needs at least one OUT reference model")
    count = use.sum(axis=0)
    mu = np.where(use, reference, 0.0).sum(axis=0) / count
    residual = (reference - mu)[use]
    sigma = float(residual.std()) if (count > 1).any() else float(reference[use].std())
    scores: FloatArray = (target - mu) / (sigma or 1.0)
    return scores


#: RMIA's offline parameter a (Pr(x) from OUT models only).
RMIA_A = 0.3


def log_likelihood(stat: FloatArray, confidence: bool) -> FloatArray:
    """log Pr(x | model) from `statistic`: log p_y = -log(1 + e^-phi) where the statistic is
    phi, else -loss (the statistic itself)."""
    if not confidence:
        return stat
    out: FloatArray = -np.logaddexp(0.0, -stat)
    return out


def rmia_offline(
    target: FloatArray,
    reference: FloatArray,
    confidence: bool,
    out: npt.NDArray[np.bool_] | None = None,
    a: float = RMIA_A,
) -> FloatArray:
    """RMIA scores (log of the likelihood ratio) from the same statistics as `lira_offline`."""
    if reference.ndim != 2 or reference.shape[1] != len(target) or reference.shape[0] < 1:
        raise ValueError("reference statistics must be (models, records)")
    use = np.ones(reference.shape, dtype=bool) if out is None else out
    if use.shape != reference.shape or not use.any(axis=0).all():
        raise ValueError("every record needs at least one OUT reference model")
    p_ref = np.exp(log_likelihood(reference, confidence))
    p_out = np.where(use, p_ref, 0.0).sum(axis=0) / use.sum(axis=0)
    p_x = 0.5 * ((1 + a) * p_out + (1 - a))
    scores: FloatArray = log_likelihood(target, confidence) - np.log(p_x)
    return scores


def loss_scores(losses: FloatArray) -> FloatArray:
    """The loss-threshold attack's score: lower loss, more likely a member."""
    out: FloatArray = -losses
    return out

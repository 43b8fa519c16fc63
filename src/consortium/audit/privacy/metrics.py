"""How well a membership score separates members from non-members: ROC curve, AUC and the true
positive rate at a low false positive rate, with non-members optionally weighted.

Scores: higher means "more likely a member". Members count 1 each; non-members count their
weight, which lets the audit match the non-members' label mix to the members' (a node whose
shard is label-skewed would otherwise be "detected" by its labels alone).

Ties are handled exactly: one ROC point per distinct score, so a constant score gives the
diagonal and AUC 0.5.

TPR at a false positive rate `f` is the largest TPR among ROC points whose FPR is at most `f`
(the usual reading of a low-FPR figure, Carlini et al. 2022). It is only measurable when there
are at least 1/f non-members (their effective number, with weights): with fewer, no threshold
can allow even one false positive at that rate, and the figure would be the TPR at none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import beta

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Roc:
    """ROC points from the strictest threshold (0, 0) to the loosest (1, 1)."""

    fpr: FloatArray
    tpr: FloatArray
    members: int
    non_members: float  # effective number of non-members: (sum w)^2 / sum w^2

    @property
    def auc(self) -> float:
        return float(np.trapezoid(self.tpr, self.fpr))

    def tpr_at(self, fpr: float) -> float:
        """The largest TPR at a false positive rate of at most `fpr` (measurable or not)."""
        ok = self.fpr <= fpr + 1e-12
        return float(self.tpr[ok].max()) if ok.any() else 0.0

    def measurable(self, fpr: float) -> bool:
        """Enough non-members that a threshold can allow one false positive at rate `fpr`."""
        return self.non_members * fpr >= 1.0 - 1e-9

    def points(self, limit: int = 200) -> list[tuple[float, float]]:
        """At most about `limit` points of the curve (for JSON), evenly spread over log FPR
        and TPR so the low-FPR corner keeps its detail; first and last always kept."""
        n = len(self.fpr)
        if n <= limit:
            keep = np.arange(n)
        else:
            grid = np.unique(
                np.concatenate(
                    [
                        np.searchsorted(self.fpr, np.geomspace(1e-5, 1, limit // 2)),
                        np.searchsorted(self.tpr, np.linspace(0, 1, limit // 2)),
                        [0, n - 1],
                    ]
                ).clip(0, n - 1)
            )
            keep = grid
        return [(float(self.fpr[i]), float(self.tpr[i])) for i in keep]


def roc(
    member_scores: npt.ArrayLike,
    non_member_scores: npt.ArrayLike,
    non_member_weights: npt.ArrayLike | None = None,
) -> Roc:
    """The ROC of a membership score. ValueError if either side is empty or a score or weight
    is not finite (a caller's mistake, not a user's)."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(non_member_scores, dtype=np.float64)
    w = (
        np.ones(len(n))
        if non_member_weights is None
        else np.asarray(non_member_weights, dtype=np.float64)
    )
    if len(m) == 0 or len(n) == 0:
        raise ValueError("a ROC needs members and non-members")
    if w.shape != n.shape or (w < 0).any() or not w.sum() > 0:
        raise ValueError("one non-negative weight per non-member, not all zero")
    if not (np.isfinite(m).all() and np.isfinite(n).all() and np.isfinite(w).all()):
        raise ValueError("scores and weights must be finite")
    scores = np.concatenate([m, n])
    pos = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    neg = np.concatenate([np.zeros(len(m)), w])
    order = np.argsort(-scores, kind="stable")
    scores, pos, neg = scores[order], pos[order], neg[order]
    # One point per distinct score: the last index of each run of equal scores.
    last = np.flatnonzero(np.diff(scores) != 0)
    ends = np.concatenate([last, [len(scores) - 1]])
    tp = np.cumsum(pos)[ends]
    fp = np.cumsum(neg)[ends]
    tpr = np.concatenate([[0.0], tp / len(m)])
    fpr = np.concatenate([[0.0], fp / w.sum()])
    fpr[-1] = tpr[-1] = 1.0
    effective = float(w.sum() ** 2 / (w**2).sum())
    return Roc(fpr, tpr, len(m), effective)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for a rate."""
    if trials <= 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(a, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - a, successes + 1, trials - successes))
    return lo, hi


def dp_tpr_bound(fpr: float, epsilon: float, delta: float) -> float:
    """The largest TPR any membership test can reach at false positive rate `fpr` against an
    (ε, δ)-DP mechanism: min(1, e^ε·fpr + δ, 1 - e^-ε·(1 - δ - fpr)) (Kairouz et al. 2015)."""
    if not math.isfinite(epsilon):
        return 1.0
    a = math.exp(epsilon) * fpr + delta
    b = 1 - math.exp(-epsilon) * (1 - delta - fpr)
    return float(min(1.0, a, b))


def dp_auc_bound(epsilon: float, delta: float, steps: int = 20_000) -> float:
    """The largest AUC any membership test can reach against an (ε, δ)-DP mechanism (the area
    under `dp_tpr_bound`)."""
    if not math.isfinite(epsilon):
        return 1.0
    x = np.linspace(0.0, 1.0, steps + 1)
    y = np.array([dp_tpr_bound(float(v), epsilon, delta) for v in x])
    return float(np.trapezoid(y, x))


def label_weights(
    member_labels: npt.ArrayLike, non_member_labels: npt.ArrayLike
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(weights of the non-members, which members to keep): each non-member of class c weighs
    P_members(c) / P_non_members(c), so the weighted non-members have the members' label mix;
    members of a class no non-member has cannot be matched and are left out."""
    ml = np.asarray(member_labels)
    nl = np.asarray(non_member_labels)
    classes, counts = np.unique(nl, return_counts=True)
    keep = np.isin(ml, classes)
    kept = ml[keep]
    if len(kept) == 0:
        return np.ones(len(nl)), keep
    p_non = dict(zip(classes.tolist(), (counts / len(nl)).tolist(), strict=True))
    mc, mcounts = np.unique(kept, return_counts=True)
    p_mem = dict(zip(mc.tolist(), (mcounts / len(kept)).tolist(), strict=True))
    w = np.array([p_mem.get(c, 0.0) / p_non[c] for c in nl.tolist()], dtype=np.float64)
    return w, keep

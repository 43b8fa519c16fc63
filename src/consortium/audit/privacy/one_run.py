"""The one-run ε lower bound of Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
Training Run" (NeurIPS 2023, arXiv:2305.08846).

m canaries are each put into the training data independently with probability 1/2; the auditor
then guesses, for r of them (abstaining on the rest), whether each was in, and v of its guesses
are right. If the training is (ε, δ)-DP, v is stochastically dominated as the paper's Theorem
5.2 / Corollary 5.4 state, and the p-value of seeing v or more right is

    P[Binomial(r, q) ≥ v] + 2·m·δ·max_{i=1..v} P[v - i ≤ Binomial(r, q) < v] / i,
    q = e^ε / (1 + e^ε)  (the accuracy of ε-DP randomised response),

which is the paper's Appendix D `p_value_DP_audit`, implemented here from that statement
(vectorised with SciPy; the running maximum of the loop is the maximum of the partial sums over
i). The lower bound at confidence 1 - β is the largest ε whose p-value is below β, found as the
paper's `get_eps_audit` does: an upper bracket stepped by 1, then 30 bisections, the low end
returned (so it never overstates).

With every guess right (v = r), the bound is the most r guesses can show: `cap`. That is what
keeps a one-run audit from ever showing a large ε (at m = 1000, δ = 0, β = 0.05: about 5.8):
a bound at the cap says "at least this much", not "this much".
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

#: 1 - confidence of the bound (95%).
BETA = 0.05


def _check(m: int, r: int, v: int, delta: float) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta {delta} outside [0, 1]")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The probability of v or more right guesses out of r, m canaries, under (ε, δ)-DP."""
    _check(m, r, v, delta)
    if epsilon < 0:
        raise ValueError(f"epsilon {epsilon} < 0")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    partial = np.cumsum(binom.pmf(v - i, r, q))  # P[v - i <= Binomial(r, q) < v]
    alpha = float(np.max(partial / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = BETA) -> float:
    """The largest ε that v right guesses out of r (m canaries) reject at level `beta`: a lower
    bound on the ε of the training, at confidence 1 - beta. 0 when nothing is rejected."""
    _check(m, r, v, delta)
    if not 0 < beta < 1:
        raise ValueError(f"beta {beta} outside (0, 1)")
    lo, hi = 0.0, 1.0
    if p_value(m, r, v, lo, delta) >= beta:
        return 0.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi + 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def cap(m: int, r: int, delta: float, beta: float = BETA) -> float:
    """The highest bound r guesses on m canaries can show: every guess right."""
    return epsilon_lower_bound(m, r, r, delta, beta)


def guesses(
    scores: np.ndarray, r: int
) -> tuple[np.ndarray, np.ndarray]:  # (guessed, guess: True = in)
    """The auditor's guesses, fixed before the scores are seen: the ⌈r/2⌉ highest scores
    guessed in, the ⌊r/2⌋ lowest guessed out, no guess on the rest. Returns the positions
    guessed and the guesses."""
    n = len(scores)
    if not 0 <= r <= n:
        raise ValueError(f"{r} guesses on {n} canaries")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    k_in = (r + 1) // 2
    k_out = r - k_in
    picked_in = order[:k_in]
    picked_out = order[n - k_out :] if k_out else order[:0]
    positions = np.concatenate([picked_in, picked_out])
    guess = np.concatenate([np.ones(k_in, dtype=bool), np.zeros(k_out, dtype=bool)])
    return positions, guess

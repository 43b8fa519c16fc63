"""Sparse SecAgg+ graphs sized for a stated corrupt fraction (Bell et al., CCS 2020, §4).

On the complete graph the threshold t = f + 1 keeps any f colluders from an honest member's
secrets. For a large consortium a complete graph costs every member n shares; a sparse graph of
degree k is safe only against a *stated* corrupt fraction, with k and t chosen so that, for
every participant at once (a union bound over n) except with probability 2^-bits:
- fewer than t of its k neighbours are corrupt (colluders never hold t shares of its secrets), and
- at least t of them are honest and survive (its masks can always be removed).
Neighbours are a uniformly random k-subset of the others (the graph is a ring over a permutation
the round id seeds), so both counts are hypergeometric.
"""

from __future__ import annotations

import functools
import math

from scipy.stats import hypergeom  # the exact tails; a Chernoff bound would oversize k

from consortium.core.errors import ConfigError


@functools.lru_cache(maxsize=256)  # pure, and costly (scipy tails): asked per member and round
def sparse_degree_and_threshold(
    n: int, corrupt_fraction: float, dropout_fraction: float, bits: int = 40
) -> tuple[int, int]:
    """The smallest even degree k (or n - 1) and a threshold t meeting both bounds."""
    if not 0 <= corrupt_fraction < 1 or not 0 <= dropout_fraction < 1:
        raise ConfigError("corrupt and dropout fractions must be in [0, 1)")
    others = n - 1
    corrupt = math.ceil(corrupt_fraction * n)
    live_honest = max(0, math.floor((1 - corrupt_fraction - dropout_fraction) * n) - 1)
    eps = 2.0**-bits / n
    for k in [*range(2, others, 2), others]:
        bad, good = hypergeom(others, corrupt, k), hypergeom(others, live_honest, k)
        # Smallest t with P[corrupt neighbours >= t] <= eps ...
        t = next(t for t in range(1, k + 2) if bad.sf(t - 1) <= eps)
        # ... and the honest survivors must still reach it.
        if t <= k and good.cdf(t - 1) <= eps:
            return k, t
    raise ConfigError(
        f"no graph of {n} participants meets 2^-{bits} with a corrupt fraction of "
        f"{corrupt_fraction} and {dropout_fraction} dropouts: lower either"
    )

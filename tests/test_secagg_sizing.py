"""SecAgg+ parameters sized for colluders: the complete graph with t = f + 1, or a sparse graph
sized for a stated corrupt fraction with a 2^-40 failure bound."""

from __future__ import annotations

import pytest
from scipy.stats import hypergeom

from consortium.core.errors import ConfigError
from consortium.core.genesis import quorum_for
from consortium.protocol.secagg.sizing import sparse_degree_and_threshold
from consortium.protocol.secure_round import Consortium, make_params

EPS = 2.0**-40


def _bounds_hold(n: int, corrupt: float, dropout: float, k: int, t: int) -> bool:
    import math

    bad = hypergeom(n - 1, math.ceil(corrupt * n), k)
    good = hypergeom(n - 1, max(0, math.floor((1 - corrupt - dropout) * n) - 1), k)
    return bool(bad.sf(t - 1) <= EPS / n and good.cdf(t - 1) <= EPS / n)


@pytest.mark.parametrize(("n", "corrupt", "dropout"), [(100, 1 / 3, 0.0), (1000, 0.05, 0.1)])
def test_sparse_sizing_meets_both_bounds_with_the_smallest_degree(
    n: int, corrupt: float, dropout: float
) -> None:
    k, t = sparse_degree_and_threshold(n, corrupt, dropout)
    assert _bounds_hold(n, corrupt, dropout, k, t)
    # No smaller even degree meets both, whatever its threshold.
    assert not any(_bounds_hold(n, corrupt, dropout, k - 2, tt) for tt in range(1, k))
    if (n, corrupt) == (100, 1 / 3):
        assert 66 <= k <= 88 and 34 <= t <= 45  # the rough figures for f = 33


def test_round_parameters_complete_graph_or_a_stated_fraction() -> None:
    c = Consortium(100, quorum_for(100))
    p = make_params(b"r", [f"m{i:03d}" for i in range(100)], 10, 1.0, c)
    assert (p.k, p.threshold, p.quorum, p.min_survivors) == (99, 34, 67, 67)
    big = [f"m{i:04d}" for i in range(400)]
    with pytest.raises(ConfigError, match="set secagg_corrupt_fraction"):
        make_params(b"r", big, 10, 1.0, Consortium(400, quorum_for(400)))
    sparse = make_params(b"r", big, 10, 1.0, Consortium(400, quorum_for(400), 3, 0.05))
    assert sparse.k < 399 and sparse.threshold > 1
    with pytest.raises(ConfigError, match="corrupt and dropout fractions"):
        sparse_degree_and_threshold(10, 1.0, 0.0)

"""Aggregation strategies as plug-ins (after Flower): FedAvg, FedProx, and a registry.

Two ways to aggregate, with the same result:

* in the clear, `strategy.aggregate([(num_samples, weights), ...])` returns the weighted mean;
* under secure aggregation, which can only *sum* vectors, each client sends
  `weighted_delta(local, global_, strategy.client_weight(n))` = [w·(local - global) ‖ w] and the
  aggregator, holding only the sum, calls `apply_delta_sum(global_, summed)`, which divides by the
  summed weight (the last element). The total weight is all the aggregator learns besides the sum.

With differential privacy, per-client weights scale each client's sensitivity, so a DP run should
use `FedAvg(weight_by_samples=False)` (uniform weights).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError, ModelError
from consortium.learning.adapter import Weights, check_weights, flatten, unflatten

Update = tuple[int, Mapping[str, npt.NDArray[np.float32]]]


@runtime_checkable
class Strategy(Protocol):
    """What the round driver needs from an aggregation strategy."""

    name: str

    def client_config(self) -> dict[str, float]:
        """Options merged into each client's TrainConfig (e.g. {"proximal_mu": 0.01})."""
        ...

    def client_weight(self, num_samples: int) -> float:
        """The weight a client with `num_samples` samples gets in the mean."""
        ...

    def aggregate(self, updates: Sequence[Update]) -> Weights:
        """Combine clients' (num_samples, weights) into new global weights."""
        ...


def _check_count(num_samples: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ModelError(f"sample count must be an integer, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ModelError(f"sample count must be positive, got {num_samples}")
    return int(num_samples)


class FedAvg:
    """Weighted mean of the clients' weights (McMahan et al., 2017)."""

    name = "fedavg"

    def __init__(self, *, weight_by_samples: bool = True) -> None:
        self.weight_by_samples = weight_by_samples

    def client_config(self) -> dict[str, float]:
        return {"proximal_mu": 0.0}

    def client_weight(self, num_samples: int) -> float:
        return float(_check_count(num_samples)) if self.weight_by_samples else 1.0

    def aggregate(self, updates: Sequence[Update]) -> Weights:
        if not updates:
            raise ModelError("cannot aggregate zero updates")
        like = check_weights(updates[0][1], updates[0][1])
        coef = np.array([self.client_weight(n) for n, _ in updates], dtype=np.float64)
        # One (clients x parameters) matrix and one matrix-vector product: no per-tensor loops.
        stacked = np.stack([flatten(check_weights(w, like)) for _, w in updates])
        mean = (coef / coef.sum()) @ stacked
        return unflatten(mean.astype(np.float32), like)


class FedProx(FedAvg):
    """FedAvg aggregation; clients add mu/2·||w - w_global||² to their loss (Li et al., 2020)."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, *, weight_by_samples: bool = True) -> None:
        if not mu >= 0.0 or not np.isfinite(mu):
            raise ConfigError(f"FedProx mu must be a non-negative number, got {mu}")
        super().__init__(weight_by_samples=weight_by_samples)
        self.mu = float(mu)

    def client_config(self) -> dict[str, float]:
        return {"proximal_mu": self.mu}


def weighted_delta(
    local: Mapping[str, npt.NDArray[np.float32]],
    global_: Mapping[str, npt.NDArray[np.float32]],
    weight: float,
) -> npt.NDArray[np.float32]:
    """A client's summable contribution: flat weight·(local - global_), then the weight itself."""
    if not weight > 0.0 or not np.isfinite(weight):
        raise ModelError(f"client weight must be a positive number, got {weight}")
    reference = check_weights(global_, global_)
    delta = flatten(check_weights(local, reference)) - flatten(reference)
    return np.append(delta * np.float32(weight), np.float32(weight)).astype(np.float32)


def apply_delta_sum(
    global_: Mapping[str, npt.NDArray[np.float32]], summed: npt.NDArray[np.floating]
) -> Weights:
    """New global weights from the sum of clients' `weighted_delta` vectors."""
    reference = check_weights(global_, global_)
    if not isinstance(summed, np.ndarray) or summed.ndim != 1 or summed.size < 1:
        raise ModelError("the summed update must be a non-empty one-dimensional array")
    total = float(summed[-1])
    if not total > 0.0 or not np.isfinite(total):
        raise ModelError(f"the summed client weight must be positive, got {total}")
    base = flatten(reference).astype(np.float64)
    if summed.size != base.size + 1:
        raise ModelError(f"summed update has {summed.size - 1} values, the model {base.size}")
    return unflatten((base + summed[:-1].astype(np.float64) / total).astype(np.float32), reference)


_REGISTRY: dict[str, Callable[..., Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx}


def register_strategy(name: str, factory: Callable[..., Strategy]) -> None:
    """Make a strategy available to `get_strategy` (and so to configuration files)."""
    _REGISTRY[name] = factory


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build a registered strategy by name, e.g. get_strategy("fedprox", mu=0.1)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for strategy {name!r}: {exc}") from exc

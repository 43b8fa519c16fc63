"""Privacy accounting with Google's dp-accounting: epsilon of composed, Poisson-subsampled
Gaussian mechanisms, and the noise multiplier that reaches a target epsilon.

Both units reduce to the same mechanism:

* record level: one DP-SGD step is a Gaussian mechanism (noise multiplier z relative to the
  per-sample clip) on a Poisson sample of rate q = 1 / ceil(n / batch_size) of the node's records;
  a node's epsilon composes all its steps over all rounds.
* client level: one round is a Gaussian mechanism on the sum of the node updates, with the
  effective noise multiplier z_eff = (noise std the sum is guaranteed to carry) / (L2 sensitivity
  on the grid), on a Poisson sample of the nodes at rate `client_sampling_rate`. Assumptions (see
  `client_dp.py`): the sum of discrete Gaussian shares is accounted as a Gaussian of the summed
  variance, which holds up to the Kairouz-Liu-Steinke slack tau (checked to be negligible);
  every contributor not counted as a tolerated dropout adds its share honestly; node sampling is
  secret and independent, else use client_sampling_rate = 1.

Accountant: RDP by default. It is deterministic, ~40 ms for any number of identical steps (RDP
composes by multiplication), and always a valid upper bound, so the auditor can recompute every
round's figures cheaply; PLD is ~10% tighter but ~10x slower per call, which matters in the
bisection and in an audit of many rounds and nodes. The choice is recorded with each spend.
With "pld" the result is min(RDP, PLD) (both are valid bounds), and RDP alone above epsilon 50.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting  # type: ignore[import-untyped]  # no type information shipped
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

from consortium.core.errors import ConfigError
from consortium.privacy.config import Accountant

# Search range of the bisection for a noise multiplier; beyond 1e3 the model learns nothing.
_Z_MIN, _Z_MAX = 1e-3, 1e3
# PLD's grid grows with epsilon (tens of GiB near z ~ 1e-3); above this RDP answers instead, a
# valid bound where the tightness of PLD no longer matters.
_PLD_MAX_EPS = 50.0


@dataclass(frozen=True)
class Segment:
    """`count` compositions of a Gaussian mechanism (noise multiplier z) on a Poisson sample."""

    noise_multiplier: float
    sampling_rate: float
    count: int


def _check(z: float, q: float, count: int, delta: float) -> None:
    if not (z >= 0 and math.isfinite(z)):
        raise ConfigError(f"noise multiplier must be finite and >= 0, got {z}")
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"sampling rate must be in (0, 1], got {q}")
    if count < 0:
        raise ConfigError(f"number of steps must be >= 0, got {count}")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def _event(seg: Segment) -> object:
    gauss = dp_accounting.GaussianDpEvent(seg.noise_multiplier)
    step = (
        gauss
        if seg.sampling_rate == 1.0
        else dp_accounting.PoissonSampledDpEvent(seg.sampling_rate, gauss)
    )
    return dp_accounting.SelfComposedDpEvent(step, seg.count)


def _merge(segments: list[Segment]) -> list[Segment]:
    """Runs of identical (z, q) as one self-composition: same epsilon, far cheaper with PLD."""
    out: list[Segment] = []
    for s in segments:
        last = out[-1] if out else None
        if last and (last.noise_multiplier, last.sampling_rate) == (
            s.noise_multiplier,
            s.sampling_rate,
        ):
            out[-1] = Segment(s.noise_multiplier, s.sampling_rate, last.count + s.count)
        else:
            out.append(s)
    return out


def epsilon_of(segments: Sequence[Segment], delta: float, accountant: Accountant = "rdp") -> float:
    """Epsilon at `delta` of all `segments` composed (inf when any step has no noise)."""
    for s in segments:
        _check(s.noise_multiplier, s.sampling_rate, s.count, delta)
    live = _merge([s for s in segments if s.count > 0])
    if not live:
        return 0.0
    if any(s.noise_multiplier == 0.0 for s in live):
        return math.inf
    return _composed_epsilon(tuple(live), delta, accountant)


@functools.lru_cache(maxsize=4096)
def _composed_epsilon(live: tuple[Segment, ...], delta: float, accountant: Accountant) -> float:
    # Cached: leader, voters and the budget check of every round ask for the same histories,
    # and one RDP evaluation of a subsampled Gaussian costs ~0.1 s.
    event = dp_accounting.ComposedDpEvent([_event(s) for s in live])
    rdp = rdp_privacy_accountant.RdpAccountant()
    # For small orders at high q it logs that a series did not converge and drops that order: the
    # bound from the remaining orders stays valid, so the warning is noise to our users.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        rdp.compose(event)
    finally:
        absl.setLevel(level)
    eps_rdp = float(rdp.get_epsilon(delta))
    if accountant == "rdp" or eps_rdp > _PLD_MAX_EPS:
        return eps_rdp
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(event)
    return min(eps_rdp, float(pld.get_epsilon(delta)))


def record_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """A node's record-level epsilon after `steps` DP-SGD steps at Poisson rate `sample_rate`."""
    return epsilon_of([Segment(noise_multiplier, sample_rate, steps)], delta, accountant)


def client_epsilon(
    noise_multiplier_total: float,
    client_sampling_rate: float,
    rounds: int,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """Client-level epsilon after `rounds` rounds whose sums carry noise
    `noise_multiplier_total` x sensitivity (the effective multiplier, dropouts accounted)."""
    return epsilon_of(
        [Segment(noise_multiplier_total, client_sampling_rate, rounds)], delta, accountant
    )


def record_sample_rate(n_records: int, batch_size: int) -> float:
    """Poisson rate of a node's DP-SGD: one expected batch per 1/q steps, as Opacus uses."""
    if n_records < 1 or batch_size < 1:
        raise ConfigError("record sampling needs at least one record and a batch size >= 1")
    return 1.0 / math.ceil(n_records / batch_size)


def record_steps_per_round(n_records: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n_records / batch_size)


def noise_multiplier_for(
    target_epsilon: float,
    sampling_rate: float,
    count: int,
    delta: float,
    accountant: Accountant = "rdp",
    rel_tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (within `rel_tol`) whose epsilon after `count` compositions at
    `sampling_rate` is <= `target_epsilon` (bisection on log z; epsilon falls as z grows)."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"target epsilon must be positive and finite, got {target_epsilon}")
    _check(1.0, sampling_rate, count, delta)
    if count == 0:
        return 0.0

    def eps(z: float) -> float:
        return epsilon_of([Segment(z, sampling_rate, count)], delta, accountant)

    if eps(_Z_MAX) > target_epsilon:
        raise ConfigError(
            f"epsilon {target_epsilon} at delta {delta} is out of reach even with noise "
            f"multiplier {_Z_MAX} over {count} steps; raise the target, delta or the sampling"
        )
    lo, hi = _Z_MIN, _Z_MAX
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def per_round_spend(
    history: Sequence[Segment],
    this_round: Segment,
    delta: float,
    accountant: Accountant = "rdp",
    before: float | None = None,
) -> tuple[float, float]:
    """(spend, total) of one more round: total = epsilon(history + round), and
    spend = total - epsilon(history), since epsilon does not add up linearly under composition.
    `before`, when the caller already knows epsilon(history), saves one accountant run."""
    if before is None:
        before = epsilon_of(history, delta, accountant)
    total = epsilon_of([*history, this_round], delta, accountant)
    return (math.inf if math.isinf(total) else total - before), total

"""Client-level distributed DP under SecAgg+: how much discrete Gaussian noise each node adds on
the integer grid, and a quantization scale that leaves room for it.

Pipeline of one node in a round (the unit is the node's whole contribution):

    x = w · clip(Δ, C)                      (secure_round.weighted_vector, model part)
    q = stochastic_round(x · scale)         (secagg.quantize)
    q' = q + node_noise_share(...)          (noise.add_to_words: on the grid, before masking)
    masked = SecAggClient.masked_input(q')  (masks added in Z_2^32)

Sensitivity on the grid: removing one node's contribution changes the sum by its q, and
||q||₂ <= ||x · scale||₂ + ||q - x · scale||₂ <= C · w_max · scale + sqrt(d), since stochastic
rounding moves each of the d coordinates by less than 1 (the (c + sqrt d) bound of Kairouz, Liu
and Steinke, ICML 2021, without their conditional rounding, which at our scales of ~1e5..1e8 per
unit changes nothing). The sum must carry a discrete Gaussian of std sigma = z · Delta; each node
adds N_Z(0, sigma² / (n - m)) so any n - m shares (m = tolerated dropouts, or nodes that may omit
their noise) add up to variance sigma². Accounting treats the summed shares as one Gaussian of that
variance; Kairouz et al. (Thm. 1) bound the gap by tau = 10 · sum_{k=1}^{n-1}
exp(-2 pi² s² k/(k+1)) with s the share std; `plan` refuses unless tau · d < 1e-12, which holds
whenever s >= ~2 (our shares are orders of magnitude larger). The weight word of [w·Δ ‖ w] gets
no noise: the sample counts that make up w are published in the round record anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from consortium.core.errors import ConfigError
from consortium.privacy.errors import PrivacyError
from consortium.privacy.noise import share_sigma

_WORD_LIMIT = 2**31  # the modular sum read back as int32 must stay inside (-2**31, 2**31)
_TAIL = 12.0  # P(|N(0,1)| > 12) ~ 3.6e-33: per-coordinate wrap risk from the noise tail
_TAU_LIMIT = 1e-12


@dataclass(frozen=True)
class ClientNoisePlan:
    """Noise parameters of one round, derived identically by every node from public values."""

    noise_multiplier: float  # z: guaranteed noise std / grid sensitivity
    sensitivity: float  # Delta on the grid
    sigma_total: float  # std the sum of any n - max_dropouts shares carries
    sigma_share: float  # std of each node's share
    n_expected: int
    max_dropouts: int
    tau: float  # Kairouz et al. slack of summing discrete Gaussians

    def body(self) -> dict[str, float | int]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "sigma_total": self.sigma_total,
            "n_expected": self.n_expected,
            "max_dropouts": self.max_dropouts,
        }


def kairouz_tau(share_std: float, n_shares: int) -> float:
    """tau = 10 · sum_{k=1}^{n-1} exp(-2 pi² s² k / (k + 1)) (Kairouz, Liu, Steinke 2021)."""
    return 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * share_std**2 * k / (k + 1)) for k in range(1, n_shares)
    )


def grid_sensitivity(client_clip: float, max_weight: float, scale: float, d: int) -> float:
    """L2 sensitivity of the quantized sum to one node: C · w_max · scale + sqrt(d)."""
    if not (client_clip > 0 and 0 < max_weight <= 1 and scale > 0 and d >= 1):
        raise ConfigError("grid sensitivity needs C > 0, 0 < w_max <= 1, scale > 0 and d >= 1")
    return client_clip * max_weight * scale + math.sqrt(d)


def plan(
    noise_multiplier: float,
    client_clip: float,
    max_weight: float,
    scale: float,
    d: int,
    n_expected: int,
    max_dropouts: int,
) -> ClientNoisePlan:
    """The noise of one round: d = number of model coordinates (the weight word excluded),
    max_weight = the largest w = n_i / N among the participants (1/n with uniform weights)."""
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"noise multiplier must be finite and >= 0, got {noise_multiplier}")
    delta = grid_sensitivity(client_clip, max_weight, scale, d)
    sigma = noise_multiplier * delta
    s = share_sigma(sigma, n_expected, max_dropouts)
    tau = kairouz_tau(s, n_expected) if sigma > 0 else 0.0
    if tau * d >= _TAU_LIMIT:
        raise PrivacyError(
            f"noise share std {s:.3g} on the grid is too small for the sum of {n_expected} "
            f"discrete Gaussians to be accounted as one Gaussian (tau·d = {tau * d:.3g}); "
            "raise the quantization scale or the noise multiplier"
        )
    return ClientNoisePlan(noise_multiplier, delta, sigma, s, n_expected, max_dropouts, tau)


def scale_with_headroom(
    n: int,
    vector_clip: float,
    noise_multiplier: float,
    client_clip: float,
    max_weight: float,
    d: int,
    max_dropouts: int,
) -> float:
    """A quantization scale s so the modular sum cannot wrap even with all n noise shares:
    n·(vector_clip·s + 1) + 12·sigma_all < 2**31 with sigma_all = z·(C·w_max·s + sqrt d)·
    sqrt(n / (n - m)) (all n shares present), then halved like SecAggParams' default.
    Pass it as `scale=` to SecAggParams.create (vector_clip is the clip given there)."""
    if n < 1 or not 0 <= max_dropouts < n:
        raise ConfigError(f"need 0 <= max_dropouts < n, got {max_dropouts} of {n}")
    r = _TAIL * noise_multiplier * math.sqrt(n / (n - max_dropouts))
    room = _WORD_LIMIT - 1 - n - r * math.sqrt(d)
    per_unit = n * vector_clip + r * client_clip * max_weight
    if room <= 0 or per_unit <= 0:
        raise PrivacyError(
            f"no quantization scale fits {n} updates plus noise multiplier {noise_multiplier} "
            "in 32-bit words; lower the noise multiplier or the number of coordinates"
        )
    return 0.5 * room / per_unit


def check_survivors(contributors: int, plan_: ClientNoisePlan) -> None:
    """Refuse an aggregate summed from fewer shares than the noise was sized for."""
    need = plan_.n_expected - plan_.max_dropouts
    if plan_.sigma_total > 0 and contributors < need:
        raise PrivacyError(
            f"only {contributors} of {plan_.n_expected} nodes contributed; the sum carries less "
            f"noise than accounted (sized for at least {need}): the round must not be published"
        )

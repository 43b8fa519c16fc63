"""The `[privacy]` table of a run configuration, validated.

Two units of privacy, usable alone or together:

* `record`: one training record. Every node trains with DP-SGD (per-sample clipping to
  `clip_norm`, Gaussian noise `noise_multiplier * clip_norm`, Poisson sampling at rate
  batch_size / n) and accounts its own epsilon over all its steps.
* `client`: one node's whole contribution to a round. Every node clips its update to L2 norm
  `client_clip` and adds its share of discrete Gaussian noise on the secure-aggregation grid, so
  the sum carries noise `noise_multiplier * sensitivity` even when `dropout_tolerance` nodes drop.

With `both`, `noise_multiplier` (or `target_epsilon`) applies to each unit separately, and each
unit's epsilon is checked against the purpose's budget on its own (they bound different
neighbouring relations, so they are not composed with each other).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consortium.core.errors import ConfigError

Unit = Literal["none", "record", "client", "both"]
Accountant = Literal["rdp", "pld"]


class PrivacyConfig(BaseModel):
    """Differential-privacy options (the run configuration's `[privacy]` table)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: Unit = Field("none", description="none, record, client or both")
    noise_multiplier: float | None = Field(
        None, ge=0.0, description="noise std / sensitivity; 0 means no noise (epsilon = inf)"
    )
    target_epsilon: float | None = Field(
        None, gt=0.0, description="calibrate the noise multiplier to reach this epsilon"
    )
    clip_norm: float = Field(1.0, gt=0.0, description="record level: per-sample L2 clip")
    client_clip: float = Field(1.0, gt=0.0, description="client level: L2 clip of a node update")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the consortium's delta")
    # Only 1 for now: accounting a rate below 1 assumes a secret random sample of members, and
    # no member is ever sampled (every node trains each round), so a lower rate would claim an
    # epsilon the run does not have.
    client_sampling_rate: float = Field(
        1.0,
        ge=1.0,
        le=1.0,
        description="probability that a node takes part in a round: 1 until secret member "
        "sampling exists",
    )
    dropout_tolerance: int | float = Field(
        0,
        ge=0,
        description="nodes whose noise may be missing: a count (int) or a fraction in [0, 1)",
    )
    accountant: Accountant = Field("rdp", description="rdp (fast, default) or pld (tighter)")

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        given = [f for f in ("noise_multiplier", "target_epsilon") if getattr(self, f) is not None]
        if self.unit == "none":
            if given:
                raise ValueError(
                    f"{' and '.join(given)} set but unit is 'none'; "
                    "set unit = record, client or both, or remove them"
                )
        elif len(given) != 1:
            raise ValueError(
                f"unit {self.unit!r} needs exactly one of noise_multiplier and target_epsilon "
                f"(got {'both' if given else 'neither'})"
            )
        if isinstance(self.dropout_tolerance, float) and not self.dropout_tolerance < 1.0:
            raise ValueError(
                "dropout_tolerance as a float is a fraction of the nodes and must be < 1; "
                "write an integer for a count of nodes"
            )
        if self.target_epsilon is not None and not math.isfinite(self.target_epsilon):
            raise ValueError("target_epsilon must be finite; use noise_multiplier = 0 for none")
        return self

    @property
    def record_level(self) -> bool:
        return self.unit in ("record", "both")

    @property
    def client_level(self) -> bool:
        return self.unit in ("client", "both")

    def max_dropouts(self, n_nodes: int) -> int:
        """How many of `n_nodes` expected contributors may be missing with the noise still whole."""
        if n_nodes < 1:
            raise ConfigError("a round needs at least one node")
        tol = self.dropout_tolerance
        m = math.floor(tol * n_nodes) if isinstance(tol, float) else int(tol)
        if m >= n_nodes:
            raise ConfigError(
                f"dropout_tolerance allows {m} of {n_nodes} nodes to drop; at least one must "
                "remain to add noise: lower dropout_tolerance"
            )
        return m


def load_privacy_config(table: dict[str, object] | None) -> PrivacyConfig:
    """Validate a `[privacy]` TOML table (None or {} gives unit = none) into a PrivacyConfig."""
    try:
        return PrivacyConfig.model_validate(table or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'privacy'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid [privacy] configuration: {problems}") from None

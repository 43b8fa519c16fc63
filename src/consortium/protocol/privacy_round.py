"""Differential privacy inside a round: who may still train, and the spend the record carries.

Pure functions of the run's `[privacy]` configuration, the purpose's budget from genesis and the
`privacy` bodies of the earlier rounds of that purpose on the ledger, so the leader (who writes a
round's `privacy` body), every voter (who recomputes it) and the auditor agree to the bit.

* Before training, each node checks that the next round would not take it (record level) or the
  consortium (client level) past the budget; if it would, it stops instead of training, since an
  update cannot be recalled once sent.
* Record level: each node trains with DP-SGD at noise multiplier z on its own sampling rate q and
  step count, and reports (z, q, steps) with its update; the leader composes them per node.
* Client level: every participant clips its delta to `client_clip`, weighs it uniformly (1/n, so
  one node's influence is bounded), and adds its share of discrete Gaussian noise on the SecAgg+
  integer grid; the record accounts z on the sum once per round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consortium.core.errors import ConsortiumError
from consortium.privacy.accounting import (
    noise_multiplier_for,
    record_sample_rate,
    record_steps_per_round,
)
from consortium.privacy.budget import Budget, BudgetTracker
from consortium.privacy.client_dp import ClientNoisePlan, plan, scale_with_headroom
from consortium.privacy.config import PrivacyConfig
from consortium.privacy.errors import BudgetExceeded

RecordParams = tuple[float, float, int]  # (noise multiplier, sampling rate, steps)


def client_noise_multiplier(p: PrivacyConfig, rounds: int) -> float:
    """z of the sum: given, or calibrated so `rounds` rounds reach the target epsilon."""
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    return noise_multiplier_for(
        p.target_epsilon, p.client_sampling_rate, rounds, p.delta, p.accountant
    )


def record_noise_multiplier(
    p: PrivacyConfig, n_records: int, batch_size: int, epochs: int, rounds: int
) -> float:
    """A node's DP-SGD z: given, or calibrated to its own data size over the whole run."""
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    q = record_sample_rate(n_records, batch_size)
    steps = record_steps_per_round(n_records, batch_size, epochs) * rounds
    return noise_multiplier_for(p.target_epsilon, q, steps, p.delta, p.accountant)


@dataclass
class RoundPrivacy:
    """The privacy state of one round, built by the node from the ledger when the round begins."""

    config: PrivacyConfig
    budget: Budget
    history: list[Mapping[str, Any]]
    client_z: float = 0.0
    #: Spends of rounds in which this node's update was released (sent in the clear, or its
    #: survivor set signed) but no record with it in it ever reached the ledger: a leader
    #: withheld the round, or the run stopped first. Known only to this node, which counts them
    #: against its own budget (`stop_reason`); the next record's body, which every voter
    #: recomputes from the ledger, does not.
    unrecorded: list[Mapping[str, Any]] = field(default_factory=list)

    def _tracker(self, *, unrecorded: bool = False) -> BudgetTracker:
        tracker = BudgetTracker(self.budget, self.config.unit, self.config.accountant)
        for body in self.history:
            tracker.commit(body)
        for body in self.unrecorded if unrecorded else []:
            tracker.commit(body)
        return tracker

    def _client(self) -> tuple[float, float] | None:
        if not self.config.client_level:
            return None
        return (self.client_z, self.config.client_sampling_rate)

    def stop_reason(self, round_no: int, me: str, mine: RecordParams | None) -> str | None:
        """Why the run must stop before this round (the budget), or None.

        Every node decides alike from the ledger: the client-level spend, and each node's next
        record-level spend at the parameters it reported last (this node's own exact ones), so
        all stop at the same round instead of some waiting for a quorum that will not come."""
        record: dict[str, RecordParams] = {}
        if self.config.record_level:
            last = self.history[-1].get("record") if self.history else None
            for node, r in (last or {}).items():
                params = reported_params({"dp": r})
                if params is not None:
                    record[node] = params
            if mine is not None:
                record[me] = mine
        try:
            self._tracker().next_round(
                round_no, client=self._client(), record=record if record else None
            )
        except BudgetExceeded as exc:
            return str(exc)
        if not self.unrecorded:
            return None
        # This node's own check also counts what it released that no record charged.
        try:
            self._tracker(unrecorded=True).next_round(
                round_no, client=self._client(), record={me: record[me]} if me in record else None
            )
        except BudgetExceeded as exc:
            return (
                f"{exc} (counting {len(self.unrecorded)} round(s) in which this node's update "
                "was released but no ledger record charged it)"
            )
        return None

    def body(self, round_no: int, record: Mapping[str, RecordParams]) -> dict[str, Any]:
        """The round record's `privacy` body; BudgetExceeded if the round must not happen."""
        return self._tracker().next_round(
            round_no,
            client=self._client(),
            record=dict(record) if self.config.record_level else None,
        )


def reported_params(metrics: Mapping[str, Any]) -> RecordParams | None:
    """(z, q, steps) a node reported with its update, shape-checked."""
    dp = metrics.get("dp")
    if dp is None:
        return None
    try:
        z, q, steps = float(dp["noise_multiplier"]), float(dp["sample_rate"]), int(dp["steps"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (z >= 0 and 0 < q <= 1 and steps >= 0):
        return None
    return (z, q, steps)


def record_params_of(privacy: Mapping[str, Any]) -> dict[str, RecordParams]:
    """node -> (z, q, steps) from a round record's privacy body (its `record` part)."""
    record = privacy.get("record") or {}
    if not isinstance(record, Mapping):
        raise ConsortiumError("the privacy spend's record part is not a map")
    out: dict[str, RecordParams] = {}
    for node, r in record.items():
        params = reported_params({"dp": r})
        if params is None:
            raise ConsortiumError(f"malformed DP-SGD parameters of {str(node)[:16]} in the record")
        out[node] = params
    return out


def missing_shares(rp: RoundPrivacy, n: int, colluders: int) -> int:
    """Noise shares of n that may be missing with the noise still whole: the tolerated dropouts,
    plus the f colluders, who know their own shares and can subtract them."""
    missing = rp.config.max_dropouts(n) + colluders
    if missing >= n:
        raise ConsortiumError(
            f"{n} participants cannot carry the noise when {rp.config.max_dropouts(n)} may drop "
            f"and {colluders} may collude: lower dropout_tolerance or add members"
        )
    return missing


def client_scale(rp: RoundPrivacy, n: int, model_size: int, colluders: int) -> float:
    """The SecAgg+ quantization scale leaving room for n updates and the noise in 32 bits."""
    c = rp.config
    return scale_with_headroom(
        n,
        c.client_clip + 1.0,
        rp.client_z,
        c.client_clip,
        1.0 / n,
        model_size,
        missing_shares(rp, n, colluders),
    )


def client_plan(
    rp: RoundPrivacy, n: int, scale: float, model_size: int, colluders: int
) -> ClientNoisePlan:
    """The discrete Gaussian noise each of n participants adds on the grid, sized so that the
    shares of any n - dropouts - colluders of them carry the whole noise."""
    c = rp.config
    missing = missing_shares(rp, n, colluders)
    return plan(rp.client_z, c.client_clip, 1.0 / n, scale, model_size, n, missing)

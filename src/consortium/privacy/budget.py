"""Privacy budgets: each round's spend goes into the cosigned round record, the run stops before a
round would exceed the purpose's (epsilon, delta), and the auditor recomputes every figure.

The round record carries `body["privacy"]` (all numbers float64/int; an infinite epsilon, i.e.
no noise, is written as None since dag-cbor has no infinity):

    {
      "purpose": "diagnosis",          # the genesis purpose whose budget is charged
      "unit": "client",                # record | client | both
      "delta": 1e-5,                   # the purpose's delta: every epsilon is at this delta
      "accountant": "rdp",             # rdp | pld (accounting.py)
      "client": {                      # present for unit client/both
        "noise_multiplier": 1.1,       # effective z of this round's sum (client_dp.plan)
        "sampling_rate": 1.0,          # client sampling rate q
        "epsilon": 0.21,               # this round's spend = total - previous total
        "total_epsilon": 0.93          # epsilon of all rounds so far composed
      },
      "record": {                      # present for unit record/both: one entry per participant
        "<node id>": {"noise_multiplier": 1.0, "sample_rate": 0.02, "steps": 50,
                       "epsilon": 0.05, "total_epsilon": 0.61}
      }
    }

Record-level totals are per node (a node's records see only its own steps); the budget holds
when the largest node total is within it. Client and record totals are checked separately.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.core.errors import ConfigError
from consortium.privacy.accounting import Segment, epsilon_of, per_round_spend
from consortium.privacy.config import Accountant, PrivacyConfig
from consortium.privacy.errors import BudgetExceeded, PrivacyError

_REL_TOL, _ABS_TOL = 1e-6, 1e-9
_ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "pld")


@dataclass(frozen=True)
class Budget:
    """A purpose's budget; epsilon = inf means the purpose sets none."""

    epsilon: float
    delta: float
    purpose: str = ""

    def __post_init__(self) -> None:
        if not self.epsilon > 0 or not 0.0 < self.delta < 1.0:
            raise ConfigError(
                f"budget of purpose {self.purpose!r} needs epsilon > 0 and 0 < delta < 1, "
                f"got ({self.epsilon}, {self.delta})"
            )

    @classmethod
    def from_purpose(cls, name: str, epsilon: float | None, delta: float | None) -> Budget:
        """From a genesis Purpose's fields; a missing delta falls back to 1e-5 only when the
        purpose has no epsilon either (no budget at all)."""
        if epsilon is not None and delta is None:
            raise ConfigError(f"purpose {name!r} has an epsilon budget but no delta")
        return cls(math.inf if epsilon is None else epsilon, delta or 1e-5, name)

    def check_config(self, privacy: PrivacyConfig) -> None:
        """The run may not promise a weaker delta than the purpose allows."""
        if privacy.unit != "none" and privacy.delta > self.delta:
            raise ConfigError(
                f"[privacy] delta {privacy.delta} exceeds purpose {self.purpose!r}'s delta "
                f"{self.delta}; set delta <= {self.delta}"
            )


def _enc(eps: float) -> float | None:
    return None if math.isinf(eps) else eps


def _dec(v: object) -> float:
    if v is None:
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PrivacyError(f"epsilon must be a number or None, got {v!r}")
    return float(v)


def _close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= _ABS_TOL + _REL_TOL * max(abs(a), abs(b))


@dataclass
class BudgetTracker:
    """Running totals of one purpose over the rounds of a run (leader, voters and auditor)."""

    budget: Budget
    unit: str
    accountant: Accountant = "rdp"
    client_history: list[Segment] = field(default_factory=list)
    record_history: dict[str, list[Segment]] = field(default_factory=dict)
    _totals: dict[str, float] = field(default_factory=dict, repr=False)  # cache: key -> total

    @property
    def delta(self) -> float:
        return self.budget.delta

    @property
    def client_total(self) -> float:
        if "client" not in self._totals:
            self._totals["client"] = epsilon_of(self.client_history, self.delta, self.accountant)
        return self._totals["client"]

    def record_total(self, node: str) -> float:
        key = f"record:{node}"
        if key not in self._totals:
            hist = self.record_history.get(node, [])
            self._totals[key] = epsilon_of(hist, self.delta, self.accountant)
        return self._totals[key]

    def would_exceed(self, next_spend: float, node: str | None = None) -> bool:
        """Would the client total (node None) or `node`'s record total pass the budget after a
        round spending `next_spend`? Spends are increments of the composed total."""
        current = self.client_total if node is None else self.record_total(node)
        return current + next_spend > self.budget.epsilon * (1 + _REL_TOL)

    def next_round(
        self,
        round_no: int,
        client: tuple[float, float] | None = None,
        record: Mapping[str, tuple[float, float, int]] | None = None,
    ) -> dict[str, Any]:
        """The `privacy` body of the next round: client = (z, q) of the sum, record = node ->
        (z, q, steps). Raises BudgetExceeded, naming what would pass the budget, instead."""
        body: dict[str, Any] = {
            "purpose": self.budget.purpose,
            "unit": self.unit,
            "delta": self.delta,
            "accountant": self.accountant,
        }
        over: list[str] = []
        if client is not None:
            seg = Segment(client[0], client[1], 1)
            spend, total = per_round_spend(
                self.client_history, seg, self.delta, self.accountant, self.client_total
            )
            if self.would_exceed(spend):
                over.append(f"client-level epsilon would reach {total:.4g}")
            body["client"] = {
                "noise_multiplier": seg.noise_multiplier,
                "sampling_rate": seg.sampling_rate,
                "epsilon": _enc(spend),
                "total_epsilon": _enc(total),
            }
        if record is not None:
            rec: dict[str, Any] = {}
            for node, (z, q, steps) in sorted(record.items()):
                seg = Segment(z, q, steps)
                hist = self.record_history.get(node, [])
                spend, total = per_round_spend(
                    hist, seg, self.delta, self.accountant, self.record_total(node)
                )
                if self.would_exceed(spend, node):
                    over.append(f"record-level epsilon of node {node} would reach {total:.4g}")
                rec[node] = {
                    "noise_multiplier": z,
                    "sample_rate": q,
                    "steps": steps,
                    "epsilon": _enc(spend),
                    "total_epsilon": _enc(total),
                }
            body["record"] = rec
        if over:
            raise BudgetExceeded(
                f"stopping before round {round_no}: "
                f"{'; '.join(over)}, above the budget epsilon {self.budget.epsilon} "
                f"(delta {self.delta}) of purpose {self.budget.purpose!r}"
            )
        return body

    def commit(self, body: Mapping[str, Any]) -> None:
        """Add a committed round's `privacy` body to the history."""
        client = body.get("client")
        if client is not None:
            self.client_history.append(
                Segment(float(client["noise_multiplier"]), float(client["sampling_rate"]), 1)
            )
            self._totals.pop("client", None)  # recomputed lazily: never trust a body's total
        for node, r in (body.get("record") or {}).items():
            self.record_history.setdefault(node, []).append(
                Segment(float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"]))
            )
            self._totals.pop(f"record:{node}", None)


def spend_purpose(body: Mapping[str, Any]) -> str | None:
    """The purpose a round's privacy body charges (None if it names none)."""
    purpose = body.get("purpose")
    return purpose if isinstance(purpose, str) else None


def _parse_check(i: int, body: Any, budget: Budget) -> list[str]:
    if not isinstance(body, Mapping):
        return [f"round {i}: privacy field is not a map"]
    problems = []
    if body.get("accountant") not in _ACCOUNTANTS:
        problems.append(f"round {i}: unknown accountant {body.get('accountant')!r}")
    if body.get("delta") != budget.delta:
        problems.append(
            f"round {i}: accounted at delta {body.get('delta')!r}, purpose delta is {budget.delta}"
        )
    if budget.purpose and body.get("purpose") != budget.purpose:
        problems.append(f"round {i}: charged to purpose {body.get('purpose')!r}")
    return problems


def _compare(where: str, entry: Mapping[str, Any], spend: float, total: float) -> list[str]:
    out = []
    for key, want in (("epsilon", spend), ("total_epsilon", total)):
        got = _dec(entry.get(key))
        if not _close(got, want):
            out.append(f"{where}: {key} recorded {got!r}, recomputed {want!r}")
    return out


def recompute_totals(records: Iterable[Mapping[str, Any] | None], budget: Budget) -> list[str]:
    """Auditor: recompute every spend and running total from the rounds' `privacy` bodies (in
    ledger order; None for a round without one) and list each mismatch or budget overrun."""
    problems: list[str] = []
    client_hist: list[Segment] = []
    record_hist: dict[str, list[Segment]] = {}
    last: dict[str, float] = {}  # recomputed running totals, so each round costs one run
    for i, body in enumerate(records, start=1):
        if body is None:
            continue
        found = _parse_check(i, body, budget)
        if found:
            problems += found
            continue
        acc: Accountant = body["accountant"]
        try:
            client = body.get("client")
            if client is not None:
                seg = Segment(float(client["noise_multiplier"]), float(client["sampling_rate"]), 1)
                spend, total = per_round_spend(
                    client_hist, seg, budget.delta, acc, last.get("client", 0.0)
                )
                client_hist.append(seg)
                last["client"] = total
                problems += _compare(f"round {i}: client", client, spend, total)
                if total > budget.epsilon * (1 + _REL_TOL):
                    problems.append(
                        f"round {i}: client-level epsilon {total:.4g} exceeds budget "
                        f"{budget.epsilon}"
                    )
            for node, r in sorted((body.get("record") or {}).items()):
                seg = Segment(
                    float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"])
                )
                hist = record_hist.setdefault(node, [])
                spend, total = per_round_spend(hist, seg, budget.delta, acc, last.get(node, 0.0))
                hist.append(seg)
                last[node] = total
                problems += _compare(f"round {i}: record {node}", r, spend, total)
                if total > budget.epsilon * (1 + _REL_TOL):
                    problems.append(
                        f"round {i}: record-level epsilon {total:.4g} of node {node} exceeds "
                        f"budget {budget.epsilon}"
                    )
        except (KeyError, TypeError, ValueError, ConfigError, PrivacyError) as exc:
            problems.append(f"round {i}: malformed privacy field ({exc})")
    return problems


def totals(records: Sequence[Mapping[str, Any] | None]) -> dict[str, float]:
    """Last recorded running totals: 'client' and one 'record:<node>' per node (for display)."""
    out: dict[str, float] = {}
    for body in records:
        if body is None:
            continue
        if body.get("client") is not None:
            out["client"] = _dec(body["client"].get("total_epsilon"))
        for node, r in (body.get("record") or {}).items():
            out[f"record:{node}"] = _dec(r.get("total_epsilon"))
    return out

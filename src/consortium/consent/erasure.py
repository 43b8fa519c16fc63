"""Erasure: crypto-shred a subject's salts and say what the model must forget.

Choice: retrain from the last checkpoint before the subject's first use. Every round's global
model is already a content-addressed artifact on the ledger, so the checkpoint of round r0 - 1
exists on every node; rounds r0 .. current are redone without the erased rows. SISA sharding was
not chosen: it changes every node's training and aggregation for all runs, to speed up a rare event.
Cost: (current - r0 + 1) rounds of training, which the caller times and reports.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from consortium.consent.commitments import commitment
from consortium.consent.registry import ConsentRegistry


@dataclass(frozen=True)
class Erasure:
    subject: str
    record_ids: list[str]  # the records the caller must delete from its data
    at: float
    used_rounds: list[tuple[int, str]]  # (round, purpose) that used any of the records

    @property
    def first_used_round(self) -> int | None:
        return min((r for r, _ in self.used_rounds), default=None)

    def ledger_body(self) -> dict[str, Any]:
        """The erasure event for the ledger: counts and rounds only, never an identifier."""
        return {
            "records": len(self.record_ids),
            "at": int(self.at * 1000),
            "first_used_round": self.first_used_round,
        }


@dataclass(frozen=True)
class RetrainPlan:
    from_checkpoint: int | None  # the round whose global model to restart from (0 = initial)
    rounds: int  # rounds to redo

    @property
    def needed(self) -> bool:
        return self.rounds > 0


def _contains(blob_leaves: list[bytes], c: bytes) -> bool:
    i = bisect.bisect_left(blob_leaves, c)
    return i < len(blob_leaves) and blob_leaves[i] == c


def rounds_using(registry: ConsentRegistry, subject: str) -> list[tuple[int, str]]:
    """The stored rounds whose commitments include any of the subject's records."""
    ids = registry.records_of(subject)
    salts = registry.salts(ids)
    used: list[tuple[int, str]] = []
    for rnd in registry.rounds():
        leaves = registry.round_leaves(rnd.round, rnd.purpose)
        if any(_contains(leaves, commitment(salts[r], r, rnd.purpose, rnd.round)) for r in ids):
            used.append((rnd.round, rnd.purpose))
    return used


def erase_subject(registry: ConsentRegistry, subject: str, *, at: float) -> Erasure:
    """Find where the subject's records were used (needs the salts), then shred the salts."""
    used = rounds_using(registry, subject)
    ids = registry.erase(subject, at=at)
    return Erasure(subject, ids, at, used)


def plan_retrain(erasure: Erasure, current_round: int) -> RetrainPlan:
    """Restart from the model of the round before first use; redo through `current_round`."""
    first = erasure.first_used_round
    if first is None or first > current_round:
        return RetrainPlan(None, 0)
    return RetrainPlan(first - 1, current_round - first + 1)


class RoundRef(NamedTuple):
    """What an erasure needs of a round record: its ledger slot, run and starting model."""

    slot: int
    run: str
    prev_model: Any


def checkpoint_for(erasure: Erasure, rounds: Sequence[RoundRef]) -> tuple[Any, int]:
    """(CID of the model to restart from, rounds to redo).

    Rounds are numbered by ledger slot; the checkpoint is the global model the round of first
    use started from (its record's prev_model), and every later round of that run is redone."""
    first = erasure.first_used_round
    start = next((r for r in rounds if r.slot == first), None)
    if first is None or start is None:
        return None, 0
    redo = [r for r in rounds if r.run == start.run and r.slot >= first]
    return start.prev_model, len(redo)

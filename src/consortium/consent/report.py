"""The data-protection officer's view: records used per purpose and round, and when each
withdrawal, expiry and erasure took effect: the first round whose selection saw it (a round
commits to the history it was selected from, `consent.history`), or, for an expiry, which is a
time rather than an event, the first round that started at or after it. (By start time alone, a
withdrawal recorded while a round was being selected could be credited to that round, though
the round never saw it and used the record.)

Counts only by default: the report can be shared without naming anyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consortium.consent.commitments import RoundCommitment
from consortium.consent.registry import ConsentRegistry


@dataclass(frozen=True)
class RoundUse:
    round: int
    purpose: str
    at: float
    records: int


@dataclass(frozen=True)
class Change:
    kind: str  # withdraw | expire | erase
    at: float
    purpose: str | None  # None for an erasure (all purposes)
    records: int
    effective_round: int | None  # None: no round has started since
    subject: str | None = None  # only with `with_subjects=True`


@dataclass(frozen=True)
class ConsentReport:
    rounds: list[RoundUse]
    changes: list[Change]

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds": [vars(r) for r in self.rounds],
            "changes": [vars(c) for c in self.changes],
        }


def _effective(rounds: list[RoundUse], at: float, purpose: str | None) -> int | None:
    starts = [r.round for r in rounds if r.at >= at and (purpose is None or r.purpose == purpose)]
    return min(starts, default=None)


def _seen(
    rounds: list[RoundUse], saw: dict[tuple[int, str], int], seq: int, purpose: str | None
) -> int | None:
    """The first round whose selection saw event `seq` (its history held that many events)."""
    after = [
        r.round
        for r in rounds
        if saw[(r.round, r.purpose)] >= seq and (purpose is None or r.purpose == purpose)
    ]
    return min(after, default=None)


def build_report(
    registry: ConsentRegistry, purpose: str | None = None, *, with_subjects: bool = False
) -> ConsentReport:
    stored = registry.rounds(purpose)
    rounds = [RoundUse(r.round, r.purpose, r.at, r.count) for r in stored]
    saw = {(r.round, r.purpose): r.events for r in stored}
    groups: dict[tuple[str, float, str | None, str], int] = {}
    last: dict[tuple[str, float, str | None, str], int] = {}  # the group's last event
    for e in registry.history():
        if e.kind == "withdraw" and (purpose is None or e.purpose == purpose):
            key = ("withdraw", e.at, e.purpose, e.subject)
        elif e.kind == "erase":
            key = ("erase", e.at, None, e.subject)
        else:
            continue
        groups[key] = groups.get(key, 0) + 1
        last[key] = e.seq
    for s in registry.state(purpose=purpose):
        # An expiry that a later withdrawal or erasure pre-empted is not a change of its own.
        exp = s.expires
        if (
            exp is not None
            and (s.withdrawn is None or s.withdrawn > exp)
            and (s.erased is None or s.erased > exp)
        ):
            key = ("expire", exp, s.purpose, s.subject)
            groups[key] = groups.get(key, 0) + 1
    changes: dict[tuple[str, float, str | None, str | None], int] = {}
    seqs: dict[tuple[str, float, str | None, str | None], int] = {}
    for key, n in groups.items():
        kind, at, p, subj = key
        k = (kind, at, p, subj if with_subjects else None)
        changes[k] = changes.get(k, 0) + n
        if key in last:
            seqs[k] = max(seqs.get(k, 0), last[key])
    out = []
    for k, n in changes.items():
        when = _seen(rounds, saw, seqs[k], k[2]) if k in seqs else _effective(rounds, k[1], k[2])
        out.append(Change(k[0], k[1], k[2], n, when, k[3]))
    out.sort(key=lambda c: (c.at, c.kind, c.purpose or "", c.subject or ""))
    return ConsentReport(rounds, out)


def ledger_usage(
    commitments_by_round: Mapping[int, Mapping[str, RoundCommitment]],
) -> list[tuple[int, str, str, int]]:
    """(round, purpose, node, records) rows across nodes, from the published commitments."""
    return sorted(
        (r, rc.purpose, node, rc.count)
        for r, per_node in commitments_by_round.items()
        for node, rc in per_node.items()
    )

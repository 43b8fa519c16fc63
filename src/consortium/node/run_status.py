"""What a node folder says about its current (or last) run, read without disturbing the node.

`consortium run status` and `run watch` (and later the dashboard) read a folder while its node
keeps writing it. So this module only reads: the ledger through a `query_only` connection
(`Ledger.open(readonly=True)`; SQLite's WAL gives each query a consistent snapshot while the node
appends), `status.json` (replaced atomically by the node) and `node.pub`. It never takes the
node's writer lock (`node.lock`) and never creates a file.

It trusts the folder: its node verified every entry before appending it. `consortium audit`
re-verifies everything; this is a view, not a check.

What it shows, and where each figure comes from:
- the run: the latest `run-config` entry (the configuration a quorum agreed to);
- rounds: that run's `round` records (leader, attempt, participants, dropouts per round);
- privacy: the purpose's budget from genesis and the running totals the round records carry
  (`privacy_history` of every round charged to the purpose, in every run), as recorded;
- state: finished (every round committed), stopped by the members (a `run-stop` entry), or
  stopped on this node (a budget stop or an error, from `status.json`), else running;
- challenges (runs with `challenge_every`): per holder, its result in the last challenge round
  that challenged it, from that round's storage section (artifacts proved, artifacts named
  missing);
- accuracy: never a node's own figure (see "Decided once" in docs/architecture.md); no
  evaluation of the global model is on the ledger yet, so none is published.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from consortium.core.errors import ConfigError, ConsortiumError, LedgerError
from consortium.core.genesis import Genesis
from consortium.core.identity import PUBLIC_FILE, PublicIdentity
from consortium.core.layout import LEDGER_FILE, STATUS_FILE
from consortium.ledger.entries import Entry
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.privacy.budget import totals
from consortium.protocol.record import (
    ROUND_KIND,
    RUN_KIND,
    STOP_KIND,
    RoundRecord,
    RunRecord,
    StopRecord,
    privacy_history,
)

State = Literal["running", "finished", "stopped"]

#: Why no accuracy is shown (and `accuracy` is None in the JSON).
ACCURACY_NOT_PUBLISHED = (
    "not published: nodes publish no accuracy of their own, and no evaluation of the global "
    "model is on the ledger"
)


@dataclass(frozen=True)
class RoundView:
    """One committed round of the run."""

    round: int
    attempt: int
    leader: str  # node id
    participants: tuple[str, ...]
    dropouts: tuple[str, ...]
    index: int  # ledger index of its record
    time: int  # ms, the leader's statement
    epsilon: float | None  # the largest privacy total recorded after it (None: no DP spend)


@dataclass(frozen=True)
class ChallengeView:
    """A holder's result in the last challenge round that challenged it (docs/architecture.md,
    "Replication with retrievability challenges"): the artifacts it proved (signed answers)
    and those the record names it missing on."""

    holder: str  # node id
    round: int
    proved: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def result(self) -> Literal["proved", "missing"]:
        return "missing" if self.missing else "proved"


def challenge_results(records: Iterable[RoundRecord]) -> tuple[ChallengeView, ...]:
    """Per holder, in member-id order, its result in the last of `records` (a run's round
    records, in order) that challenged it."""
    last: dict[str, ChallengeView] = {}
    for r in records:
        section = r.storage
        if section is None or not (section.answers or section.missing):
            continue
        proved: dict[str, list[str]] = {}
        missing: dict[str, list[str]] = {}
        for a in section.answers:
            proved.setdefault(a.holder, []).append(a.artifact)
        for artifact, holder in section.missing:
            missing.setdefault(holder, []).append(artifact)
        for holder in proved.keys() | missing.keys():
            last[holder] = ChallengeView(
                holder,
                r.round,
                tuple(proved.get(holder, ())),
                tuple(missing.get(holder, ())),
            )
    return tuple(last[h] for h in sorted(last))


@dataclass(frozen=True)
class PrivacyView:
    """The purpose's budget and what its rounds spent so far, as the round records say."""

    purpose: str
    budget_epsilon: float | None  # None: the purpose sets no budget
    budget_delta: float | None
    client: float | None  # recorded client-level total (inf: no noise), None if never charged
    record: Mapping[str, float]  # node id -> recorded record-level total
    rounds_charged: int  # round records of any run that charged the purpose

    @property
    def spent(self) -> float | None:
        """The largest total: each is held to the budget on its own."""
        values = [*self.record.values(), *([] if self.client is None else [self.client])]
        return max(values) if values else None


@dataclass(frozen=True)
class RunStatus:
    """An agreed run of a node folder (the latest, unless asked for another), and how far it
    got."""

    folder: Path
    consortium: str
    members: Mapping[str, str]  # node id -> name, in genesis order
    node: str | None  # node id of this folder's node (node.pub), if known
    ledger_size: int
    run: str
    config: RunConfig
    config_index: int
    config_time: int  # ms
    rounds: tuple[RoundView, ...]  # committed rounds of this run, in order
    privacy: PrivacyView | None  # None: neither the run nor its purpose involve DP
    agreed_stop: str | None  # the reason of a run-stop entry for this run
    node_stop: str = ""  # why this folder's node stopped or sits the run out (status.json)
    node_finished: bool = False  # status.json: this node is done with the run
    next_run: tuple[str, int] | None = None  # (id, ledger index) of a run agreed after this one
    challenges: tuple[ChallengeView, ...] = ()  # per holder, its last challenge result

    def name(self, node_id: str) -> str:
        return self.members.get(node_id, node_id[:16])

    @property
    def committed(self) -> int:
        return len(self.rounds)

    @property
    def target(self) -> int:
        return self.config.rounds

    @property
    def latest(self) -> RoundView | None:
        return self.rounds[-1] if self.rounds else None

    @property
    def state(self) -> State:
        if self.agreed_stop is not None:
            return "stopped"
        if self.committed >= self.target:
            return "finished"
        if self.next_run is not None:  # members agree a run only when none is in progress
            return "stopped"
        if self.node_finished and self.node_stop:
            return "stopped"
        return "running"

    @property
    def reason(self) -> str:
        """Why the run stopped, to follow "stopped" ('' unless stopped)."""
        if self.agreed_stop is not None:
            return f"by agreement of the members: {self.agreed_stop}"
        if self.state != "stopped":
            return ""
        if self.next_run is not None:
            run, index = self.next_run
            return f"before the members agreed run {run} (ledger entry {index})"
        return f"on this node: {self.node_stop}"

    @property
    def node_note(self) -> str:
        """What this node says about the running run beyond the ledger (it sits it out, say)."""
        return self.node_stop if self.state == "running" else ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (`run status --json`); epsilons are numbers, null if unbounded."""
        c = self.config
        latest = self.latest
        out: dict[str, Any] = {
            "folder": str(self.folder),
            "consortium": self.consortium,
            "node": None if self.node is None else self._member(self.node),
            "ledger_size": self.ledger_size,
            "run": {
                "id": self.run,
                "agreed_at_entry": self.config_index,
                "agreed_time": self.config_time,
                "purpose": c.purpose,
                "rounds": c.rounds,
                "dataset": c.dataset,
                "model": c.model,
                "strategy": c.strategy,
                "secure_aggregation": c.secure_aggregation,
                "privacy": {
                    "unit": c.privacy.unit,
                    "target_epsilon": c.privacy.target_epsilon,
                    "noise_multiplier": c.privacy.noise_multiplier,
                    "delta": c.privacy.delta,
                },
                "anchor_every": c.anchor_every,
                "initial_model": c.initial_model or None,
            },
            "rounds": {"committed": self.committed, "target": self.target},
            "latest_round": None,
            "privacy": None,
            "challenges": None,
            "accuracy": None,
            "accuracy_note": ACCURACY_NOT_PUBLISHED,
            "state": self.state,
            "reason": self.reason,
            "node_note": self.node_note,
        }
        if latest is not None:
            out["latest_round"] = {
                "round": latest.round,
                "attempt": latest.attempt,
                "leader": self._member(latest.leader),
                "participants": [self._member(p) for p in latest.participants],
                "dropouts": [self._member(p) for p in latest.dropouts],
                "entry": latest.index,
                "time": latest.time,
                "epsilon": _finite(latest.epsilon),
            }
        if c.challenge_every:
            out["challenges"] = [
                {
                    "holder": self._member(v.holder),
                    "round": v.round,
                    "result": v.result,
                    "proved": list(v.proved),
                    "missing": list(v.missing),
                }
                for v in self.challenges
            ]
        p = self.privacy
        if p is not None:
            out["privacy"] = {
                "purpose": p.purpose,
                "budget": {"epsilon": p.budget_epsilon, "delta": p.budget_delta},
                "spent": _finite(p.spent),
                "client": _finite(p.client),
                "record": {self.name(k): _finite(v) for k, v in sorted(p.record.items())},
                "rounds_charged": p.rounds_charged,
            }
        return out

    def _member(self, node_id: str) -> dict[str, str]:
        return {"name": self.name(node_id), "id": node_id}


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else x


def _largest_total(record: RoundRecord) -> float | None:
    if not record.privacy:
        return None
    return max(totals([record.privacy]).values(), default=None)


def folder_error(directory: Path) -> ConfigError | None:
    """Why `directory` cannot be read as a node folder, or None."""
    if not directory.exists():
        return ConfigError(f"{directory}: no such folder")
    if not directory.is_dir():
        return ConfigError(f"{directory} is not a folder: give a node folder")
    if (directory / LEDGER_FILE).is_file():
        return None
    if (directory / PUBLIC_FILE).is_file():
        return ConfigError(
            f"{directory} has no ledger yet: it is created when the node first starts "
            f"(`consortium node start --dir {directory}`, with the signed genesis.json there)"
        )
    return ConfigError(
        f"{directory} is not a node folder (no {LEDGER_FILE}): give the folder of "
        "`consortium node init --dir`"
    )


def node_folder(directory: Path) -> Path:
    """`directory` if it is a node folder; for a run folder (`consortium demo`'s, holding node
    folders), its first node folder by name. ConfigError (one line) otherwise."""
    directory = Path(directory)
    if directory.is_dir() and not (directory / LEDGER_FILE).is_file():
        nodes = sorted(d for d in directory.iterdir() if (d / LEDGER_FILE).is_file())
        if nodes:
            return nodes[0]
    error = folder_error(directory)
    if error is not None:
        raise error
    return directory


class FolderReader:
    """Reads a node folder's latest run, again and again (`run watch`): each `read` opens the
    ledger read-only, parses only the entries appended since the last read, and closes it."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        error = folder_error(self.dir)
        if error is not None:
            raise error
        self._size = 0
        self._genesis: Genesis | None = None
        self._runs: list[tuple[int, RunRecord, int]] = []  # (index, record, time)
        self._rounds: list[tuple[int, RoundRecord, int]] = []
        self._stops: dict[str, str] = {}
        self._node: str | None = None
        pub = self.dir / PUBLIC_FILE
        if pub.is_file():
            try:
                self._node = PublicIdentity.load(pub).node_id
            except ConsortiumError:
                self._node = None  # only names the folder's node: not worth refusing for

    def _refresh(self) -> None:
        path = self.dir / LEDGER_FILE
        try:
            with Ledger.open(path, readonly=True) as ledger:
                if self._genesis is None:
                    self._genesis = ledger.genesis()
                elif ledger.genesis().digest() != self._genesis.digest():
                    raise LedgerError(f"{path} was replaced by the ledger of another consortium")
                for idx, data in ledger.raw_entries(self._size):
                    self._add(idx, data)
                    self._size = idx + 1
        except FileNotFoundError as exc:
            raise ConfigError(f"{path} is gone: was the folder moved?") from exc
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read {path}: {exc}") from exc

    def _add(self, idx: int, data: bytes) -> None:
        entry = Entry.from_bytes(data)
        if entry.kind == RUN_KIND:
            self._runs.append((idx, RunRecord.from_entry(entry), entry.time))
        elif entry.kind == ROUND_KIND:
            self._rounds.append((idx, RoundRecord.from_entry(entry), entry.time))
        elif entry.kind == STOP_KIND:
            stop = StopRecord.from_entry(entry)
            self._stops[stop.run] = stop.reason

    def _node_status(self, config_index: int) -> tuple[str, bool]:
        """(why this node stopped or sits the run out, whether it is done with it) from
        status.json, if the node wrote it after the run's agreement (its ledger then held more
        than `config_index` entries); an older status is about an earlier run."""
        try:
            status = json.loads((self.dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return "", False
        if not isinstance(status, dict):
            return "", False
        size = status.get("size")
        if not isinstance(size, int) or size <= config_index:
            return "", False
        stopped = status.get("stopped")
        return (stopped if isinstance(stopped, str) else ""), status.get("finished") is True

    @property
    def genesis(self) -> Genesis:
        """The consortium's manifest (ledger entry 0), as of the last read."""
        if self._genesis is None:
            self._refresh()
        assert self._genesis is not None
        return self._genesis

    @property
    def size(self) -> int:
        """Ledger entries as of the last read."""
        return self._size

    def round_records(self) -> list[tuple[int, RoundRecord, int]]:
        """Every round record of every run as of the last read: (ledger index, record, time)."""
        return list(self._rounds)

    def read(self, run: str | None = None) -> RunStatus:
        """The folder's latest agreed run now, or run `run` (`watch` follows the run it began
        with, even once another is agreed). ConsortiumError (one line) if there is none."""
        self._refresh()
        genesis = self._genesis
        assert genesis is not None
        if not self._runs:
            raise ConsortiumError(
                f"no run on the ledger of {self.dir} yet ({self._size} entries): start one "
                f"with `consortium run start --dir {self.dir}`"
            )
        at = len(self._runs) - 1
        if run is not None:
            found = [i for i, (_, r, _) in enumerate(self._runs) if r.run == run]
            if not found:
                raise ConsortiumError(f"no run {run} on the ledger of {self.dir}")
            at = found[-1]
        config_index, record, config_time = self._runs[at]
        next_run = None
        end = self._size  # ledger entries of this run (and before): up to the next agreement
        if at + 1 < len(self._runs):
            end = self._runs[at + 1][0]
            next_run = (self._runs[at + 1][1].run, end)
        config = RunConfig.from_body(dict(record.config))
        mine = [r for _, r, _ in self._rounds if r.run == record.run]
        rounds = tuple(
            RoundView(
                r.round,
                r.attempt,
                r.leader,
                r.participants,
                r.dropouts,
                idx,
                time,
                _largest_total(r),
            )
            for idx, r, time in self._rounds
            if r.run == record.run
        )
        # status.json is about the latest run only: the node rewrites it when a run is agreed.
        node_stop, node_finished = ("", False) if next_run else self._node_status(config_index)
        return RunStatus(
            folder=self.dir,
            consortium=genesis.consortium,
            members={m.node_id: m.name for m in genesis.members},
            node=self._node,
            ledger_size=self._size,
            run=record.run,
            config=config,
            config_index=config_index,
            config_time=config_time,
            rounds=rounds,
            privacy=self._privacy(genesis, config, end),
            agreed_stop=self._stops.get(record.run),
            node_stop=node_stop,
            node_finished=node_finished,
            next_run=next_run,
            challenges=challenge_results(mine),
        )

    def _privacy(self, genesis: Genesis, config: RunConfig, end: int) -> PrivacyView | None:
        """The purpose's spend as of ledger index `end` (the end of the run shown)."""
        purpose = genesis.purpose(config.purpose)
        history = privacy_history((r for i, r, _ in self._rounds if i < end), purpose.name)
        if config.privacy.unit == "none" and purpose.epsilon is None and not history:
            return None
        last = totals(history)
        return PrivacyView(
            purpose=purpose.name,
            budget_epsilon=purpose.epsilon,
            budget_delta=purpose.delta,
            client=last.get("client"),
            record={k.removeprefix("record:"): v for k, v in last.items() if k != "client"},
            rounds_charged=len(history),
        )


def format_epsilon(x: float | None) -> str:
    if x is None:
        return "-"
    return "∞ (no noise)" if math.isinf(x) else f"{x:.2f}"


def config_summary(s: RunStatus) -> str:
    """One line: what the members agreed to train."""
    c = s.config
    parts = [
        f"purpose {c.purpose}",
        f"{c.rounds} rounds of task {c.task}"
        if c.task
        else f"{c.rounds} rounds of {c.model} on {c.dataset}",
        c.strategy,
        f"secure aggregation {c.secure_aggregation}",
    ]
    p = c.privacy
    if p.unit == "none":
        parts.append("no differential privacy")
    else:
        noise = (
            f"target ε {p.target_epsilon:g}"
            if p.target_epsilon is not None
            else f"noise multiplier {p.noise_multiplier:g}"
        )
        parts.append(f"{p.unit}-level DP ({noise}, δ {p.delta:g})")
    if c.anchor_every:
        parts.append(f"anchored every {c.anchor_every} rounds")
    if c.initial_model:
        parts.append(f"from model {c.initial_model[:16]}…")
    return " · ".join(parts)


def privacy_summary(s: RunStatus, p: PrivacyView) -> str:
    """ε spent on the run's purpose (every run of it) against its budget, as recorded."""
    budget = (
        "no budget"
        if p.budget_epsilon is None
        else f"budget ε {p.budget_epsilon:g} (δ {p.budget_delta:g})"
    )
    if p.spent is None:
        return f"nothing spent yet on purpose {p.purpose!r}, {budget}"
    line = (
        f"ε {format_epsilon(p.spent)} of {budget} spent on purpose {p.purpose!r} in "
        f"{p.rounds_charged} rounds"
    )
    if p.client is not None:
        line += f"; client level {format_epsilon(p.client)}"
    if p.record:
        nodes = sorted((s.name(k), v) for k, v in p.record.items())
        line += "; record level per node: " + ", ".join(
            f"{k} {format_epsilon(v)}" for k, v in nodes
        )
    return line


def read_run_status(directory: Path) -> RunStatus:
    """The latest run of the node folder `directory`, read once (see `FolderReader`)."""
    return FolderReader(directory).read()

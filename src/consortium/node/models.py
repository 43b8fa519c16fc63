"""A run's global model out of a node folder: `consortium model export` and `model evaluate`.

Which model: a round record of an agreed run (the latest run that committed a round, or the one
named), by its round number in that run (default: its last round). Its bytes come from the
folder's store through the record's `model` CID, every block re-hashed against its CID, so the
exported file is exactly what the members cosigned: re-adding it to a store gives the same CID.
The bytes are safetensors (never pickle) whose tensor names are the task model's `state_dict`
keys, so `model.load_state_dict(safetensors.torch.load_file(FILE))` loads them.

**Superseded rounds.** An erasure is forgotten by retraining: a new run agreed with
`initial_model` = the model the round of first use started from (`consent.erasure.checkpoint_for`,
`run start --from-model`). So on the ledger a round is superseded when a later agreed run starts
from a model its own run had *before* that round: the `prev_model` of that round or of an earlier
round of the same run. Such a model may carry what the retraining removed, so export refuses it
unless told otherwise (`allow_superseded`); evaluation reports it. A run that starts from a
run's last model continues it and supersedes nothing.

Like `run status`, this reads a folder while its node may write it (the ledger through a
read-only connection; nothing is created) and trusts what the node appended; `audit`
re-verifies everything.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from consortium.core.errors import ConfigError, ConsortiumError, LedgerError
from consortium.core.files import atomic_write
from consortium.core.identity import PUBLIC_FILE, PublicIdentity
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.learning.adapter import set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.learning.task import Task, build_model, code_hash, evaluate_task, load_data
from consortium.ledger.entries import Entry
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig, load_node_config
from consortium.node.run_status import folder_error
from consortium.protocol.record import ROUND_KIND, RUN_KIND, RoundRecord, RunRecord
from consortium.store.blockstore import BlockStore
from consortium.store.cid import as_cid, cid_key
from consortium.store.objects import get_bytes


@dataclass(frozen=True)
class Supersession:
    """A later run that restarted from a checkpoint at or before a round (a retraining)."""

    run: str  # the later run's id
    config_index: int  # its run-config entry on the ledger
    from_round: int  # the round (of the earlier run) whose starting model it restarted from
    erasures: int  # records erased, as that run's round records state them (all nodes)

    def describe(self) -> str:
        erased = f"; its rounds record {self.erasures} erased record(s)" if self.erasures else ""
        return (
            f"run {self.run} (ledger entry {self.config_index}) retrained from the model before "
            f"round {self.from_round}{erased}"
        )


@dataclass(frozen=True)
class ModelRound:
    """The round whose model is wanted, and what the ledger says about it."""

    config: RunConfig
    record: RoundRecord
    index: int  # the round entry's ledger index
    rounds: int  # rounds the run committed
    superseded: Supersession | None

    @property
    def cid(self) -> str:
        return cid_key(as_cid(self.record.model))

    def describe(self) -> str:
        return f"round {self.record.round} of run {self.record.run} (ledger entry {self.index})"


def _read_ledger(
    directory: Path,
) -> tuple[list[tuple[int, RunRecord]], list[tuple[int, RoundRecord]]]:
    path = directory / LEDGER_FILE
    runs: list[tuple[int, RunRecord]] = []
    rounds: list[tuple[int, RoundRecord]] = []
    try:
        with Ledger.open(path, readonly=True) as ledger:
            for idx, data in ledger.raw_entries():
                entry = Entry.from_bytes(data)
                if entry.kind == RUN_KIND:
                    runs.append((idx, RunRecord.from_entry(entry)))
                elif entry.kind == ROUND_KIND:
                    rounds.append((idx, RoundRecord.from_entry(entry)))
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from exc
    return runs, rounds


def supersession(
    record: RoundRecord,
    runs: list[tuple[int, RunRecord]],
    rounds: list[tuple[int, RoundRecord]],
) -> Supersession | None:
    """The first later run that restarted from a model `record`'s run had before `record`'s
    round (its `prev_model` or an earlier round's), or None."""
    earlier: dict[str, int] = {}  # starting model -> the first round of the run that had it
    for _, r in rounds:
        if r.run == record.run and r.round <= record.round:
            earlier.setdefault(cid_key(as_cid(r.prev_model)), r.round)
    for idx, run in runs:
        start = run.config.get("initial_model")
        if idx <= record.slot or not isinstance(start, str) or not start:
            continue
        try:
            key = cid_key(as_cid(start))
        except ConsortiumError:
            continue  # not a CID: a node could not have started from it
        if key in earlier:
            erased = sum(
                e.records
                for _, r in rounds
                if r.run == run.run
                for v in r.erasures.values()
                for e in v
            )
            return Supersession(run.run, idx, earlier[key], erased)
    return None


def find_round(directory: Path, round_no: int | None = None, run: str | None = None) -> ModelRound:
    """The round of `run` (default: the latest run that committed a round) numbered `round_no`
    (default: its last); ConsortiumError in one line if the folder, run or round is not there."""
    directory = Path(directory)
    error = folder_error(directory)
    if error is not None:
        raise error
    runs, rounds = _read_ledger(directory)
    if not runs:
        raise ConsortiumError(
            f"no run on the ledger of {directory} yet: start one with "
            f"`consortium run start --dir {directory}`"
        )
    configs = {r.run: (idx, r) for idx, r in runs}
    if run is None:
        with_rounds = [r.run for _, r in rounds if r.run in configs]
        if not with_rounds:
            raise ConsortiumError(f"no run on the ledger of {directory} has committed a round yet")
        run = with_rounds[-1]
    elif run not in configs:
        known = ", ".join(dict.fromkeys(r.run for _, r in runs))
        raise ConsortiumError(f"no run {run} on the ledger of {directory} (runs: {known})")
    mine = [(idx, r) for idx, r in rounds if r.run == run]
    if not mine:
        raise ConsortiumError(f"run {run} has committed no round yet")
    if round_no is None:
        index, record = mine[-1]
    else:
        found = [(idx, r) for idx, r in mine if r.round == round_no]
        if not found:
            raise ConsortiumError(
                f"run {run} has no round {round_no}: it committed rounds 1 to {mine[-1][1].round}"
            )
        index, record = found[0]
    config = RunConfig.from_body(dict(configs[run][1].config))
    return ModelRound(config, record, index, mine[-1][1].round, supersession(record, runs, rounds))


def model_bytes(directory: Path, found: ModelRound) -> bytes:
    """The round's model from the folder's store, every block re-hashed against its CID (so the
    bytes are those the record's `model` CID names), and parsed as safetensors."""
    data = get_bytes(BlockStore(Path(directory) / STORE_DIR), found.record.model)
    weights_from_bytes(data)  # ModelError if not float32 safetensors
    return data


@dataclass(frozen=True)
class Exported:
    found: ModelRound
    out: Path
    size: int
    tensors: int
    parameters: int


def export_model(
    directory: Path,
    out: Path,
    *,
    round_no: int | None = None,
    run: str | None = None,
    force: bool = False,
    allow_superseded: bool = False,
) -> Exported:
    """Write the model of a round to `out` (atomically: the old file, or none, or all of it)."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder: give the file to write (--out model.safetensors)")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    found = find_round(directory, round_no, run)
    if found.superseded is not None and not allow_superseded:
        raise ConsortiumError(
            f"the model of {found.describe()} is superseded: {found.superseded.describe()}; "
            "export that run's model instead, or pass --allow-superseded"
        )
    data = model_bytes(directory, found)
    weights = weights_from_bytes(data)
    atomic_write(out, data)
    return Exported(found, out, len(data), len(weights), sum(int(w.size) for w in weights.values()))


@dataclass(frozen=True)
class Evaluated:
    found: ModelRound
    task: str
    examples: int
    metrics: dict[str, float]


def round_model(directory: Path, found: ModelRound) -> tuple[Task, nn.Module]:
    """The run's task as installed here (refused if its sources differ from what the run pins)
    and its model holding the round's weights, read from the store."""
    config = found.config
    task = config.load_task()
    here = code_hash(task.source)
    if here != config.task_hash:
        raise ConfigError(
            f"task {config.task_name!r} installed here has code hash {here}, the run pins "
            f"{config.task_hash or 'none'}: install the task the run trained"
        )
    model, like = build_model(task, config.seed)
    set_weights(model, weights_from_bytes(model_bytes(directory, found), like))
    return task, model


def evaluate_model(
    directory: Path, *, round_no: int | None = None, run: str | None = None
) -> Evaluated:
    """The round's model on this node's own test examples, through the run's task as installed
    here (refused if its sources differ from what the run pins)."""
    directory = Path(directory)
    found = find_round(directory, round_no, run)
    config = found.config
    task, model = round_model(directory, found)
    name = ""
    if (directory / PUBLIC_FILE).is_file():
        name = PublicIdentity.load(directory / PUBLIC_FILE).name
    _, test = load_data(task, load_node_config(directory).data.context(name))
    return Evaluated(found, config.task_name, len(test), evaluate_task(task, model, test))

"""Membership inference against a run folder's published models (`consortium audit privacy`).

Who is attacked, and with what ground truth:

- **The models** are the run's published global models: each round's `model` CID in its round
  record, read from the folder's store (every read re-hashed). That is exactly what an outside
  auditor holding a copy of the folder has (see `views`); the final model is the last round's.
- **Members** are the auditing node's own training records: the records of the folder's node
  (node.pub) that the run's task loads for it (`[data]` in node.toml, through the `Learner`,
  the only path from data to training), that the Learner trains on (it holds a tenth out for
  local metrics), and that the round's consent selection allowed (consent.sqlite keeps each
  round's selection by ledger slot). A record counts as a member of round r's model if it was
  used in any round up to r that the node contributed to. A record erased since is no member
  and no non-member: it is left out, as the node deleted its salt.
- **Non-members** are the task's test split as this node loads it (for the built-in datasets,
  the dataset's test split, which no node's Learner trains on). Another member could have
  trained on them only if it loads the data differently (another split seed, its own copy):
  the audit cannot see other nodes' data and trusts the task's split.
- **Reference models** (LiRA): the non-members are cut in two halves at random; half of the
  reference models are trained on each half, centrally, with the run's task, model, optimiser,
  learning rate and batch size, for the run's local epochs per round, one checkpoint per round
  (round r's model is compared with reference checkpoints after r·epochs epochs). A record is
  scored only with models that never saw it: a non-member with the models of the other half, a
  member (never seen by any) with one half's models, drawn at random, so every record is scored
  with the same number of reference models. The reference models train without DP even when
  the run used it; that shifts every record's reference statistic alike, which the ROC ignores.
- **Label mix.** For classification tasks the non-members are weighted to the members' label
  mix (`metrics.label_weights`): a node with a label-skewed shard would otherwise be told
  apart from the test split by its labels alone, which is no leak of membership.

Figures: per audited round and attack, AUC, TPR at 1% FPR and at 0.1% FPR where measurable
(`metrics`), and the ε the ledger records for this node's records after that round (its
record-level total, or the client-level total if smaller: a client-level guarantee covers any
one of its records), with the TPR and AUC that ε allows at most. Those bounds are a reference
line, not a test: members here are not chosen at random, so a measured rate above the bound is
a warning sign, not a proof (the one-run canary audit of issue 17 item 2 is the test).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from torch import nn

from consortium.audit.privacy.metrics import (
    Roc,
    clopper_pearson,
    dp_auc_bound,
    dp_tpr_bound,
    label_weights,
    roc,
)
from consortium.audit.privacy.mia import (
    lira_offline,
    loss_scores,
    per_example_loss,
    rmia_offline,
    statistic,
    uses_confidence,
)
from consortium.consent.registry import ConsentRegistry
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.identity import PUBLIC_FILE, PublicIdentity
from consortium.core.layout import CONSENT_FILE, LEDGER_FILE, STORE_DIR
from consortium.learning.adapter import Weights, check_weights, set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.learning.task import Examples, Task, build_model, code_hash, train_task
from consortium.learning.train import TrainConfig
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig, load_node_config
from consortium.node.learner import Learner
from consortium.node.run_status import FolderReader, RunStatus
from consortium.privacy.budget import totals
from consortium.protocol.record import RoundRecord, privacy_history, round_records
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes

#: False positive rates the figures are given at.
FPRS = (0.01, 0.001)
#: The attacks, in report order.
ATTACKS = ("loss", "lira", "rmia")
ATTACK_NAMES = {
    "loss": "loss threshold (Yeom et al. 2018)",
    "lira": "LiRA offline (Carlini et al. 2022)",
    "rmia": "RMIA offline (Zarifzadeh et al. 2024)",
}
#: Below these counts the figures would say nothing: refuse with a clear message instead.
MIN_MEMBERS = 10
MIN_NON_MEMBERS = 20

Progress = Callable[[str, int, int], None]


class PrivacyAuditError(ConsortiumError):
    """The folder cannot be audited for privacy (no run, no model, no data of its node)."""


@dataclass(frozen=True)
class AttackResult:
    attack: str
    roc: Roc
    members: int
    non_members: float  # effective number (weighted)

    @property
    def auc(self) -> float:
        return self.roc.auc

    def tpr(self, fpr: float) -> float | None:
        """TPR at `fpr`, None where there are too few non-members to measure it."""
        return self.roc.tpr_at(fpr) if self.roc.measurable(fpr) else None

    def tpr_interval(self, fpr: float) -> tuple[float, float] | None:
        """95% Clopper-Pearson interval of the TPR over the members (the threshold held)."""
        t = self.tpr(fpr)
        if t is None:
            return None
        return clopper_pearson(round(t * self.members), self.members)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"auc": self.auc}
        for f in FPRS:
            key = _fpr_key(f)
            out[f"tpr_at_{key}"] = self.tpr(f)
            ci = self.tpr_interval(f)
            out[f"tpr_at_{key}_ci95"] = None if ci is None else list(ci)
        return out


@dataclass(frozen=True)
class Claim:
    """What the ledger records for this node's records after a round."""

    epsilon: float  # inf: no noise at all
    delta: float
    source: str  # "record-level" | "client-level"

    def tpr_bound(self, fpr: float) -> float:
        return dp_tpr_bound(fpr, self.epsilon, self.delta)

    @property
    def auc_bound(self) -> float:
        return dp_auc_bound(self.epsilon, self.delta)

    def to_json(self) -> dict[str, Any]:
        finite = math.isfinite(self.epsilon)
        return {
            "epsilon": self.epsilon if finite else None,
            "delta": self.delta,
            "source": self.source,
            "auc_bound": self.auc_bound,
            **{f"tpr_bound_at_{_fpr_key(f)}": self.tpr_bound(f) for f in FPRS},
        }


@dataclass(frozen=True)
class RoundAudit:
    round: int
    model: str  # CID
    ledger_index: int
    members: int
    non_members: int
    attacks: Mapping[str, AttackResult]
    claim: Claim | None  # None: no differential privacy in this run's purpose

    def best(self) -> AttackResult:
        return max(self.attacks.values(), key=lambda a: a.auc)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "model": self.model,
            "ledger_index": self.ledger_index,
            "members": self.members,
            "non_members": self.non_members,
            "attacks": {k: a.to_json() for k, a in self.attacks.items()},
            "claimed": None if self.claim is None else self.claim.to_json(),
        }


@dataclass(frozen=True)
class Settings:
    """How the audit is run (every choice seeded)."""

    reference_models: int = 8
    seed: int = 0
    max_records: int = 5000  # members and non-members each, subsampled (seeded) above this
    max_rounds: int = 50  # rounds audited, evenly spread, the last always among them


@dataclass(frozen=True)
class MembershipAudit:
    folder: Path
    consortium: str
    run: str
    status: RunStatus
    node: str  # node id of the auditing node
    node_name: str
    rounds: Sequence[RoundAudit]
    settings: Settings
    reference_models: int
    reference_data: int  # non-members the reference models train on, per half
    epochs_per_round: int
    weighted: bool
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def final(self) -> RoundAudit:
        return self.rounds[-1]

    def to_json(self) -> dict[str, Any]:
        c = self.status.config
        final = self.final
        return {
            "format": "consortium-privacy-audit/v1",
            "folder": str(self.folder),
            "consortium": self.consortium,
            "run": self.run,
            "task": c.task or f"{c.dataset}/{c.model}",
            "secure_aggregation": c.secure_aggregation,
            "dp_unit": c.privacy.unit,
            "rounds_committed": self.status.committed,
            "node": {"id": self.node, "name": self.node_name},
            "view": "outside auditor: the published models only",
            "settings": {
                "reference_models": self.reference_models,
                "reference_training_records": self.reference_data,
                "epochs_per_round": self.epochs_per_round,
                "seed": self.settings.seed,
                "max_records": self.settings.max_records,
                "non_members_weighted_to_member_labels": self.weighted,
                "fprs": list(FPRS),
            },
            "final": {
                **final.to_json(),
                "roc": {k: a.roc.points() for k, a in final.attacks.items()},
            },
            "rounds": [r.to_json() for r in self.rounds],
            "notes": list(self.notes),
        }


def _fpr_key(f: float) -> str:
    return f"{f * 100:g}pct".replace(".", "_")


# -- reading the folder ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Folder:
    status: RunStatus
    node: str
    node_name: str
    records: list[tuple[int, RoundRecord]]  # every round record of the ledger, with its index
    run_records: list[tuple[int, RoundRecord]]  # the run's, in order


def _read(folder: Path, run: str | None) -> _Folder:
    status = FolderReader(folder).read(run)  # ConfigError/ConsortiumError: not a folder, no run
    pub = folder / PUBLIC_FILE
    if not pub.is_file():
        raise PrivacyAuditError(
            f"{folder} has no {PUBLIC_FILE}: a privacy audit measures what the models leak "
            "about the folder's own node's records, so it needs the folder of a member"
        )
    me = PublicIdentity.load(pub)
    if me.node_id not in status.members:
        raise PrivacyAuditError(f"{pub} names {me.name}, who is not a member of this consortium")
    with Ledger.open(folder / LEDGER_FILE, readonly=True) as ledger:
        records = round_records(enumerate(ledger.iter_entries()))
    mine = [(i, r) for i, r in records if r.run == status.run]
    if not mine:
        raise PrivacyAuditError(
            f"run {status.run} has no committed round yet: there is no published model to "
            "attack (wait for a round to commit, see `consortium run status`)"
        )
    return _Folder(status, me.node_id, me.name, records, mine)


def _task(status: RunStatus, notes: list[str]) -> Task:
    config = status.config
    task = config.load_task()  # TaskError: not installed here
    if not config.task_hash:
        notes.append(
            "the run pins no task code hash (a configuration from before the task API): the "
            "task installed here is assumed to load the same data"
        )
        return task
    here = code_hash(task.source)
    if here != config.task_hash:
        raise PrivacyAuditError(
            f"task {config.task_name!r} installed here has code hash {here}, the run pins "
            f"{config.task_hash}: install the version the run trained to audit it"
        )
    return task


def _selections(
    folder: Path,
    learner: Learner,
    node: str,
    purpose: str,
    consent_off: bool,
    records: list[tuple[int, RoundRecord]],
    notes: list[str],
) -> dict[int, npt.NDArray[np.int64]]:
    """Round number -> positions (into the learner's examples) this node trained on in that
    round, for the rounds it contributed to."""
    path = folder / CONSENT_FILE
    out: dict[int, npt.NDArray[np.int64]] = {}
    train_pos = learner._train_pos  # the records the Learner trains (not its held-out tenth)
    if not path.is_file():
        if not consent_off:
            raise PrivacyAuditError(
                f"{folder} has no {CONSENT_FILE} and its node.toml requires consent: which "
                "records the node trained on cannot be known"
            )
        for _, r in records:
            if node in r.participants:
                out[r.round] = train_pos
        return out
    try:
        with ConsentRegistry(path, readonly=True) as registry:
            for _, r in records:
                if node not in r.participants:
                    continue
                stored = registry.stored_selection(r.slot, purpose)
                if stored is None:
                    raise PrivacyAuditError(
                        f"{path} holds no consent selection for ledger slot {r.slot} (round "
                        f"{r.round}), in which this node took part: is this the node's own "
                        "folder?"
                    )
                out[r.round] = learner._rows(train_pos, stored[1])
    except sqlite3.Error as exc:
        raise PrivacyAuditError(f"cannot read {path}: {exc}") from exc
    for _, r in records:
        if r.round not in out:
            continue
        used, recorded = len(out[r.round]), r.samples.get(node, 0)
        if used > recorded:
            raise PrivacyAuditError(
                f"round {r.round}: the node reported training on {recorded} records, the "
                f"folder's data and consent give {used}: node.toml or the task's data changed "
                "since the run, so its members cannot be told"
            )
        if used < recorded:
            notes.append(
                f"round {r.round}: {recorded - used} of the {recorded} records the node trained "
                "on are no longer selected (erased since): left out"
            )
    return out


def _claims(data: _Folder, delta_default: float) -> dict[int, Claim | None]:
    """Round number -> the ε the ledger records for this node's records after that round."""
    purpose = data.status.config.purpose
    out: dict[int, Claim | None] = {}
    for index, r in data.run_records:
        history = privacy_history((rec for i, rec in data.records if i <= index), purpose)
        last = totals(history)
        delta = next(
            (float(h["delta"]) for h in reversed(history) if isinstance(h.get("delta"), float)),
            delta_default,
        )
        found = [(v, "record-level") for k, v in last.items() if k == f"record:{data.node}"]
        if "client" in last:
            found.append((last["client"], "client-level"))
        if found:
            epsilon, source = min(found)
            out[r.round] = Claim(epsilon, delta, source)
        else:
            out[r.round] = None
    return out


def _model(store: BlockStore, folder: Path, r: RoundRecord, like: Weights) -> Weights:
    try:
        data = get_bytes(store, r.model)
    except ConsortiumError as exc:
        raise PrivacyAuditError(
            f"the model of round {r.round} ({r.model}) cannot be read from {folder / STORE_DIR}: "
            f"{exc}"
        ) from exc
    return weights_from_bytes(data, like)


def _spread(rounds: Sequence[int], limit: int) -> list[int]:
    if len(rounds) <= limit:
        return list(rounds)
    picks = np.unique(np.linspace(0, len(rounds) - 1, limit).round().astype(int))
    return [rounds[i] for i in picks]


def _cap(n: int, limit: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=limit, replace=False)).astype(np.int64)


# -- the attacks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How the reference models train: the run's local training, centrally, `epochs` per round."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0

    @classmethod
    def of(cls, config: RunConfig) -> Recipe:
        return cls(config.epochs, config.batch_size, config.lr, config.optimizer, config.momentum)


@dataclass(frozen=True)
class Targets:
    """The records attacked: `members` (each a member of the rounds `rounds[r]` marks) and
    `non_members` (never trained on; also the reference models' training data)."""

    members: Examples
    non_members: Examples
    rounds: Mapping[int, npt.NDArray[np.bool_]]  # audited round -> which members it used


def run_attacks(
    task: Task,
    recipe: Recipe,
    models: Mapping[int, Callable[[], Weights]],
    targets: Targets,
    *,
    reference_models: int = 8,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[int, dict[str, AttackResult]]:
    """Both attacks against each round's model (`models[r]()` loads round r's weights):
    round -> attack -> result. Rounds with fewer than `MIN_MEMBERS` members are left out."""
    report = progress or (lambda stage, done, total: None)
    members, non = targets.members, targets.non_members
    k = reference_models
    rng = np.random.default_rng(seed)
    # The two halves of the non-members, and the half whose reference models score each target
    # (a member, never seen by any: a half at random; a non-member: the half it is not in).
    half = rng.permutation(len(non)) % 2
    group = np.concatenate([rng.integers(0, 2, size=len(members)), 1 - half])
    out_mask = (np.arange(k) % 2)[:, None] == group[None, :]
    everything = Examples(
        np.concatenate([members.x, non.x]),
        np.concatenate([members.y, non.y]),
        np.arange(len(members) + len(non), dtype=np.int64),
    )
    audited = sorted(models)
    ref = _reference_statistics(task, recipe, non, half, k, audited, everything, seed, report)
    weighted = bool(np.issubdtype(non.y.dtype, np.integer))
    confidence = uses_confidence(task, non)
    model, like = build_model(task, 0)
    n_idx = len(members) + np.arange(len(non))
    results: dict[int, dict[str, AttackResult]] = {}
    for step, rnd in enumerate(audited):
        report("scoring the published models", step, len(audited))
        set_weights(model, check_weights(models[rnd](), like))
        stat = statistic(model, everything, task)
        scores = {
            "loss": loss_scores(per_example_loss(model, everything, task)),
            "lira": lira_offline(stat, ref[step], out_mask),
            "rmia": rmia_offline(stat, ref[step], confidence, out_mask),
        }
        m_idx = np.flatnonzero(targets.rounds[rnd])
        weights = np.ones(len(non))
        if weighted:
            weights, keep = label_weights(members.y[m_idx], non.y)
            m_idx = m_idx[keep]
        if len(m_idx) < MIN_MEMBERS:
            continue
        effective = float(weights.sum() ** 2 / (weights**2).sum())
        results[rnd] = {
            name: AttackResult(name, roc(s[m_idx], s[n_idx], weights), len(m_idx), effective)
            for name, s in scores.items()
        }
    report("scoring the published models", len(audited), len(audited))
    return results


def _reference_statistics(
    task: Task,
    recipe: Recipe,
    pool: Examples,
    half: npt.NDArray[np.int64],
    k: int,
    audited: Sequence[int],
    targets: Examples,
    seed: int,
    report: Progress,
) -> npt.NDArray[np.float64]:
    """Train `k` reference models (model i on half i % 2 of `pool`) for max(audited) rounds of
    `recipe.epochs` epochs, and return the statistic of every target under each after each
    audited round: (len(audited), k, len(targets))."""
    last = max(audited)
    out = np.zeros((len(audited), k, len(targets)))
    at = {r: i for i, r in enumerate(audited)}
    total = k * last
    for i in range(k):
        data = pool.take(np.flatnonzero(half == i % 2).astype(np.int64))
        model_seed = seed * 1_000_003 + 7919 * (i + 1)
        model: nn.Module = build_model(task, model_seed)[0]
        for r in range(1, last + 1):
            report("training reference models", i * last + r - 1, total)
            cfg = TrainConfig(
                epochs=recipe.epochs,
                batch_size=recipe.batch_size,
                lr=recipe.lr,
                optimizer=recipe.optimizer,
                momentum=recipe.momentum,
                seed=model_seed * 100_003 + r,
            )
            train_task(task, model, data, cfg, None)
            if r in at:
                out[at[r], i] = statistic(model, targets, task)
    report("training reference models", total, total)
    return out


# -- the audit of a folder -------------------------------------------------------------------


def audit_membership(
    folder: Path,
    *,
    run: str | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> MembershipAudit:
    """Run both membership attacks against every audited round's published model of the run
    (the folder's latest, or `run`), with the folder's own node's records as ground truth."""
    settings = settings or Settings()
    if settings.reference_models < 2 or settings.reference_models % 2:
        raise ConfigError("reference models: give an even number, at least 2 (half per half)")
    if settings.max_records < MIN_NON_MEMBERS or settings.max_rounds < 1:
        raise ConfigError(f"max records must be at least {MIN_NON_MEMBERS}, max rounds at least 1")
    folder = Path(folder)
    notes: list[str] = []
    data = _read(folder, run)
    status = data.status
    config = status.config
    task = _task(status, notes)
    node_config = load_node_config(folder)
    learner = Learner(node_config.data, config, task=task, name=data.node_name)
    used = _selections(
        folder,
        learner,
        data.node,
        config.purpose,
        node_config.consent == "off",
        data.run_records,
        notes,
    )
    if not used:
        raise PrivacyAuditError(
            f"{data.node_name} contributed to no round of run {status.run}: none of its records "
            "is in any model, so there is nothing of its own to measure"
        )
    rng = np.random.default_rng(settings.seed)
    audited = _spread([r.round for _, r in data.run_records], settings.max_rounds)
    if len(audited) < len(data.run_records):
        notes.append(
            f"{len(audited)} of the run's {len(data.run_records)} rounds audited, evenly spread "
            "(the last among them)"
        )
    # Members of each audited round: used in any round up to it that the node contributed to.
    member_pos: dict[int, npt.NDArray[np.int64]] = {}
    seen: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
    for _, r in data.run_records:
        if r.round in used:
            seen = np.union1d(seen, used[r.round])
        if r.round in audited and len(seen):
            member_pos[r.round] = seen
    before = [r for r in audited if r not in member_pos]
    if before:
        notes.append(
            f"round{'s' if len(before) > 1 else ''} {', '.join(map(str, before))}: before "
            f"{data.node_name}'s first contribution, no member to test: not audited"
        )
    everyone = np.unique(np.concatenate(list(member_pos.values())))
    everyone = everyone[_cap(len(everyone), settings.max_records, rng)]
    members = learner.examples.take(everyone)
    test = learner.test
    non = test.take(_cap(len(test), settings.max_records, rng))
    if len(members) < MIN_MEMBERS:
        raise PrivacyAuditError(
            f"{data.node_name} trained on {len(members)} records: at least {MIN_MEMBERS} are "
            "needed to measure anything"
        )
    if len(non) < MIN_NON_MEMBERS:
        raise PrivacyAuditError(
            f"the task's test split holds {len(non)} records: at least {MIN_NON_MEMBERS} "
            "non-members are needed (they also train the reference models)"
        )
    store = BlockStore(folder / STORE_DIR, create=False)
    by_round = {r.round: (i, r) for i, r in data.run_records}
    _, like = build_model(task, config.seed)

    def loader(record: RoundRecord) -> Callable[[], Weights]:
        return lambda: _model(store, folder, record, like)

    targets = Targets(members, non, {r: np.isin(everyone, pos) for r, pos in member_pos.items()})
    results = run_attacks(
        task,
        Recipe.of(config),
        {r: loader(by_round[r][1]) for r in member_pos},
        targets,
        reference_models=settings.reference_models,
        seed=settings.seed,
        progress=progress,
    )
    claims = _claims(data, config.privacy.delta)
    rounds = [
        RoundAudit(
            rnd,
            str(by_round[rnd][1].model),
            by_round[rnd][0],
            next(iter(attacks.values())).members,
            len(non),
            attacks,
            claims[rnd],
        )
        for rnd, attacks in sorted(results.items())
    ]
    for rnd in member_pos:
        dropped = int(targets.rounds[rnd].sum()) - (
            results[rnd]["loss"].members if rnd in results else 0
        )
        if dropped:
            notes.append(
                f"round {rnd}: {dropped} members of a class no non-member has left out"
                if rnd in results
                else f"round {rnd}: fewer than {MIN_MEMBERS} members to measure: not audited"
            )
    if not rounds:
        raise PrivacyAuditError("no audited round had enough members to measure")
    return MembershipAudit(
        folder=folder,
        consortium=status.consortium,
        run=status.run,
        status=status,
        node=data.node,
        node_name=data.node_name,
        rounds=rounds,
        settings=settings,
        reference_models=settings.reference_models,
        reference_data=int(len(non) // 2),
        epochs_per_round=config.epochs,
        weighted=bool(np.issubdtype(non.y.dtype, np.integer)),
        notes=tuple(dict.fromkeys(notes)),
    )

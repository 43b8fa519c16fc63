"""One-run DP auditing (`consortium audit privacy --canaries m`): a separate canary run with the
audited run's own configuration, on the auditing consortium's own (simulated) nodes, and the ε
lower bound of Steinke, Nasr and Jagielski 2023 (`one_run`) against the accountant's ε.

- **The canary run:** as many members as the audited consortium, each an in-process `Node`
  (the real node, its real round machine, SecAgg+ and DP-SGD, over the in-process transport,
  real clock) in a fresh folder under a temporary directory, with a genesis holding the run's
  purpose and its budget. Every member's `[data]` is the auditing node's, with shard index i
  of n (a built-in dataset's shards; a task on its own files is refused). The run configuration
  is the audited run's (secure aggregation, DP unit, noise or target ε, clip, rounds, epochs,
  learning rate, batch size, seed), its task wrapped by `canary_task` and, with `rounds`, fewer
  rounds. Consent is off: canaries are synthetic.
- **The canaries:** m records of the auditing node's own test split (never trained on by any
  node), each given a wrong label drawn at random (a mislabelled record is what a model must
  memorise to fit, so its loss tells membership best), each put into the training data of the
  member that holds the auditing node's shard independently with probability 1/2 (seeded).
- **Scores and guesses:** each canary's loss under the run's final model, score = -loss; the
  auditor guesses "in" for the ⌈r/2⌉ highest scores and "out" for the ⌊r/2⌋ lowest, r fixed
  before the run (`--canary-guesses`, default m: no abstention), so the 95% confidence holds.
  An included canary the node's Learner held out (its tenth for local metrics) was not trained
  on: that only lowers the bound (counted in the notes).
- **Figures:** v right of r, the bound at 95% (`one_run.epsilon_lower_bound`), the most r
  guesses can show (`one_run.cap`), the accountant's ε for that member's records after the
  last round (its record-level total, or the client-level total if smaller, as the ledger of
  the canary run records it), and a defect when the bound is above it.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from consortium.audit.privacy import canary_task
from consortium.audit.privacy.membership import PrivacyAuditError, _claims, _model, _read, _task
from consortium.audit.privacy.mia import per_example_loss
from consortium.audit.privacy.one_run import BETA, cap, epsilon_lower_bound, guesses
from consortium.core.errors import ConfigError
from consortium.core.genesis import GENESIS_FILE, Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.core.layout import NODE_CONFIG_FILE, STORE_DIR
from consortium.learning.adapter import check_weights, set_weights
from consortium.learning.task import Examples, build_model
from consortium.node.config import DataConfig, RunConfig, load_node_config
from consortium.node.learner import Learner
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.store.blockstore import BlockStore
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CanarySettings:
    canaries: int
    guesses: int | None = None  # None: every canary (no abstention)
    rounds: int | None = None  # None: the audited run's
    seed: int = 0
    timeout: float = 3600.0  # seconds of real time the canary run may take
    workdir: Path | None = None  # keep the canary consortium here (default: a temporary one)


@dataclass(frozen=True)
class CanaryAudit:
    canaries: int
    guesses: int
    correct: int
    included: int
    epsilon_lower: float
    cap: float
    claimed: float | None  # the accountant's ε; None: no DP (no bound claimed)
    claim_source: str
    delta: float
    rounds: int  # rounds the canary run committed
    members: int
    config: RunConfig
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def defect(self) -> bool:
        """The measured lower bound is above what the accountant claims."""
        return self.claimed is not None and self.epsilon_lower > self.claimed

    @property
    def at_cap(self) -> bool:
        return self.epsilon_lower >= self.cap - 1e-6

    def to_json(self) -> dict[str, Any]:
        return {
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
            "included": self.included,
            "confidence": 1 - BETA,
            "epsilon_lower_bound": self.epsilon_lower,
            "highest_bound_these_guesses_can_show": self.cap,
            "accountant_epsilon": self.claimed,
            "accountant_source": self.claim_source,
            "delta": self.delta,
            "defect": self.defect,
            "rounds": self.rounds,
            "members": self.members,
            "secure_aggregation": self.config.secure_aggregation,
            "dp_unit": self.config.privacy.unit,
            "notes": list(self.notes),
        }


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


def _data_table(data: DataConfig, n: int, index: int, canary_file: Path | None) -> str:
    lines = ["[data]", f"dataset = {_toml_value(data.dataset)}"]
    if data.data_dir:
        lines.append(f"data_dir = {_toml_value(data.data_dir)}")
    lines += [
        f"partition = {_toml_value(data.partition)}",
        f"alpha = {data.alpha!r}",
        f"parts = {n}",
        f"index = {index}",
        f"seed = {data.seed}",
    ]
    options = dict(data.options)
    if canary_file is not None:
        options[canary_task.CANARY_FILE] = str(canary_file)
    if options:
        lines.append("[data.options]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in sorted(options.items())]
    return "\n".join(lines) + "\n"


async def run_in_process(dirs: list[Path], run: RunConfig, timeout: float) -> None:
    """Start a real `Node` for each member folder over one in-process network (real clock),
    have the first propose `run`, and wait until every node finished it; PrivacyAuditError if
    the run is not agreed or does not finish within `timeout` seconds."""
    net = InProcessNetwork()
    nodes = []
    for d in dirs:
        ident = NodeIdentity.load(d)
        cfg = load_node_config(d).model_copy(update={"tick_seconds": 0.02})
        nodes.append(Node(d, ident, InProcessTransport(net, ident.node_id), cfg))
    try:
        for node in nodes:
            await node.start()
        report = await nodes[0].propose_run(run)
        if not report.get("started"):
            raise PrivacyAuditError(f"the run was not agreed: {report}")
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(node.finished.wait() for node in nodes))
        except TimeoutError:
            raise PrivacyAuditError(
                f"the run did not finish within {timeout:g} s (--canary-timeout)"
            ) from None
    finally:
        for node in nodes:
            await node.stop()


def audit_canaries(
    folder: Path,
    settings: CanarySettings,
    *,
    run: str | None = None,
    progress: Progress | None = None,
) -> CanaryAudit:
    """Make a canary run like the folder's run and bound its ε from below (module docstring)."""
    m = settings.canaries
    if m < 2:
        raise ConfigError("--canaries: give at least 2 canaries")
    r = m if settings.guesses is None else settings.guesses
    if not 1 <= r <= m:
        raise ConfigError(f"--canary-guesses {r}: between 1 and the number of canaries ({m})")
    folder = Path(folder)
    notes: list[str] = []
    data = _read(folder, run)
    status = data.status
    config = status.config
    task = _task(status, notes)
    node_config = load_node_config(folder)
    if node_config.data.table is not None or node_config.data.images is not None:
        raise PrivacyAuditError(
            "a canary run needs every simulated member to hold a shard of the data; this node "
            "reads its own files ([data.table] or [data.images]), which other members do not "
            "have: canary audits of such tasks are not supported yet"
        )
    learner = Learner(node_config.data, config, task=task, name=data.node_name)
    test = learner.test
    if task.loss is not None or not np.issubdtype(test.y.dtype, np.integer):
        raise PrivacyAuditError("canaries are mislabelled records: a classification task only")
    if m > len(test):
        raise PrivacyAuditError(
            f"--canaries {m}: the task's test split, where canaries come from, holds "
            f"{len(test)} records"
        )
    model, like = build_model(task, config.seed)
    with torch.no_grad():
        classes = int(model(torch.from_numpy(test.x[:1])).shape[1])
    rng = np.random.default_rng(settings.seed)
    chosen = np.sort(rng.choice(len(test), size=m, replace=False)).astype(np.int64)
    picked = test.take(chosen)
    wrong = (picked.y.astype(np.int64) + rng.integers(1, classes, size=m)) % classes
    canaries = Examples(
        picked.x.copy(),
        wrong.astype(test.y.dtype),
        np.array([f"canary-{i:06d}" for i in range(m)]),
    )
    included = rng.random(m) < 0.5
    genesis = Genesis.load(folder / GENESIS_FILE)
    purpose = next((p for p in genesis.purposes if p.name == config.purpose), None)
    n = len(status.members)
    me = node_config.data.index if node_config.data.parts == n else 0
    if node_config.data.parts != n:
        notes.append(
            f"the node's data is shard {node_config.data.index} of {node_config.data.parts}; "
            f"the canary run cuts it in {n} (one per member), the canaries at shard {me}"
        )
    rounds = settings.rounds or config.rounds
    base = config.task or f"builtin:{config.dataset}/{config.model}"
    canary_config = config.model_copy(
        update={
            "task": canary_task.spec(base),
            "task_hash": "",
            "rounds": rounds,
            "initial_model": "",
        }
    ).pinned()
    report = progress or (lambda stage, done, total: None)
    with tempfile.TemporaryDirectory(prefix="consortium-canaries-") as tmp:
        root = settings.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        dirs = create_consortium(
            root / "consortium",
            n,
            dataset=node_config.data.dataset,
            seed=settings.seed,
            purpose=Purpose(config.purpose, purpose.epsilon, purpose.delta)
            if purpose is not None
            else Purpose(config.purpose),
            consent=False,
            allow_plaintext=config.secure_aggregation == "none",
        )
        canary_file = root / "canaries.npz"
        np.savez(
            canary_file,
            x=canaries.x[included],
            y=canaries.y[included],
            record_ids=canaries.record_ids[included],
        )
        for i, d in enumerate(dirs):
            path = d / NODE_CONFIG_FILE
            text = path.read_text()
            rest = text[text.index("[data]") :]
            policy = rest[rest.index("[policy]") :] if "[policy]" in rest else ""
            head = text[: text.index("[data]")]
            path.write_text(
                head
                + _data_table(node_config.data, n, i, canary_file if i == me else None)
                + policy
            )
        report("canary run (rounds)", 0, rounds)
        asyncio.run(run_in_process(dirs, canary_config, settings.timeout))
        report("canary run (rounds)", rounds, rounds)
        victim = dirs[me]
        ran = _read(victim, None)
        _, final = ran.run_records[-1]
        if len(ran.run_records) < rounds:
            notes.append(
                f"the canary run committed {len(ran.run_records)} of {rounds} rounds "
                "(the purpose's budget or a failure stopped it)"
            )
        store = BlockStore(victim / STORE_DIR, create=False)
        model, _ = build_model(task, config.seed)
        set_weights(model, check_weights(_model(store, victim, final, like), like))
        scores = -per_example_loss(model, canaries, task)
        claims = _claims(ran, config.privacy.delta)
        claim = claims[final.round]
        # Which included canaries the member's Learner held out (never trained on).
        theirs = Learner(load_node_config(victim).data, canary_config, name=f"node{me}")
        held_out = set(theirs.examples.record_ids[theirs._val_pos].tolist())
    ids = canaries.record_ids
    dropped = int(sum(1 for i in np.flatnonzero(included) if ids[i] in held_out))
    if dropped:
        notes.append(
            f"{dropped} of the {int(included.sum())} canaries drawn in fell in the member's "
            "held-out tenth (local metrics) and were never trained on: that only lowers the bound"
        )
    positions, guess = guesses(scores, r)
    v = int((included[positions] == guess).sum())
    delta = claim.delta if claim is not None else config.privacy.delta
    bound = epsilon_lower_bound(m, r, v, delta)
    claimed = None if claim is None or math.isinf(claim.epsilon) else claim.epsilon
    return CanaryAudit(
        canaries=m,
        guesses=r,
        correct=v,
        included=int(included.sum()),
        epsilon_lower=bound,
        cap=cap(m, r, delta),
        claimed=claimed,
        claim_source="" if claim is None else claim.source,
        delta=delta,
        rounds=len(ran.run_records),
        members=n,
        config=canary_config,
        notes=tuple(dict.fromkeys(notes)),
    )

"""Node and run configuration (TOML, validated by pydantic; every option has a default)."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from consortium.core.encoding import encode
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.genesis import Genesis
from consortium.core.layout import NODE_CONFIG_FILE
from consortium.learning.builtin import builtin_task
from consortium.learning.sources import ImageSource, TableSource
from consortium.learning.task import (
    NodeContext,
    Task,
    build_model,
    code_hash,
    load_data,
    load_task,
    make_model,
)
from consortium.privacy.config import PrivacyConfig
from consortium.privacy.dpsgd import dpsgd_problems
from consortium.protocol.storage import CHALLENGE_ARTIFACTS, MAX_CHALLENGE_ARTIFACTS
from consortium.zk import DEFAULT_SAMPLE  # records a proof of evaluation samples


class DataConfig(BaseModel):
    """This node's private data: which dataset, and which shard of it this node holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("digits", description="digits | breast_cancer | fashion-mnist")
    data_dir: str | None = Field(
        None, description="folder of this node's data (the Fashion-MNIST IDX files; a task's own)"
    )
    partition: Literal["all", "iid", "dirichlet"] = Field("all", description="how to shard")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (label skew)")
    parts: int = Field(1, ge=1, description="number of shards the dataset is cut into")
    index: int = Field(0, ge=0, description="which shard this node holds")
    seed: int = Field(0, description="seeds the split and the partition")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="settings for the run's task ([data.options])"
    )
    table: TableSource | None = Field(
        None, description="this node's CSV or Parquet files and their columns ([data.table])"
    )
    images: ImageSource | None = Field(
        None, description="this node's image folders, one folder per class ([data.images])"
    )

    def context(self, name: str = "") -> NodeContext:
        """What a task's `data(node)` sees of this node."""
        return NodeContext(
            name=name,
            data_dir=Path(self.data_dir) if self.data_dir else None,
            partition=self.partition,
            alpha=self.alpha,
            parts=self.parts,
            index=self.index,
            seed=self.seed,
            options=dict(self.options),
            table=self.table,
            images=self.images,
        )


class PolicyConfig(BaseModel):
    """What this member accepts to train on (`[policy]` in node.toml). A run it refuses never
    starts without a quorum of others, and then it sits the run out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    require_secure_aggregation: bool = Field(
        True, description="refuse runs in which the leader would see plaintext updates"
    )
    min_honest: int = Field(
        3, ge=2, description="refuse runs whose secure sums need fewer honest inputs than this"
    )
    purposes: list[str] = Field(
        default_factory=list, description="purposes this member trains for (empty: any)"
    )
    datasets: list[str] = Field(
        default_factory=list, description="datasets or tasks it trains (empty: any)"
    )


class ZkConfig(BaseModel):
    """This node's SRS for proofs of evaluation (`[zk]` in node.toml): node-local, since only
    its hash is agreed (the run config's `srs_sha256`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    srs: str | None = Field(
        None, description="path of the run's KZG SRS file (a ceremony's; its sha256 is agreed)"
    )


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    policy: PolicyConfig = PolicyConfig()
    zk: ZkConfig = ZkConfig()
    listen: str | None = Field(None, description="host:port to bind (default: node.pub address)")
    gateway: str | None = Field(
        None,
        description="host:port where the node serves its store, read only, as an IPFS trustless "
        "gateway while it runs (off when unset; 127.0.0.1:8080 serves this machine only)",
        pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$",
    )
    peers: dict[str, str] = Field(default_factory=dict, description="node id -> address override")
    tick_seconds: float = Field(0.1, gt=0, description="how often deadlines are checked")
    consent: Literal["required", "off"] = Field(
        "required",
        description="required: train only on records whose consent (DIR/consent.sqlite) covers "
        "the run's purpose; off: the data concerns no one (no registry)",
    )


#: Storage fields (issue 16) and their defaults, which `RunConfig.body` leaves out.
_STORAGE_DEFAULTS: dict[str, Any] = {
    "replicas": 0,
    "challenge_every": 0,
    "challenge_artifacts": CHALLENGE_ARTIFACTS,
}


class RunConfig(BaseModel):
    """What every member agrees to train; committed in round 1's ledger record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purpose: str = "research"
    rounds: int = Field(10, ge=1, le=100_000)
    task: str = Field(
        "", description="the task as 'package.module:name'; empty: the built-in dataset/model"
    )
    task_hash: str = Field(
        "", description="sha256 of the task's sources; the proposing node pins what it has"
    )
    dataset: str = Field("digits", description="built-in task: digits | breast_cancer | …")
    model: str = Field("mlp", description="built-in task: mlp | cnn | logreg")
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    mu: float = Field(0.0, ge=0)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    seed: int = 0
    min_updates: int = Field(1, ge=1)
    min_honest: int = Field(
        3, ge=2, description="honest inputs every secure sum holds even if f members collude"
    )
    secagg_corrupt_fraction: float | None = Field(
        None,
        gt=0,
        lt=1 / 3,
        description="a stated corrupt fraction below a third: SecAgg+ uses a sparse graph sized "
        "for it (needed above 300 participants); none: the complete graph, safe against f",
    )
    collect_timeout: float = Field(10.0, gt=0)
    round_timeout: float = Field(30.0, gt=0)
    anchor_every: int = Field(0, ge=0, description="anchor the final head every k rounds (0: off)")
    secure_aggregation: Literal["secagg+", "none"] = Field(
        "secagg+", description="secagg+: the leader learns only the sum; none: plaintext FedAvg"
    )
    clip_norm: float = Field(10.0, gt=0, description="L2 bound on each node's model delta")
    privacy: PrivacyConfig = Field(
        default_factory=PrivacyConfig, description="differential privacy ([privacy] table)"
    )
    initial_model: str = Field(
        "", description="CID of a ledger model to start from (retraining after an erasure)"
    )
    started: int = Field(0, description="ms since the epoch when the run was started")
    replicas: int = Field(
        0,
        ge=0,
        description="members holding each round artifact (model, SecAgg+ transcript): 0 every "
        "member; else between min(3, n) and n (docs/architecture.md, 'Replication')",
    )
    challenge_every: int = Field(
        0, ge=0, description="challenge every holder's artifacts every k rounds (0: off)"
    )
    challenge_artifacts: int = Field(
        CHALLENGE_ARTIFACTS,
        ge=1,
        le=MAX_CHALLENGE_ARTIFACTS,
        description="artifacts a challenge round challenges at most (at each holder), drawn "
        "from its beacon: bounds the record; each artifact is drawn with probability "
        "challenge_artifacts / (artifacts of the run) per challenge round",
    )
    # Proofs of evaluation (issue 18; docs/architecture.md "Proofs of evaluation"). Each is left
    # out of `body()` at its default, so runs without proofs keep their ids.
    prove_every: int = Field(
        0, ge=0, description="prove the model of every k-th round (0: no proofs)"
    )
    proof_sample: int = Field(
        DEFAULT_SAMPLE, ge=1, le=1024, description="s: test records each proof samples"
    )
    srs_sha256: str = Field("", description="sha256 of the KZG SRS file every proof uses")
    srs_test_only: bool = Field(
        False, description="the SRS was generated locally: proofs are TEST ONLY, not evidence"
    )
    zk_settings_sha256: str = Field(
        "", description="sha256 of the pinned EZKL circuit settings (model and s)"
    )
    # Committees (issue 15; docs/architecture.md "Committees"): left out of `body()` at 0.
    committee_size: int = Field(
        0,
        ge=0,
        description="K: each round's contributors are a committee of K members drawn from its "
        "beacon (0: every member); every member still cosigns",
    )

    def body(self) -> dict[str, Any]:
        body = self.model_dump()
        if not self.task and not self.task_hash:  # configs from before the task API: same id
            del body["task"], body["task_hash"]
        # Storage (issue 16) and proof (issue 18) fields are left out at their defaults, so
        # earlier run ids are unchanged and runs without them keep their ids.
        for key, default in {**_STORAGE_DEFAULTS, **_ZK_DEFAULTS, **_COMMITTEE_DEFAULTS}.items():
            if body[key] == default:
                del body[key]
        return body

    @property
    def storage(self) -> bool:
        """Whether rounds commit their artifacts' Merkle roots (a storage section)."""
        return bool(self.replicas or self.challenge_every)

    @property
    def proofs(self) -> bool:
        """Proofs of evaluation are on (`prove_every` > 0)."""
        return self.prove_every > 0

    def proves(self, round_no: int) -> bool:
        """Whether the model of `round_no` is proved: every `prove_every`-th and the last."""
        return self.proofs and (round_no % self.prove_every == 0 or round_no == self.rounds)

    @property
    def task_name(self) -> str:
        """What the run trains, for messages and `[policy] datasets`."""
        return self.task or self.dataset

    def load_task(self) -> Task:
        """The task this run trains, as installed on this node (TaskError if it is not)."""
        if self.task:
            return load_task(self.task)
        return builtin_task(self.dataset, self.model)

    def pinned(self) -> RunConfig:
        """This run with `task_hash` set to the hash of the task installed here, if unset."""
        if self.task_hash:
            return self
        return self.model_copy(update={"task_hash": code_hash(self.load_task().source)})

    def run_id(self) -> str:
        return hashlib.sha256(encode(self.body())).hexdigest()[:16]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RunConfig:
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(f"invalid run config: {_first(exc)}") from exc


_ZK_DEFAULTS: dict[str, Any] = {
    "prove_every": 0,
    "proof_sample": DEFAULT_SAMPLE,
    "srs_sha256": "",
    "srs_test_only": False,
    "zk_settings_sha256": "",
}


#: Committee fields (issue 15) and their defaults, which `RunConfig.body` leaves out.
_COMMITTEE_DEFAULTS: dict[str, Any] = {"committee_size": 0}


def committee_refusals(run: RunConfig, members: int) -> list[str]:
    """A committee size that does not fit the consortium or the run (rule `committee-config`):
    K must be below the number of members (0: every member) and hold the run's minimum of
    contributors; SecAgg+ within a committee is sized for a stated corrupt fraction, and DP is
    refused (a committee drawn from the public beacon is public: no amplification by sampling,
    and the accounting of members outside a round's committee is not built)."""
    k = run.committee_size
    if not k:
        return []
    out = []
    if not 4 <= k < members:
        out.append(f"committee_size = {k}: between 4 and the {members} members less one (0: all)")
    elif run.min_updates > k:
        out.append(f"min_updates = {run.min_updates} is more than the committee of {k}")
    elif run.secure_aggregation == "secagg+" and (f := (k - 1) // 3) + run.min_honest > k:
        out.append(
            f"a committee of {k} cannot hold its SecAgg+ floor: f = {f} colluders + min_honest "
            f"= {run.min_honest} honest inputs"
        )
    if run.secure_aggregation == "secagg+" and run.secagg_corrupt_fraction is None:
        out.append(
            "committee_size needs secagg_corrupt_fraction: a committee's safety rests on the "
            "stated corrupt fraction of all members"
        )
    if run.privacy.unit != "none":
        out.append("differential privacy is not supported with committees (committee_size > 0)")
    return [f"{why} [rule committee-config]" for why in out]


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def zk_config_refusals(run: RunConfig) -> list[str]:
    """Proof fields that do not make sense together (rule `zk-config`): proofs on without the
    agreed SRS hash or circuit settings hash, or with replicas (members would drop the models
    they prove and check), or proof fields set in a run without proofs."""
    out = []
    if run.proofs:
        if not _is_sha256(run.srs_sha256):
            out.append("prove_every > 0 needs srs_sha256, the sha256 (hex) of the run's SRS")
        if not _is_sha256(run.zk_settings_sha256):
            out.append(
                "prove_every > 0 needs zk_settings_sha256, the sha256 (hex) of the pinned "
                "circuit settings (`run start --prove-every K` pins both hashes)"
            )
        if run.replicas:
            # A member that does not hold round r's model drops it when round r + 1 commits,
            # then could neither prove it nor check the proofs listed of it.
            out.append(
                "prove_every > 0 with replicas > 0: every member must keep the models it proves "
                "and checks; use replicas = 0 (every member holds every model)"
            )
    else:
        extra = [k for k, v in _ZK_DEFAULTS.items() if getattr(run, k) != v]
        if extra:
            out.append(f"{', '.join(extra)} set in a run without proofs (prove_every = 0)")
    return [f"{why} [rule zk-config]" for why in out]


def consortium_refusals(run: RunConfig, genesis: Genesis) -> list[str]:
    """The consortium's own rules for a run, which every honest member and `audit` apply."""
    try:
        purpose = genesis.purpose(run.purpose)
    except ConsortiumError as exc:
        return [str(exc)]
    zk = zk_config_refusals(run)
    if zk:
        return zk
    if purpose.epsilon is not None and run.privacy.unit == "none":
        return [
            f"purpose {purpose.name!r} has a privacy budget: a run for it must use differential "
            "privacy, so that every round is charged [rule budget-bypass]"
        ]
    n = len(genesis.members)
    committee = committee_refusals(run, n)
    if committee:
        return committee
    if run.replicas and not min(3, n) <= run.replicas <= n:
        return [
            f"replicas = {run.replicas}: each artifact is held by between min(3, n) = "
            f"{min(3, n)} and n = {n} members (0: every member) [rule replicas]"
        ]
    return []


def run_refusals(run: RunConfig, genesis: Genesis, policy: PolicyConfig) -> list[str]:
    """Why this member refuses `run` (empty: it accepts): the consortium's rules first, then
    its own policy."""
    out = consortium_refusals(run, genesis)
    if policy.require_secure_aggregation and run.secure_aggregation != "secagg+":
        out.append("policy requires secure aggregation")
    if run.min_honest < policy.min_honest:
        out.append(
            f"policy requires min_honest >= {policy.min_honest}, the run has {run.min_honest}"
        )
    if policy.purposes and run.purpose not in policy.purposes:
        out.append(f"policy does not allow purpose {run.purpose!r}")
    if policy.datasets and run.task_name not in policy.datasets:
        out.append(f"policy does not allow dataset {run.task_name!r}")
    else:  # importing a task runs installed code: only one the policy allows
        out += task_refusals(run)
    return out


def task_refusals(run: RunConfig) -> list[str]:
    """Why this member cannot train `run`'s task: it is not installed here, its sources here
    differ from what the run pins (members never receive code from each other, so they must all
    have installed the same), or its model is unusable."""
    try:
        task = run.load_task()
    except ConsortiumError as exc:
        return [f"{exc} [rule task-not-installed]"]
    if not run.task_hash:
        return [f"the run pins no code hash for task {run.task_name!r} [rule task-hash]"]
    try:
        here = code_hash(task.source)
    except (ConsortiumError, OSError) as exc:
        return [f"cannot hash the sources of task {run.task_name!r}: {exc} [rule task-hash]"]
    if here != run.task_hash:
        return [
            f"task {run.task_name!r} installed here has code hash {here}, the run pins "
            f"{run.task_hash} [rule task-hash]"
        ]
    try:
        model = make_model(task, run.seed)
    except ConsortiumError as exc:
        return [f"{exc} [rule task-model]"]
    why = record_dp_refusal(run, task, model)  # before the float32 check: its fix is the cure
    if why:
        return [f"{why} [rule task-dp]"]
    try:
        build_model(task, run.seed)
    except ConsortiumError as exc:
        return [f"{exc} [rule task-model]"]
    return []


def data_refusals(run: RunConfig, data: DataConfig, name: str = "") -> list[str]:
    """Why this member cannot load `run`'s task data from its `[data]` (empty: it can), checked
    when it answers a proposal, so that `run start` names a member that would sit the run out
    for want of its data, with the reason, instead of that showing only in its own log. Call it
    after `run_refusals` accepted (it runs the task's `data`)."""
    try:
        load_data(run.load_task(), data.context(name))
    except ConsortiumError as exc:
        return [f"cannot load its data for task {run.task_name!r}: {exc} [rule task-data]"]
    return []


def record_dp_refusal(run: RunConfig, task: Task, model: nn.Module) -> str:
    """Why `run`'s record-level DP cannot train `task` (empty: it can, or the run has no
    record-level DP): DP-SGD needs a PyTorch model trained by the built-in loop, with no layer
    Opacus' validator refuses (named, with the fix). Checked when a member answers a proposal
    and again when it starts or resumes the run, never in the middle of one."""
    if not run.privacy.record_level:
        return ""
    name = run.task_name
    if task.framework != "pytorch":
        return (
            f"task {name!r} trains outside PyTorch ({task.framework}, e.g. a NumPy client): "
            "record-level DP needs DP-SGD on a PyTorch model; use privacy unit 'client' or a "
            "PyTorch task"
        )
    if task.customises_training:
        return (
            f"task {name!r} sets its own {', '.join(task.customises_training)}: "
            "record-level DP trains with the built-in DP-SGD loop"
        )
    problems = dpsgd_problems(model)
    if problems:
        return (
            f"task {name!r}: DP-SGD (record-level DP) cannot train its model: "
            f"{'; '.join(problems)}; or build the model through "
            "opacus.validators.ModuleValidator.fix(model)"
        )
    return ""


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


def load_node_config(directory: Path) -> NodeConfig:
    path = Path(directory) / NODE_CONFIG_FILE
    if not path.exists():
        return NodeConfig()
    try:
        return NodeConfig.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first(exc)}") from exc

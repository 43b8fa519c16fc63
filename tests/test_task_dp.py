"""DP-compatible models (issue 14, item 5): under record-level DP a member checks the task's
model with Opacus' validator when it answers the proposal and again when it starts the run, so a
model DP-SGD cannot train (BatchNorm) is refused by every member naming the layer and the fix,
and nothing is written or trained; the same task without record-level DP runs. A node that
cannot load its data says so at the vote too (`run start` names it), see test_own_data."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from consortium.core.errors import ConfigError
from consortium.learning.train import TrainConfig
from consortium.node.config import DataConfig, RunConfig, task_refusals
from consortium.node.learner import Learner
from consortium.privacy.config import PrivacyConfig
from consortium.privacy.dpsgd import dpsgd_problems, train_local_dp
from consortium.protocol.record import run_records
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.task_site import task_site, write_task_package

#: A task whose model normalises with BatchNorm: DP-SGD cannot train it (a record's normalised
#: value depends on the others in its batch).
TASK_SOURCE = """
import numpy as np
import torch

from consortium.learning.task import Examples, NodeContext, Task


def model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.BatchNorm1d(8, track_running_stats=False),  # float32 only (no batch counter)
        torch.nn.ReLU(),
        torch.nn.Linear(8, 2),
    )


def _blobs(n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + 2.0 * y[:, None]).astype(np.float32)
    return Examples(x, y.astype(np.int64), np.array([f"r{i}" for i in range(n)], dtype=object))


def data(node: NodeContext) -> tuple[Examples, Examples]:
    train = _blobs(300, 7)
    return train.take(np.arange(len(train))[node.index :: node.parts]), _blobs(100, 8)


task = Task("bn", model=model, data=data)
"""

TASK = "bntask.task:task"
RECORD_DP = {"unit": "record", "noise_multiplier": 1.0}
REFUSAL = (
    f"task {TASK!r}: DP-SGD (record-level DP) cannot train its model: layer '1' (BatchNorm1d): "
    "replace it with nn.GroupNorm (or nn.LayerNorm); or build the model through "
    "opacus.validators.ModuleValidator.fix(model) [rule task-dp]"
)


@pytest.fixture
def task_root(tmp_path: Path) -> Iterator[Path]:
    with task_site(tmp_path / "site") as root:
        write_task_package(root, "bntask", TASK_SOURCE)
        yield root


def test_opacus_names_every_layer_it_refuses_with_the_fix() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.InstanceNorm1d(4, affine=True, track_running_stats=True)),
        nn.LSTM(4, 4),
    )
    assert dpsgd_problems(model) == [
        "layer '1' (BatchNorm2d): replace it with nn.GroupNorm (or nn.LayerNorm)",
        "layer '2.0' (InstanceNorm1d): build it with track_running_stats=False",
        "layer '3' (LSTM): use opacus.layers.DPLSTM",
    ]
    assert dpsgd_problems(nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4))) == []
    # Straight into the DP-SGD trainer (the library without a node): the same words, no traceback
    # from inside Opacus.
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with pytest.raises(ConfigError, match=r"layer '1' \(BatchNorm1d\): replace it with nn.Group"):
        train_local_dp(bn, x, y, TrainConfig(), PrivacyConfig(**RECORD_DP), 1.0)  # type: ignore[arg-type]


def test_a_batchnorm_model_under_record_dp_is_refused_at_the_vote_naming_the_layer(
    tmp_path: Path, task_root: Path
) -> None:
    with_dp = run_config(2, privacy=RECORD_DP).model_copy(update={"task": TASK, "task_hash": ""})
    without = run_config(2).model_copy(update={"task": TASK, "task_hash": ""})

    async def go() -> None:
        nodes, net, clock = await cluster(tmp_path / "run", 3, seed=91, consent=False)
        try:
            report = await nodes[0].propose_run(with_dp)
            assert not report["started"], report
            assert report["refused"] == {f"node{i}": f"refused: {REFUSAL}" for i in range(3)}
            # Refused before anything was signed, stored or trained.
            assert all(n.machine is None and n.learner is None for n in nodes)
            assert all(n.ledger.size == 1 for n in nodes)
            # The same task without record-level DP runs.
            await start(nodes, without)
            await drive(nodes, net, clock)
            records = run_records(nodes[0].ledger)
            assert [len(r.participants) for r in records] == [3, 3]
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_member_that_gets_to_start_it_refuses_there_not_mid_run(task_root: Path) -> None:
    """A member that starts the run anyway (agreed without it, or resuming after a restart)
    checks again when its learner is built: one TaskError line before round 1, which the node
    turns into sitting the run out (`_commit_agreed`), never a traceback inside Opacus."""
    run = RunConfig(task=TASK, privacy=PrivacyConfig(**RECORD_DP)).pinned()  # type: ignore[arg-type]
    assert task_refusals(run) == [REFUSAL]
    with pytest.raises(ConfigError) as err:
        Learner(DataConfig(), run)
    assert str(err.value) == REFUSAL
    plain = Learner(DataConfig(), run.model_copy(update={"privacy": PrivacyConfig()}))
    assert isinstance(plain.model[1], torch.nn.BatchNorm1d)


def test_a_tracked_batchnorm_hears_the_dp_fix_first_and_without_dp_why_it_cannot_run(
    task_root: Path,
) -> None:
    """BatchNorm with running statistics also holds an int64 batch counter, which no run can
    aggregate: under record-level DP the member names the DP fix (GroupNorm, which has none);
    without DP it says what to change instead of a `model.float()` that would not help."""
    pkg = task_root / "bntracked"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = textwrap.dedent(TASK_SOURCE).replace(", track_running_stats=False", "")
    (pkg / "task.py").write_text(source)
    task = "bntracked.task:task"
    run = RunConfig(task=task, privacy=PrivacyConfig(**RECORD_DP)).pinned()  # type: ignore[arg-type]
    assert task_refusals(run) == [REFUSAL.replace(TASK, task)]
    assert task_refusals(run.model_copy(update={"privacy": PrivacyConfig()})) == [
        "task 'bn': model tensor '1.num_batches_tracked' is torch.int64; only float32 is "
        "supported (BatchNorm counts batches in an integer: build it with "
        "track_running_stats=False, or use GroupNorm) [rule task-model]"
    ]

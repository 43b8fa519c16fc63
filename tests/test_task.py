"""The task API (issue 14): a task package outside the repository trains over real nodes; the
run pins its code hash and a member whose installed sources differ refuses, naming both; bad
tasks fail with one clear error each; the built-in tasks are tasks like any other."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from consortium.core.errors import ConsortiumError
from consortium.learning import build_model, datasets, get_weights, models, partition
from consortium.learning import builtin as builtin_module
from consortium.learning.builtin import builtin_task, node_shard
from consortium.learning.datasets import load_dataset
from consortium.learning.serialize import weights_from_bytes
from consortium.learning.task import (
    Examples,
    NodeContext,
    TaskError,
    code_hash,
    evaluate_task,
    load_data,
    load_task,
    source_files,
)
from consortium.learning.task import build_model as build_task_model
from consortium.node.config import RunConfig, task_refusals
from consortium.privacy.config import PrivacyConfig
from consortium.protocol.record import run_records
from consortium.store.objects import get_bytes
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.task_site import task_site, write_task_package

#: An engineer's task package: a logistic regression on two Gaussian blobs, sharded by node,
#: record ids 1000 + row (not row numbers, so nothing can confuse the two).
TASK_SOURCE = '''
"""Two blobs, one linear layer."""
import numpy as np
import torch

from consortium.learning.task import Examples, NodeContext, Task


def model() -> torch.nn.Module:
    return torch.nn.Linear(4, 2)


def _blobs(n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + 2.0 * y[:, None]).astype(np.float32)
    return Examples(x, y.astype(np.int64), 1000 + np.arange(n, dtype=np.int64))


def data(node: NodeContext) -> tuple[Examples, Examples]:
    train = _blobs(600, 7)
    mine = np.arange(len(train))[node.index :: node.parts]
    return train.take(mine), _blobs(200, 8)


task = Task("blobs", model=model, data=data)
'''


def _write_package(root: Path, name: str, source: str = TASK_SOURCE) -> Path:
    return write_task_package(root, name, source)


@pytest.fixture
def task_root(tmp_path: Path) -> Iterator[Path]:
    """A folder outside the repository on sys.path; packages written there are forgotten after."""
    with task_site(tmp_path / "site") as root:
        yield root


def test_code_hash_is_the_same_for_the_same_sources_and_changes_with_any_byte(
    tmp_path: Path,
) -> None:
    a = _write_package(tmp_path / "a", "hashme")
    (a / "util.py").write_text("X = 1\n")
    b = tmp_path / "b" / "hashme"
    b.mkdir(parents=True)
    for name in ("util.py", "task.py", "__init__.py"):  # another creation order
        shutil.copy(a / name, b / name)
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"compiled")  # caches don't count

    def hash_in(root: Path) -> str:
        sys.path.insert(0, str(root))
        try:
            return code_hash("hashme.task")
        finally:
            sys.path.remove(str(root))

    first = hash_in(tmp_path / "a")
    assert first.startswith("sha256:") and len(first) == 7 + 64
    assert hash_in(tmp_path / "b") == first
    (b / "util.py").write_text("X = 2\n")
    assert hash_in(tmp_path / "b") != first
    (b / "util.py").write_text("X = 1\n")
    (b / "util.py").rename(b / "helpers.py")  # same bytes, another path
    assert hash_in(tmp_path / "b") != first


def test_the_builtin_tasks_are_the_former_datasets_and_models() -> None:
    """Same initial weights as the model registry under the run's seed, the node's shard of
    the training split with its rows as record ids (consent registries keyed by row work)."""
    task = builtin_task("digits", "cnn")
    _, weights = build_task_model(task, 5)
    expected = get_weights(build_model("cnn", (1, 8, 8), 10, seed=5))
    assert weights.keys() == expected.keys()
    assert all(np.array_equal(weights[k], expected[k]) for k in weights)
    node = NodeContext(partition="dirichlet", parts=4, index=2, seed=3)
    train, test = load_data(task, node)
    ds = load_dataset("digits", seed=3)
    rows = node_shard(node, ds.y_train)
    assert train.record_ids.tolist() == [str(r) for r in rows]  # each row's decimal text
    assert np.array_equal(train.x, ds.x_train[rows]) and len(test) == len(ds.y_test)
    with pytest.raises(ConsortiumError, match="unknown model 'resnet'; choose one of: cnn"):
        builtin_task("digits", "resnet")
    # Their code hash covers the modules defining their data and models, and those alone.
    assert task.source == builtin_module.__name__
    _, files = source_files(task.source)
    assert {Path(f.__file__) for f in (builtin_module, datasets, models, partition)} == set(files)


BAD_TASKS = {
    "no-module": ("nosuchpkg.task:task", "cannot import 'nosuchpkg.task' .* install the task"),
    "bad-path": ("not a path", "not an import path of the form 'package.module:name'"),
    "no-attribute": ("good.task:nope", "module 'good.task' has no attribute 'nope'"),
    "not-a-task": ("good.task:model", "calling model\\(\\) failed|is a Linear, not a"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_an_import_path_that_does_not_resolve_is_one_clear_error(
    task_root: Path, case: str
) -> None:
    _write_package(task_root, "good")
    spec, message = BAD_TASKS[case]
    with pytest.raises(TaskError, match=message):
        load_task(spec)


def test_a_model_with_non_float32_tensors_is_refused_by_name(task_root: Path) -> None:
    _write_package(
        task_root,
        "doubles",
        TASK_SOURCE.replace("torch.nn.Linear(4, 2)", "torch.nn.Linear(4, 2).double()"),
    )
    task = load_task("doubles.task:task")
    with pytest.raises(TaskError, match=r"'(bias|weight)' is torch.float64.*model.float\(\)"):
        build_task_model(task, 0)
    run = run_config(1).model_copy(update={"task": "doubles.task:task", "task_hash": ""})
    run = run.pinned()
    (refusal,) = task_refusals(run)
    assert "torch.float64" in refusal and "[rule task-model]" in refusal


def test_data_without_record_ids_is_refused(task_root: Path) -> None:
    source = TASK_SOURCE.replace(
        "return train.take(mine), _blobs(200, 8)",
        "t = train.take(mine)\n    return (t.x, t.y), _blobs(200, 8)",
    )
    _write_package(task_root, "noids", source)
    task = load_task("noids.task:task")
    with pytest.raises(TaskError, match=r"as train split.*every example needs a record id"):
        load_data(task, NodeContext())
    with pytest.raises(TaskError, match="record ids must be distinct"):
        Examples(np.zeros((2, 3), np.float32), np.zeros(2, np.int64), np.array([4, 4]))
    with pytest.raises(TaskError, match="x has dtype float64; use float32"):
        Examples(np.zeros((2, 3)), np.zeros(2, np.int64), np.array([1, 2]))


def test_record_ids_are_text_and_integers_are_their_decimal_text() -> None:
    x, y = np.zeros((3, 2), np.float32), np.zeros(3, np.int64)
    assert Examples(x, y, np.array(["p-001", "p-002", "007"])).record_ids.tolist() == [
        "p-001",
        "p-002",
        "007",
    ]
    assert Examples(x, y, np.array([0, 7, 2**40])).record_ids.tolist() == ["0", "7", str(2**40)]
    bad = [
        (np.array(["a", "b", "a"]), "record ids must be distinct"),
        (np.array(["a", "b\nc", "d"]), "contains a control character"),
        (np.array(["a", " b", "c"]), "begins or ends with whitespace"),
        (np.array(["a", "", "c"]), "a record id is empty"),
        (np.array(["a", "x" * 257, "c"]), "longer than 256 bytes"),
        (np.array([1, -2, 3]), "must be non-negative"),
        (np.array([1.0, 2.0, 3.0]), "record_ids have dtype float64; use text"),
    ]
    for ids, message in bad:
        with pytest.raises(TaskError, match=message):
            Examples(x, y, ids)


def test_a_pytorch_dataset_gives_examples_only_with_a_record_id_per_item() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    y = torch.tensor([0, 1, 1, 0])
    ids = torch.tensor([10, 11, 12, 13])
    examples = Examples.from_torch(TensorDataset(x, y, ids))
    assert examples.x.dtype == np.float32 and examples.y.dtype == np.int64
    assert np.array_equal(examples.x, x.numpy())
    assert examples.record_ids.tolist() == ["10", "11", "12", "13"]
    named = Examples.from_torch([(x[i], y[i], f"p-{i}") for i in range(4)])
    assert named.record_ids.tolist() == ["p-0", "p-1", "p-2", "p-3"]
    with pytest.raises(TaskError, match=r"item 0 of the dataset is not \(x, y, record_id\)"):
        Examples.from_torch(TensorDataset(x, y))


def test_record_level_dp_refuses_a_task_with_its_own_training(task_root: Path) -> None:
    source = TASK_SOURCE.replace(
        'task = Task("blobs", model=model, data=data)',
        'task = Task("blobs", model=model, data=data, loss=torch.nn.functional.cross_entropy)',
    )
    _write_package(task_root, "ownloss", source)
    run = RunConfig(
        task="ownloss.task:task", privacy=PrivacyConfig(unit="record", noise_multiplier=1.0)
    ).pinned()
    assert task_refusals(run) == [
        "task 'ownloss.task:task' sets its own loss: record-level DP trains with the built-in "
        "DP-SGD loop [rule task-dp]"
    ]
    assert task_refusals(run.model_copy(update={"privacy": PrivacyConfig()})) == []


def test_a_task_package_outside_the_repository_trains_over_three_nodes(
    tmp_path: Path, task_root: Path
) -> None:
    _write_package(task_root, "blobtask")
    run = run_config(3, secure="secagg+").model_copy(
        update={"task": "blobtask.task:task", "task_hash": ""}
    )

    async def go() -> float:
        nodes, net, clock = await cluster(tmp_path / "run", 3, seed=71, consent=False)
        try:
            await start(nodes, run)
            await drive(nodes, net, clock)
            records = run_records(nodes[0].ledger)
            assert [r.round for r in records] == [1, 2, 3]
            assert all(len(r.participants) == 3 for r in records)
            assert nodes[0].run is not None
            assert nodes[0].run.task_hash == code_hash("blobtask.task")  # pinned by the proposer
            task = load_task("blobtask.task:task")
            model, like = build_task_model(task, run.seed)
            from consortium.learning import set_weights

            set_weights(
                model, weights_from_bytes(get_bytes(nodes[0].store, records[-1].model), like)
            )
            test = load_data(task, NodeContext())[1]
            return evaluate_task(task, model, test)["accuracy"]
        finally:
            for n in nodes:
                await n.stop()

    accuracy = asyncio.run(go())
    assert accuracy > 0.9, accuracy  # the blobs are 2 standard deviations apart per feature


def test_a_member_refuses_a_run_whose_task_code_differs_naming_both_hashes(
    tmp_path: Path, task_root: Path
) -> None:
    """The proposer pinned the sources it had; every member has since installed another
    version (one changed line): each refuses, naming the hash it has and the pinned one, and
    nothing is written to any ledger."""
    pkg = _write_package(task_root, "drifting")
    run = run_config(1).model_copy(update={"task": "drifting.task:task", "task_hash": ""})
    pinned = run.pinned()
    old = pinned.task_hash
    (pkg / "task.py").write_text(TASK_SOURCE.replace("600", "601"))
    new = code_hash("drifting.task")
    assert new != old

    async def go() -> None:
        nodes, _, _ = await cluster(tmp_path / "run", 3, seed=72, consent=False)
        try:
            report = await nodes[0].propose_run(pinned)
            assert not report["started"], report
            assert set(report["refused"]) == {"node0", "node1", "node2"}, report
            for why in report["refused"].values():
                assert f"installed here has code hash {new}, the run pins {old}" in why, why
                assert "[rule task-hash]" in why
            assert all(n.machine is None and n.ledger.size == 1 for n in nodes)
            # The same sources pinned afresh are accepted by everyone.
            report = await nodes[0].propose_run(run)
            assert report["started"], report
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_a_run_that_pins_no_code_hash_is_refused(task_root: Path) -> None:
    _write_package(task_root, "unpinned")
    run = RunConfig(task="unpinned.task:task")
    assert task_refusals(run) == [
        "the run pins no code hash for task 'unpinned.task:task' [rule task-hash]"
    ]
    # Configurations from before the task API keep their run ids (no task fields in the body).
    assert "task" not in RunConfig().body() and "task_hash" in RunConfig().pinned().body()

"""The task API: what a run trains, written by an ML engineer in one module of their own package.

    # mypkg/task.py
    from consortium.learning.task import Examples, NodeContext, Task

    def model() -> torch.nn.Module: ...
    def data(node: NodeContext) -> tuple[Examples, Examples]: ...   # (train, test)

    task = Task("mypkg", model=model, data=data)

A run names it in its configuration (`task = "mypkg.task:task"`); every member installs the
package itself (members never send each other code) and the run pins the hash of its sources
(`code_hash`), which each member compares with what it has installed before it agrees.

`Examples` are arrays with one record id per example: the ids consent is granted for (text, the
engineer's own key of each record; integers are read as their decimal text; a node's consent
registry keys records by them). `consortium.learning.loaders` reads CSV, Parquet and image
folders into Examples, with the schema in node.toml. `train`, `evaluate`,
`loss`, `optimizer` and `metrics` are optional; the defaults are the project's trainer
(`train_local`: seeded batches, SGD or Adam from the run's settings, cross-entropy) and
evaluation (mean loss and accuracy). The built-in datasets and models are tasks written against
this same API (`consortium.learning.builtin`), and so is code written for Flower's
`NumPyClient` (`consortium.learning.flower.numpy_client_task`).

Everything a task returns is checked here, so a mistake in it is one clear `TaskError`, never
a traceback in the middle of a round.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from consortium.consent.record_ids import RecordIdError, id_array, record_id
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.learning.adapter import Weights, get_weights
from consortium.learning.sources import ImageSource, TableSource
from consortium.learning.train import TrainConfig, TrainResult, evaluate, predict, train_local


class TaskError(ConfigError):
    """A task that cannot be found, or that returned something unusable."""


@dataclass(frozen=True)
class Examples:
    """Examples with a record id each: `x` float32 of shape (n, ...), `y` of shape (n,) (integer
    class labels, or float32 targets for a task with its own loss), `record_ids` (n,) distinct
    record ids: text (`consent.record_ids`), or non-negative integers, which become their
    decimal text (so `record_ids` is always a NumPy text array)."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    record_ids: npt.NDArray[Any]  # a text array once constructed

    def __post_init__(self) -> None:
        x, y, ids = self.x, self.y, self.record_ids
        for name, value in (("x", x), ("y", y), ("record_ids", ids)):
            if not isinstance(value, np.ndarray):
                raise TaskError(f"examples: {name} is a {type(value).__name__}, not a NumPy array")
        if x.dtype != np.float32:
            raise TaskError(f"examples: x has dtype {x.dtype}; use float32 (x.astype('float32'))")
        if x.ndim < 2:
            raise TaskError(f"examples: x has shape {x.shape}; expected (examples, features...)")
        if y.ndim != 1 or ids.ndim != 1 or not len(x) == len(y) == len(ids):
            raise TaskError(
                f"examples: x {x.shape}, y {y.shape} and record_ids {ids.shape} do not line up "
                "(one label and one record id per example)"
            )
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.float32):
            raise TaskError(f"examples: y has dtype {y.dtype}; use int64 labels or float32")
        ids = _text_ids(ids)
        object.__setattr__(self, "record_ids", ids)
        if len(np.unique(ids)) != len(ids):
            raise TaskError("examples: record ids must be distinct (one per example)")
        if not np.isfinite(x).all():
            row = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
            raise TaskError(f"examples: x holds NaN or infinity (record {ids[row]})")

    def __len__(self) -> int:
        return len(self.record_ids)

    @classmethod
    def from_torch(cls, dataset: Any) -> Examples:
        """Examples from a PyTorch map-style dataset whose items are (x, y, record_id)."""
        try:
            n = len(dataset)
        except TypeError as exc:
            raise TaskError("examples: a PyTorch dataset must have a length") from exc
        xs, ys, ids = [], [], []
        for i in range(n):
            item = dataset[i]
            if not isinstance(item, tuple | list) or len(item) != 3:
                raise TaskError(
                    f"examples: item {i} of the dataset is not (x, y, record_id); a dataset "
                    "needs a record id per example"
                )
            x, y, rid = item
            xs.append(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x))
            ys.append(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y))
            ids.append(rid.item() if isinstance(rid, torch.Tensor) else rid)
        if not xs:
            raise TaskError("examples: the dataset is empty")
        y_arr = np.stack(ys)
        y_arr = y_arr.astype(np.int64) if np.issubdtype(y_arr.dtype, np.integer) else y_arr
        id_arr = np.empty(len(ids), dtype=object)
        id_arr[:] = ids
        return cls(np.stack(xs).astype(np.float32), y_arr, id_arr)

    def take(self, positions: npt.NDArray[np.int64]) -> Examples:
        """The examples at `positions` (already checked: not checked again)."""
        out = object.__new__(Examples)
        for name, value in (
            ("x", self.x[positions]),
            ("y", self.y[positions]),
            ("record_ids", self.record_ids[positions]),
        ):
            object.__setattr__(out, name, value)
        return out


def _text_ids(ids: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
    """Record ids as a text array: integers as their decimal text, text checked
    (`consent.record_ids.record_id`); TaskError naming the first bad one."""
    if np.issubdtype(ids.dtype, np.integer):
        if len(ids) and int(ids.min()) < 0:
            raise TaskError("examples: integer record ids must be non-negative")
        return ids.astype(np.str_)
    if ids.dtype.kind not in "UO":
        raise TaskError(
            f"examples: record_ids have dtype {ids.dtype}; use text (or integers): the ids a "
            "node's consent registry grants"
        )
    try:
        return id_array(record_id(v) for v in ids.tolist())
    except RecordIdError as exc:
        raise TaskError(f"examples: {exc}") from None


@dataclass(frozen=True)
class NodeContext:
    """What `Task.data` learns about the node that loads it: its name and its `[data]` table
    from node.toml (where the node keeps its data, which shard of a built-in dataset, and the
    schema of its own files for `learning.loaders`)."""

    name: str = ""
    data_dir: Path | None = None
    partition: str = "all"
    alpha: float = 0.5
    parts: int = 1
    index: int = 0
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    #: `[data.table]` and `[data.images]`: the node's own files (`learning.loaders`).
    table: TableSource | None = None
    images: ImageSource | None = None


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFn = Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]
TrainFn = Callable[[nn.Module, Examples, TrainConfig, Weights | None], TrainResult]
EvaluateFn = Callable[[nn.Module, Examples], Mapping[str, float]]
MetricsFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]


@dataclass(frozen=True)
class Task:
    """A trainable task. `model()` builds the network (every node builds it under the run's seed,
    so all start from the same weights; every tensor must be float32); `data(node)` returns that
    node's (train, test) examples. Optional: `train(model, examples, cfg, global_weights)` in
    place of the default trainer, `evaluate(model, examples) -> {name: value}`, `loss(outputs,
    targets) -> mean loss`, `optimizer(model, cfg)`, `metrics(outputs, targets) -> {name:
    value}` (added to the default evaluation's loss; default: accuracy)."""

    name: str
    model: Callable[[], nn.Module]
    data: Callable[[NodeContext], tuple[Examples, Examples]]
    train: TrainFn | None = None
    evaluate: EvaluateFn | None = None
    loss: LossFn | None = None
    optimizer: OptimizerFn | None = None
    metrics: MetricsFn | None = None
    #: The module whose package's sources `code_hash` covers (set by `load_task`).
    source: str = ""
    #: "pytorch", or "numpy" for training done outside PyTorch (a Flower-style NumPy client,
    #: `learning.flower`): `model()` then only holds the parameters, which DP-SGD cannot train.
    framework: Literal["pytorch", "numpy"] = "pytorch"

    @property
    def customises_training(self) -> list[str]:
        """The training hooks this task replaces (record-level DP has its own trainer)."""
        return [n for n in ("train", "loss", "optimizer") if getattr(self, n) is not None]


# -- using a task ---------------------------------------------------------------------------------


def build_model(task: Task, seed: int) -> tuple[nn.Module, Weights]:
    """The task's model with initial weights fixed by `seed` alone (torch's global RNG is left as
    it was), and its weights; TaskError if it is not a module or has non-float32 tensors."""
    model = make_model(task, seed)
    try:
        weights = get_weights(model)
    except ConsortiumError as exc:
        hint = (
            "BatchNorm counts batches in an integer: build it with track_running_stats=False, "
            "or use GroupNorm"
            if "num_batches_tracked" in str(exc)
            else "convert it with model.float()"
        )
        raise TaskError(f"task {task.name!r}: {exc} ({hint})") from exc
    if not weights:
        raise TaskError(f"task {task.name!r}: the model has no parameters to train")
    return model, weights


def make_model(task: Task, seed: int) -> nn.Module:
    """The task's model under `seed` (see `build_model`), not yet checked for float32 weights;
    TaskError if `model()` fails or returns something other than a torch.nn.Module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = task.model()
        except ConsortiumError:
            raise
        except Exception as exc:
            raise TaskError(f"task {task.name!r}: model() failed: {exc!r}") from exc
    if not isinstance(model, nn.Module):
        raise TaskError(
            f"task {task.name!r}: model() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_data(task: Task, node: NodeContext) -> tuple[Examples, Examples]:
    """The node's (train, test) examples, checked."""
    try:
        out = task.data(node)
    except ConsortiumError:
        raise
    except Exception as exc:
        raise TaskError(f"task {task.name!r}: data() failed: {exc!r}") from exc
    if not isinstance(out, tuple) or len(out) != 2:
        raise TaskError(f"task {task.name!r}: data() must return (train, test) Examples")
    for part, value in zip(("train", "test"), out, strict=True):
        if not isinstance(value, Examples):
            raise TaskError(
                f"task {task.name!r}: data() returned a {type(value).__name__} as {part} split; "
                "return Examples(x, y, record_ids) (Examples.from_torch for a PyTorch dataset "
                "of (x, y, record_id) items): every example needs a record id"
            )
        if len(value) == 0:
            raise TaskError(f"task {task.name!r}: the {part} split holds no examples")
    return out[0], out[1]


def train_task(
    task: Task, model: nn.Module, examples: Examples, cfg: TrainConfig, weights: Weights | None
) -> TrainResult:
    """Train in place with the task's `train`, or the default trainer with its loss/optimizer."""
    if task.train is not None:
        result = task.train(model, examples, cfg, weights)
        if not isinstance(result, TrainResult):
            raise TaskError(f"task {task.name!r}: train() must return a TrainResult")
        return result
    return train_local(
        model, examples.x, examples.y, cfg, weights, loss=task.loss, optimizer=task.optimizer
    )


def evaluate_task(task: Task, model: nn.Module, examples: Examples) -> dict[str, float]:
    """The task's metrics of `model` on `examples`: `evaluate`, else the mean loss and accuracy
    (or `metrics`) of the default evaluation."""
    if task.evaluate is not None:
        out = dict(task.evaluate(model, examples))
    else:
        loss, accuracy = evaluate(model, examples.x, examples.y, loss=task.loss)
        out = {"loss": loss}
        if task.metrics is None:
            if np.issubdtype(examples.y.dtype, np.integer):  # classification
                out["accuracy"] = accuracy
        else:
            outputs = predict(model, examples.x)
            out |= dict(task.metrics(outputs, torch.from_numpy(examples.y)))
    bad = [k for k, v in out.items() if not isinstance(k, str) or not isinstance(v, float | int)]
    if bad:
        raise TaskError(f"task {task.name!r}: metrics must map names to numbers, got {bad}")
    return {k: float(v) for k, v in out.items()}


# -- finding a task and hashing its code ----------------------------------------------------------

_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def load_task(spec: str) -> Task:
    """The task `module:attribute` names (a `Task`, or a function of no arguments returning
    one), imported from what this node has installed; TaskError saying what is wrong."""
    if not _SPEC.match(spec):
        raise TaskError(f"task {spec!r} is not an import path of the form 'package.module:name'")
    module_name, attr = spec.split(":")
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        found, why = None, repr(exc)
    else:
        why = "no such module"
    if found is None:
        raise TaskError(
            f"task {spec!r}: cannot import {module_name!r} ({why}); install the task's package "
            "on this node (pip install ...)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TaskError(f"task {spec!r}: importing {module_name!r} failed: {exc!r}") from exc
    value = getattr(module, attr, None)
    if value is None:
        raise TaskError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not isinstance(value, Task) and callable(value):
        try:
            value = value()
        except Exception as exc:
            raise TaskError(f"task {spec!r}: calling {attr}() failed: {exc!r}") from exc
    if not isinstance(value, Task):
        raise TaskError(
            f"task {spec!r} is a {type(value).__name__}, not a consortium.learning.task.Task"
        )
    return value if value.source else _with_source(value, module_name)


def _with_source(task: Task, module: str) -> Task:
    from dataclasses import replace

    return replace(task, source=module)


#: The module defining the built-in tasks, and the files that define them (their data and
#: models). The framework around a task (the default trainer, DP-SGD, the protocol) is not the
#: task's code, for built-in tasks as for anyone's: members must run compatible versions of
#: consortium whatever they train.
BUILTIN_MODULE = "consortium.learning.builtin"
BUILTIN_FILES = (
    "consortium/learning/builtin.py",
    "consortium/learning/datasets.py",
    "consortium/learning/models.py",
    "consortium/learning/partition.py",
)


def source_files(module: str) -> tuple[Path, list[Path]]:
    """(base, files) whose bytes `code_hash` covers: every file of the top-level package holding
    `module` (or the module's own file, for a top-level module), except Python's caches; for
    the built-in tasks, `BUILTIN_FILES`. Paths are hashed relative to `base`, so they begin with
    the package's name."""
    if module == BUILTIN_MODULE:
        base = Path(__file__).resolve().parents[2]
        return base, [base / f for f in BUILTIN_FILES]
    top = module.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise TaskError(f"cannot find the sources of {top!r} on this node")
    if spec.submodule_search_locations:  # a package (a namespace package: all its folders)
        roots = [Path(p) for p in spec.submodule_search_locations]
        if len(roots) != 1:
            raise TaskError(f"{top!r} is a namespace package spread over {len(roots)} folders")
        root = roots[0]  # paths are hashed relative to its parent: they start with its name
        files = []
        for folder, dirs, names in os.walk(root):  # os.walk: a member checks this at every vote
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [Path(folder, n) for n in names if not n.endswith((".pyc", ".pyo"))]
        return root.parent, files
    origin = Path(str(spec.origin))
    return origin.parent, [origin]


def code_hash(module: str) -> str:
    """`sha256:` + the hex SHA-256 of the task's sources, normalised: the files' paths relative
    to the folder holding the package (with `/`), sorted, each framed with its bytes by 8-byte
    lengths. So the same sources give the same hash wherever and however they were installed."""
    base, files = source_files(module)
    # Each member of a simulation checks the task's hash at the vote: read the files again only
    # when one of them changed (path, size, modification time, inode), not once per member.
    stamp = tuple(sorted(_stamp(p) for p in files))
    known = _CODE_HASHES.get(module)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = hashlib.sha256(b"consortium/task-sources/v1")
    for rel, path in sorted((p.relative_to(base).as_posix().encode(), p) for p in files):
        data = path.read_bytes()
        digest.update(struct.pack(">Q", len(rel)) + rel + struct.pack(">Q", len(data)) + data)
    value = "sha256:" + digest.hexdigest()
    _CODE_HASHES[module] = (stamp, value)
    return value


def _stamp(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


#: module -> (its files' stamps, its code hash), for `code_hash`.
_CODE_HASHES: dict[str, tuple[tuple[tuple[str, int, int, int], ...], str]] = {}

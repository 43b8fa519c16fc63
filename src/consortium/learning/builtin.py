"""The built-in tasks: each offline dataset (digits, breast_cancer, fashion-mnist) with each
small model (logreg, mlp, cnn), written against the task API like anyone's own task.

A run that names no `task` trains `builtin_task(run.dataset, run.model)`. A node's examples are
its shard of the dataset's training split (`[data]` in node.toml: partition, alpha, parts,
index, seed) and the record ids are their rows in that split, which is what consent registries
made before the task API key records by; the test examples are the whole test split.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from torch import nn

from consortium.core.errors import ConfigError
from consortium.learning.datasets import DATASETS, Dataset, load_dataset
from consortium.learning.models import MODELS, build_model
from consortium.learning.partition import partition_dirichlet, partition_iid
from consortium.learning.task import BUILTIN_MODULE, Examples, NodeContext, Task

#: (input shape, classes) of each built-in dataset, so a model is built without loading data.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "breast_cancer": ((30,), 2),
    "fashion-mnist": ((1, 28, 28), 10),
}

#: A built-in task's code hash covers this module and the ones defining its data and models
#: (`task.BUILTIN_FILES`).
SOURCE = BUILTIN_MODULE


def node_shard(node: NodeContext, labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Rows of the training split this node holds."""
    if node.partition == "all" or node.parts == 1:
        return np.arange(len(labels), dtype=np.int64)
    if node.index >= node.parts:
        raise ConfigError(f"shard index {node.index} out of range for {node.parts} parts")
    rng = np.random.default_rng(node.seed)
    if node.partition == "iid":
        parts = partition_iid(labels, node.parts, rng)
    elif node.partition == "dirichlet":
        parts = partition_dirichlet(labels, node.parts, node.alpha, rng)
    else:
        raise ConfigError(f"unknown partition {node.partition!r}; use all, iid or dirichlet")
    return np.asarray(parts[node.index], dtype=np.int64)


def load_split(dataset: str, node: NodeContext) -> Dataset:
    return load_dataset(dataset, node.data_dir, seed=node.seed)


def builtin_task(dataset: str, model: str) -> Task:
    """The built-in task training `model` on `dataset`; ConfigError naming the choices."""
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r}; choose one of: {', '.join(sorted(DATASETS))}"
        )
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(sorted(MODELS))}")
    shape, classes = SHAPES[dataset]

    def make_model() -> nn.Module:
        return build_model(model, shape, classes)

    def data(node: NodeContext) -> tuple[Examples, Examples]:
        ds = load_split(dataset, node)
        rows = node_shard(node, ds.y_train)
        train = Examples(ds.x_train[rows], ds.y_train[rows], rows)
        test = Examples(ds.x_test, ds.y_test, np.arange(len(ds.y_test), dtype=np.int64))
        return train, test

    return Task(f"{dataset}/{model}", make_model, data, source=SOURCE)

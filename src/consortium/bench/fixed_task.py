"""A task whose training is a fixed vector, for end-to-end round benchmarks (`bench round-e2e`).

    task = "consortium.bench.fixed_task:vector_100000"    # d = 100000 parameters

As in Flower's SecAgg+ benchmark (`benchmarks/flower_reference.py secagg`), each member's `fit`
returns a fixed float32 vector of length d, uniform in [-1, 1] and seeded by the member's shard
index (`[data] index` in node.toml), so a round costs what the round machine, secure
aggregation, cosigning, the ledger and the store cost, and no training. It is written against
the task API like anyone's task (`learning.flower.numpy_client_task`); a node holds one example
(its index), whose record id is `bench-<index>`.

`vector_<d>` names the task for any d from 1 to `MAX_D` (a module attribute computed on
access), so a run's configuration says its size.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.learning.flower import NDArrays, Scalar, numpy_client_task
from consortium.learning.task import Examples, NodeContext, Task

MAX_D = 100_000_000
_NAME = re.compile(r"^vector_([1-9][0-9]*)$")


def member_vector(index: int, d: int) -> npt.NDArray[np.float32]:
    """The fixed update of the member whose shard index is `index` (Flower's `client_vector`)."""
    return np.random.default_rng(1000 + index).uniform(-1.0, 1.0, d).astype(np.float32)


class FixedClient:
    """A NumPy client whose `fit` returns its fixed vector, whatever it is given."""

    def __init__(self, index: int, d: int) -> None:
        self.index, self.d = index, d

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return [np.zeros(self.d, dtype=np.float32)]

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        return [member_vector(self.index, self.d)], 1, {"loss": 0.0}

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return 0.0, 1, {}


def _data(node: NodeContext) -> tuple[Examples, Examples]:
    one = Examples(
        np.array([[float(node.index)]], dtype=np.float32),
        np.zeros(1, dtype=np.int64),
        np.array([f"bench-{node.index}"], dtype=object),
    )
    return one, one


def vector_task(d: int) -> Task:
    """The task of d parameters whose members' updates are their fixed vectors."""
    if not 1 <= d <= MAX_D:
        raise ValueError(f"d must be between 1 and {MAX_D}")

    def client(examples: Examples) -> FixedClient:
        return FixedClient(int(examples.x[0, 0]), d)

    def initial(rng: np.random.Generator) -> list[npt.NDArray[np.float32]]:
        return [np.zeros(d, dtype=np.float32)]

    return numpy_client_task(f"fixed-vector/{d}", client, _data, initial)


def task_spec(d: int) -> str:
    """What a run configuration's `task` says for d parameters."""
    return f"{__name__}:vector_{d}"


def __getattr__(name: str) -> Any:
    found = _NAME.match(name)
    if found is None or int(found.group(1)) > MAX_D:
        raise AttributeError(name)
    return vector_task(int(found.group(1)))

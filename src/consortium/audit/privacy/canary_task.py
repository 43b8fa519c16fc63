"""The task a canary run trains (`consortium audit privacy --canaries m`): the audited run's own
task, whose training data, on the node that holds a canary file, also holds the canaries drawn
into the run.

A run names its task by an import path, so the wrapped task is named in the attribute: the hex
of `builtin:DATASET/MODEL` (a built-in task) or of the audited run's `package.module:name`,
after a `t`. Every simulated member builds it the same way. The canaries come from
`[data.options] canary_file` (an .npz of x, y and record_ids), which only the auditing node's
node.toml names; they are added to that node's training split, nothing else changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from consortium.learning.builtin import builtin_task
from consortium.learning.task import Examples, NodeContext, Task, load_task

#: The [data.options] key naming the canary file.
CANARY_FILE = "canary_file"


def task_name(base: str) -> str:
    """The attribute of this module that trains `base` (`builtin:DATASET/MODEL` or a task's
    import path) with canaries."""
    return "t" + base.encode().hex()


def spec(base: str) -> str:
    return f"{__name__}:{task_name(base)}"


def _base(base: str) -> Task:
    if base.startswith("builtin:"):
        dataset, _, model = base.removeprefix("builtin:").partition("/")
        return builtin_task(dataset, model)
    return load_task(base)


def with_canaries(base: Task) -> Task:
    def data(node: NodeContext) -> tuple[Examples, Examples]:
        train, test = base.data(node)
        path = node.options.get(CANARY_FILE)
        if not path:
            return train, test
        with np.load(Path(str(path)), allow_pickle=False) as f:
            x, y, ids = f["x"], f["y"], f["record_ids"]
        if len(x) == 0:
            return train, test
        return (
            Examples(
                np.concatenate([train.x, x.astype(np.float32)]),
                np.concatenate([train.y, y.astype(train.y.dtype)]),
                np.concatenate([train.record_ids.astype(str), ids.astype(str)]),
            ),
            test,
        )

    return Task(
        f"canaries:{base.name}",
        base.model,
        data,
        train=base.train,
        evaluate=base.evaluate,
        loss=base.loss,
        optimizer=base.optimizer,
        metrics=base.metrics,
        source=__name__,
    )


def __getattr__(attr: str) -> Any:
    """`task_name(base)` -> the canary task of `base`; any other name: AttributeError."""
    try:
        if not attr.startswith("t") or len(attr) < 3:
            raise ValueError(attr)
        base = bytes.fromhex(attr[1:]).decode()
    except ValueError:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}") from None
    return with_canaries(_base(base))

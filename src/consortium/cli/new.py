"""`consortium new task NAME`: a task package to start from, with its test and sample data.

    NAME/pyproject.toml          installable (pip install -e NAME); depends on consortium
    NAME/NAME/__init__.py
    NAME/NAME/task.py            the model and the data (loaders.table_data): edit these
    NAME/tests/test_task.py      loads the sample data, trains a few epochs, loss must fall
    NAME/data/train.csv, test.csv   sample rows with text record ids (replace with your own)
    NAME/data/consent.csv        sample consent for them (`consortium consent import`)
    NAME/node.toml               the [data] and [data.table] a member puts in its node.toml

Only the package folder (NAME/NAME) is task code: the run pins its hash, so tests, data and
the rest stay out of it. The folder is written whole or not at all (built aside, then renamed).
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import typer

from consortium.cli.common import console, handle_errors
from consortium.core.errors import ConfigError

new_app = typer.Typer(help="Start something of your own: a task package.", no_args_is_help=True)

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
FEATURES = ("age", "bmi", "glucose", "pressure")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A Consortium task: the model and data every member trains"
requires-python = ">=3.11"
# None declared: a task runs inside a member's Consortium installation (which brings torch).
dependencies = []

[tool.setuptools]
packages = ["{name}"]
"""

TASK = '''\
"""The task every member trains: `consortium run start --task {name}.task:task`.

Each member installs this package itself (members never send each other code); the run pins
the hash of this folder's sources, and a member whose copy differs refuses the run.
"""

from __future__ import annotations

import torch

from consortium.learning.loaders import table_data
from consortium.learning.task import Task

FEATURES = {features}  # the columns of [data.table] features in node.toml, in this order
CLASSES = 2


def model() -> torch.nn.Module:
    """Built under the run's seed on every member; float32 tensors only."""
    return torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES)
    )


# Each member's own CSV (or Parquet) files, as its node.toml [data.table] describes them; one
# record id per row, which is what its data subjects consent by.
task = Task("{name}", model=model, data=table_data)
'''

TEST = '''\
"""The task trains on the sample data: run `python -m pytest tests` in this folder."""

from pathlib import Path

from consortium.learning.sources import TableSource
from consortium.learning.task import NodeContext, build_model, evaluate_task, load_data, train_task
from consortium.learning.train import TrainConfig

from {name}.task import FEATURES, task

DATA = Path(__file__).resolve().parents[1] / "data"
TABLE = TableSource(record_id="record_id", features=list(FEATURES), label="label")


def test_the_task_learns_from_the_sample_data() -> None:
    train, test = load_data(task, NodeContext(name="test", data_dir=DATA, table=TABLE))
    assert train.record_ids[0] == "rec-0000"  # record ids are text
    model, weights = build_model(task, seed=0)
    before = evaluate_task(task, model, test)
    train_task(task, model, train, TrainConfig(epochs=10, lr=0.1), weights)
    after = evaluate_task(task, model, test)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8
'''

NODE_TOML = """\
# Put these in each member's node.toml (data_dir: where that member keeps its own files).
[data]
data_dir = "{data}"

[data.table]
format = "csv"             # or "parquet" (pip install 'consortium[parquet]')
train = "train.csv"
test = "test.csv"
record_id = "record_id"    # consent is granted by this column (text)
features = {features}
label = "label"            # integer classes 0, 1, …
"""


def _csv(rng: np.random.Generator, start: int, n: int) -> str:
    x = rng.normal(size=(n, len(FEATURES))).round(4)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    lines = ["record_id," + ",".join(FEATURES) + ",label"]
    lines += [
        f"rec-{start + i:04d}," + ",".join(str(v) for v in x[i]) + f",{y[i]}" for i in range(n)
    ]
    return "\n".join(lines) + "\n"


def _consent(train: str) -> str:
    """Sample consent: one data subject per training record, for the purpose "research"."""
    ids = [line.split(",", 1)[0] for line in train.splitlines()[1:]]
    lines = ["subject,record_id,purposes,granted,expires"]
    lines += [f"subject-{rid},{rid},research,2026-01-01," for rid in ids]
    return "\n".join(lines) + "\n"


def write_task_package(name: str, parent: Path) -> Path:
    """Write the package `name` under `parent`; ConfigError if the name or the folder is taken."""
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"{name!r} is not a package name: use lowercase letters, digits and _ (a Python "
            "identifier), e.g. my_task"
        )
    if name in sys.stdlib_module_names or name == "consortium":
        raise ConfigError(f"{name!r} is the name of an existing module: pick another")
    target = parent / name
    if target.exists():
        raise ConfigError(f"{target} exists: pick another name or folder")
    if not parent.is_dir():
        raise ConfigError(f"{parent} is not a folder")
    features = repr(list(FEATURES)).replace("'", '"')
    rng = np.random.default_rng(0)
    files = {
        "pyproject.toml": PYPROJECT.format(name=name),
        f"{name}/__init__.py": "",
        f"{name}/task.py": TASK.format(name=name, features=repr(FEATURES)),
        "tests/test_task.py": TEST.format(name=name),
        "data/train.csv": (train := _csv(rng, 0, 200)),
        "data/test.csv": _csv(rng, 200, 100),
        "data/consent.csv": _consent(train),
        "node.toml": NODE_TOML.format(data=(target / "data").resolve(), features=features),
    }
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
        try:
            for rel, text in files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            os.rename(tmp, target)  # whole or not at all; fails if target appeared meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


@new_app.command("task")
@handle_errors
def new_task(
    name: str = typer.Argument(..., help="Package name (a Python identifier, e.g. my_task)."),
    directory: Path = typer.Option(Path("."), "--dir", help="Folder to create it in."),
) -> None:
    """Write a task package: model, data through node.toml's [data.table], a test, sample CSVs."""
    target = write_task_package(name, directory)
    say = console.print
    say(f"wrote {target}: the task {name}.task:task, a test and sample data", markup=False)
    say("next:", markup=False)
    for line in (
        f"  pip install -e {target}            # on every member",
        f"  (cd {target} && python -m pytest tests)",
        f"  cp {target / 'node.toml'} DIR/node.toml   # each member; set its own data_dir",
        f"  consortium run start --dir DIR --task {name}.task:task",
    ):
        say(line, markup=False, highlight=False)

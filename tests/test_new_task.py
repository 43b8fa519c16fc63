"""`consortium new task NAME`: a task package whose own test passes, written whole or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.learning.task import code_hash, load_task, source_files

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_scaffold_writes_a_task_package_whose_test_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = runner.invoke(app, ["new", "task", "clinic_task", "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    target = tmp_path / "clinic_task"
    assert "consortium run start --dir DIR --task clinic_task.task:task" in res.output
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "clinic_task/__init__.py",
        "clinic_task/task.py",
        "data/consent.csv",
        "data/test.csv",
        "data/train.csv",
        "node.toml",
        "pyproject.toml",
        "tests/test_task.py",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["clinic_task"]  # no temp folder left
    # Its own test: the sample data loads with text record ids and the model learns from it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(target)])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The run pins the package folder's sources only (not its tests, data or node.toml).
    monkeypatch.syspath_prepend(str(target))
    task = load_task("clinic_task.task:task")
    base, files = source_files(task.source)
    assert sorted(p.relative_to(base).as_posix() for p in files) == [
        "clinic_task/__init__.py",
        "clinic_task/task.py",
    ]
    assert code_hash(task.source).startswith("sha256:")
    toml = (target / "node.toml").read_text()
    assert f'data_dir = "{(target / "data").resolve()}"' in toml


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("My-Task", "is not a package name"),
        ("class", "is not a package name"),
        ("json", "is the name of an existing module"),
        ("consortium", "is the name of an existing module"),
    ],
)
def test_a_bad_name_is_refused_in_one_line(tmp_path: Path, name: str, refusal: str) -> None:
    res = runner.invoke(app, ["new", "task", name, "--dir", str(tmp_path)])
    assert res.exit_code == 2 and refusal in res.stderr and len(res.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("keep")
    res = runner.invoke(app, ["new", "task", "mine", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "exists: pick another name" in res.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    res = runner.invoke(app, ["new", "task", "x", "--dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "is not a folder" in res.stderr

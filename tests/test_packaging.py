"""The package installs on its own: declared dependencies cover every import, the pins agree with
requirements.lock, and the built wheel works in a fresh virtual environment of its own."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from consortium.learning.task import BUILTIN_MODULE, code_hash

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "consortium"


def _project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        project: dict[str, object] = tomllib.load(fh)["project"]
    return project


def _requirements() -> tuple[list[Requirement], list[Requirement]]:
    """(dependencies, optional dependencies of every extra) declared in pyproject.toml."""
    project = _project()
    deps = [Requirement(r) for r in project["dependencies"]]  # type: ignore[attr-defined]
    extras = project.get("optional-dependencies", {})
    optional = [Requirement(r) for group in extras.values() for r in group]  # type: ignore[attr-defined]
    return deps, optional


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> the first file importing it, for every non-stdlib absolute import in
    src/consortium (module level or inside functions)."""
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("consortium", "__future__"):
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_import_is_a_declared_dependency() -> None:
    deps, optional = _requirements()
    declared = {canonicalize_name(r.name) for r in deps}
    declared_optional = {canonicalize_name(r.name) for r in optional}
    dists = packages_distributions()
    undeclared = []
    for module, where in sorted(_third_party_imports().items()):
        names = {canonicalize_name(d) for d in dists.get(module, [])}
        assert names, f"{module} (imported in {where}) is not installed in the dev environment"
        if not names & (declared | declared_optional):
            undeclared.append(f"{module} ({where}) from {sorted(names)}")
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"
    # Optional only where the code importing it degrades without it (bench privacy's PNG; the
    # Parquet and image loaders, which say what to install).
    # Proofs of evaluation (`zk`: ezkl, and onnx, which torch's ONNX export needs); Ray for
    # `simulate --backend ray` (`ray`: it says what to install).
    assert declared_optional == {"matplotlib", "pyarrow", "pillow", "ezkl", "onnx", "ray"}


def test_every_declared_dependency_is_imported() -> None:
    """Nothing declared that the code does not use (protobuf was, with no generated code)."""
    deps, _ = _requirements()
    dists = packages_distributions()
    imported = {
        canonicalize_name(d) for module in _third_party_imports() for d in dists.get(module, [])
    }
    unused = sorted(r.name for r in deps if canonicalize_name(r.name) not in imported)
    assert unused == [], f"declared but never imported by src/consortium: {unused}"


def test_declared_versions_agree_with_the_lock_file() -> None:
    """requirements.lock (what `make` installs and CI tests) satisfies every declared pin, so
    the wheel's users get a combination the tests ran; torch is only ever exactly 2.13.0."""
    deps, optional = _requirements()
    pins = _lock()
    for req in [*deps, *optional]:
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is declared but not in requirements.lock"
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {req.name}=={version}, pyproject.toml requires {req}"
        )
    assert "torch==2.13.0" in [str(r) for r in deps]
    # protobuf is never ours to declare; it is in the lock only as onnx's own dependency.
    assert "protobuf" not in {canonicalize_name(r.name) for r in [*deps, *optional]}
    assert "protobuf" not in pins or "onnx" in pins


def _clean_env(home: Path) -> dict[str, str]:
    """The environment without anything pointing into this checkout (PYTHONPATH=src would let
    the fresh venv import the sources instead of the installed wheel)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["HOME"] = os.environ.get("HOME", str(home))
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_three_nodes() -> None:
    """Build the wheel from a copy of the sources, install it with its declared dependencies
    (pip resolves them; requirements.lock only constrains versions) into a venv of its own (no
    system site-packages), then run the CLI, a benchmark and a 3-node run with DP and SecAgg+
    from a folder outside the repository. Takes ~2 minutes, most of it pip (about 1 GB)."""
    with tempfile.TemporaryDirectory(prefix="consortium-wheel-") as tmp:
        root = Path(tmp)
        env = _clean_env(root)
        source = root / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, source / name)
        shutil.copytree(
            REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        _run(
            [
                sys.executable,
                *("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
                *("-w", str(root / "dist"), str(source)),
            ],
            root,
            env,
            300,
        )
        (wheel,) = (root / "dist").glob("consortium-*.whl")
        venv = root / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], root, env, 300)
        py, cli = venv / "bin" / "python", venv / "bin" / "consortium"
        _run(
            [
                str(py),
                *("-m", "pip", "install", "-q"),
                str(wheel),
                "-c",
                str(REPO / "requirements.lock"),
            ],
            root,
            env,
            900,
        )
        work = root / "work"
        work.mkdir()
        code = "import consortium; print(consortium.__file__)"
        where = _run([str(py), "-c", code], work, env, 60)
        assert where.strip().startswith(str(venv)), where
        assert "Usage: consortium" in _run([str(cli), "--help"], work, env, 120)
        # The installed built-in tasks hash like the sources: members on a wheel and on a
        # checkout of the same version agree on a run's task_hash.
        code = (
            f"from consortium.learning.task import code_hash; print(code_hash({BUILTIN_MODULE!r}))"
        )
        assert _run([str(py), "-c", code], work, env, 60).strip() == code_hash(BUILTIN_MODULE)
        table = _run([str(cli), "bench", "secagg", "--n", "5", "--d", "1000"], work, env, 300)
        assert re.search(r"^\|\s*5\s*\|\s*1000\s*\|", table, re.M), table
        out = _run(
            [
                str(cli),
                *("demo", "--nodes", "3", "--rounds", "1", "--no-erase"),
                *("--dir", str(work / "run")),
            ],
            work,
            env,
            900,
        )
        assert re.search(r"audit \S+node0: OK", out), out
        assert "replicas agree: True" in out, out
        assert f"consortium ui {work / 'run'}" in " ".join(out.split()), out  # the dashboard's
        # The report's templates and the receipt checker's script are package data.
        report = work / "report.html"
        _run(
            [str(cli), "report", str(work / "run"), "--out", str(report), "--no-audit",
             "--receipt-page", str(work / "receipts.html")],
            work,
            env,
            300,
        )  # fmt: skip
        assert "Record of processing" in report.read_text()
        assert "consortiumReceipt" in (work / "receipts.html").read_text()

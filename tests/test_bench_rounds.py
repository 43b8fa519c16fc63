"""Smoke test of benchmarks/rounds.py: a tiny grid runs real nodes and writes a full table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rounds.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consortium_bench_rounds_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_rounds_bench_tiny_grid(tmp_path: Path) -> None:
    out = tmp_path / "rounds.md"
    argv = ["--nodes", "3", "--datasets", "digits", "--partitions", "iid,0.5", "--rounds", "2"]
    rc = _load().main([*argv, "--out", str(out)])
    assert rc == 0
    lines = out.read_text().splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| digits")]
    assert [r[1].strip() for r in rows] == ["iid", "0.5"]
    for cells in rows:
        nodes, rounds, median, p95, mb, fed, central = (float(c) for c in cells[2:])
        assert (nodes, rounds) == (3, 2)
        assert 0 < median <= p95
        assert mb > 0.01  # at least the model updates travelled (19 KB each for the digits MLP)
        assert 0 < fed <= 1 and 0.5 < central <= 1  # 2 rounds: federated may still be near chance
    assert not any("failover" in line or "disagree" in line for line in lines)

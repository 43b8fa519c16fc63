"""Smoke test of consortium.bench.accuracy: a tiny run gives one accuracy per committed round,
read back from the store, and the table says when the curve came within reach of centralized."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.bench.accuracy import first_within, parse_args
from consortium.cli.bench import load_script


def test_first_within_is_the_first_round_at_or_above_the_target() -> None:
    assert first_within([0.5, 0.7, 0.69, 0.9], 0.7) == 2
    assert first_within([0.5, 0.6], 0.7) is None


def test_bad_options_are_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--dp", "client"])
    assert "unknown mode(s) ['client']" in capsys.readouterr().err


def test_accuracy_bench_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.md"
    argv = ["--members", "3", "--rounds", "3", "--epochs", "2", "--dp", "none,record"]
    rc = load_script("accuracy").main([*argv, "--central-epochs", "2", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| 3 |")]
    assert [r[1].strip() for r in rows] == ["off", "record ε 8"]
    for cells in rows:
        first, last, best = (float(c) for c in cells[2:5])  # rounds 1 and 3, and the best
        assert 0.0 < first <= best <= 1.0 and last <= best
    assert float(rows[0][3]) > 0.5  # 3 rounds of 2 epochs learn something (chance: 0.1)
    assert "Notes:" not in text  # no failover, no replica disagreement, no short round

"""Smoke test of consortium.bench.privacy: a tiny grid writes CSV, PNG and the markdown table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from consortium.cli.bench import load_script


def test_privacy_bench_tiny_grid(tmp_path: Path) -> None:
    argv = ["--datasets", "digits", "--eps", "3,inf", "--nodes", "3", "--rounds", "2"]
    assert load_script("privacy").main([*argv, "--out-dir", str(tmp_path)]) == 0
    with (tmp_path / "privacy.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2  # units x epsilons x rounds
    for r in rows:
        eps, target = float(r["epsilon"]), float(r["target_epsilon"])
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        if math.isinf(target):
            assert math.isinf(eps) and float(r["noise_multiplier"]) == 0.0
        else:  # calibrated so the whole run spends the target, never more
            assert eps <= target * (1 + 1e-9)
            if r["round"] == "2":
                assert eps > 0.95 * target
    table = (tmp_path / "privacy.md").read_text().splitlines()
    assert len([line for line in table if line.startswith("| digits")]) == 4
    assert (tmp_path / "privacy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

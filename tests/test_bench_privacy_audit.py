"""Smoke test of `consortium bench privacy-audit`: tiny settings run real nodes for every row and
write the table and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from consortium.cli.bench import load_script


def test_privacy_audit_bench_tiny(tmp_path: Path) -> None:
    out, figures = tmp_path / "t.md", tmp_path / "t.json"
    argv = ["--rounds", "2", "--eps", "3", "--reference-models", "2"]
    argv += ["--inversion-iterations", "30", "--inversion-restarts", "1", "--canaries", "20"]
    before = torch.get_num_threads()
    try:
        rc = load_script("privacy-audit").main([*argv, "--out", str(out), "--json", str(figures)])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    text = out.read_text()
    assert "consortium bench privacy-audit --rounds 2" in text and "min wall time" in text
    rows = {r["setting"]: r for r in json.loads(figures.read_text())["rows"]}
    assert list(rows) == [
        "plaintext FedAvg",
        "SecAgg+",
        "SecAgg+ with record-level DP, ε = 3",
        "centralized (no federation, no DP)",
    ]
    for r in rows.values():
        assert 0 < r["accuracy"] <= 1 and 0 <= r["auc"] <= 1
    dp = rows["SecAgg+ with record-level DP, ε = 3"]
    assert dp["epsilon"] is not None and 0 < dp["epsilon"] <= 3.01  # calibrated to the target
    assert dp["bound"] <= dp["epsilon"] and dp["view"] == "secagg+dp"
    assert rows["plaintext FedAvg"]["epsilon"] is None and rows["SecAgg+"]["view"] == "secagg"
    assert rows["centralized (no federation, no DP)"]["psnr"] is None
    # What DP noise leaves of the images is far below what a plaintext leader rebuilds.
    assert rows["plaintext FedAvg"]["psnr"] > dp["psnr"]

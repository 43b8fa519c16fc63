"""Smoke test of consortium.bench.rounds: a tiny grid runs real nodes and writes a full table."""

from __future__ import annotations

from pathlib import Path

from consortium.cli.bench import load_script


def test_rounds_bench_tiny_grid(tmp_path: Path) -> None:
    out = tmp_path / "rounds.md"
    argv = ["--nodes", "3", "--datasets", "digits", "--partitions", "iid,0.5", "--rounds", "2"]
    rc = load_script("rounds").main([*argv, "--out", str(out)])
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

"""`consortium bench beacon` runs and reports what the beacon costs."""

from __future__ import annotations

import json

import pytest

from consortium.cli.bench import load_script


def test_beacon_bench_reports_threshold_and_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_script("beacon").main(["--members", "4", "7", "--repeat", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["members"], r["threshold"]) for r in rows] == [(4, 2), (7, 3)]
    assert rows[1]["bytes_sent_per_member_round"] == 6 * (33 + 64)
    assert all(r["partial_ms"] > 0 and r["genesis_json_bytes"] > 0 for r in rows)

"""Smoke test of `consortium bench ledger`: a tiny run reports every verifying figure as a
fraction of the verification limit measured in the same run (no timing is asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consortium.cli.bench import load_script
from consortium.ledger import parallel


def test_bench_ledger_reports_fractions_of_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_script("ledger")
    real = parallel.verification_limit
    monkeypatch.setattr(bench.parallel, "verification_limit", lambda k, s, p: real(k, s, p, n=400))
    out = tmp_path / "ledger.md"
    argv = ["--sizes", "50", "--batch", "20", "--audit", "40", "--rounds", "2", "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    fractions = re.findall(r"\| \*\*(\d+\.\d\d)\*\* \((\d+\.\d\d) to (\d+\.\d\d)\) \|", text)
    assert len(fractions) == 3  # verified appends, from bytes, audit
    for median, low, high in fractions:
        assert 0 < float(low) <= float(median) <= float(high)
    assert "| 41 |" in text  # the audited folder: genesis and 40 records

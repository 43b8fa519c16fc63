"""`consortium bench zk`: its table, its options, and one real case in a child process (slow)."""

from __future__ import annotations

import pytest

from consortium.bench import zk
from consortium.cli.bench import load_script


def test_registered_and_rows_with_errors_say_why() -> None:
    assert load_script("zk") is zk
    text = zk.table([{"case": "fashion-mnist/mlp", "s": 8, "error": "no dataset"}])
    assert "| fashion-mnist/mlp | 8 |  |  | not run: no dataset |" in text
    big = {"case": "digits/cnn", "s": 1, "rows": 137632, "logrows": 18, "error": "not set up"}
    assert "| digits/cnn | 1 | 137,632 | 18 | not run: not set up |" in zk.table([big])
    assert "TEST ONLY" in text


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        zk.main(["--sizes", "0"])
    assert "positive" in capsys.readouterr().err


@pytest.mark.slow
def test_one_case_measures_every_column_in_a_child() -> None:
    (row,) = [zk.run_case("digits/logreg", 1)]
    assert "error" not in row, row
    for key, _, _ in zk.COLUMNS:
        assert key in row
    assert row["peak_mib"] > 50 and row["proof_bytes"] > 1000 and 0 <= row["correct"] <= 1


@pytest.mark.slow
def test_a_circuit_above_max_logrows_is_calibrated_but_not_set_up() -> None:
    row = zk.run_case("digits/logreg", 1, max_logrows=8)
    assert "not set up" in row["error"] and "2^11 > 2^8" in row["error"], row
    assert row["logrows"] == 11 and row["rows"] > 1000

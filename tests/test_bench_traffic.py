"""`consortium bench traffic` runs a real secure round and accounts for every byte."""

from __future__ import annotations

import pytest

from consortium.cli.bench import load_script
from consortium.protocol.secagg.commitment import sum_width


def test_traffic_bench_counts_one_masked_vector_out_and_one_model_and_sum_in() -> None:
    traffic = load_script("traffic")
    d = 256
    row = traffic.run_case(4, d)
    mb = 1e6
    assert (row["members"], row["d"]) == (4, d)
    # A non-leader sends its masked vector (d + 1 words) and small signed messages; it receives
    # the model (d floats) and the transcript, whose sum is 5 bytes a word.
    assert 4 * (d + 1) / mb < row["non-leader sent (MB)"] < 4 * (d + 1) / mb + 0.01
    transcript = row["transcript (MB)"]
    assert isinstance(transcript, float) and transcript * mb >= sum_width(4) * (d + 1)
    assert row["non-leader received (MB)"] > (4 * d) / mb + transcript
    # The leader receives every masked vector.
    assert row["leader received (MB)"] > 3 * 4 * (d + 1) / mb


def test_traffic_bench_refuses_bad_member_counts(capsys: pytest.CaptureFixture[str]) -> None:
    traffic = load_script("traffic")
    with pytest.raises(SystemExit):
        traffic.main(["--members", "3"])
    with pytest.raises(SystemExit):
        traffic.main(["--members", "five"])
    assert "must be" in capsys.readouterr().err

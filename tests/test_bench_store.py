"""`consortium bench store`: every importer gives the same CID, and the table says so."""

from __future__ import annotations

import pytest

from consortium.bench import store as bench
from tests.ipfs_support import JS_DIR, KUBO_DIR, have_js, have_kubo


def test_bench_store_compares_equal_cids_and_prints_a_table() -> None:
    rows = bench.measure(1024 * 1024 + 3, ["unixfs-v0-2015", "kubo-cid-v1"], JS_DIR, KUBO_DIR)
    v0, v1 = rows
    assert v0["cid"].startswith("Qm") and v1["cid"].startswith("bafy")
    assert isinstance(v0["js"], float) == have_js()  # measure raises if a CID differs
    assert isinstance(v0["kubo"], float) == have_kubo()
    assert v1["kubo"] == "CIDv0 only"
    text = bench.table(rows)
    assert "| `unixfs-v0-2015` |" in text and "CIDs equal in every row" in text


def test_bench_store_refuses_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--profiles", "unixfs-v9", "--size-mib", "1"])
    assert "unknown profile 'unixfs-v9'" in capsys.readouterr().err


def test_bench_store_measures_proofs_and_detection() -> None:
    r = bench.measure_proofs(100_000, repeat=2)
    assert r["leaves"] == 3125 and r["k"] == 8
    assert r["proof_bytes"] == 8 + 32 + 32 * 12  # a path of 12 hashes at 3,125 leaves
    assert r["answer_bytes"] == 8 * r["proof_bytes"]
    rows = dict(((p, m), q) for p, m, q in bench.detection())
    assert abs(rows[(0.01, 1)] - (1 - 0.99**8)) < 1e-12 and rows[(0.05, 100)] > 0.999999
    assert "| 5% |" in bench.proof_table(r)

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

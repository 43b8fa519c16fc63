"""CAR export and import: everything the latest final head references goes out as one CARv1; an
import verifies every block before adding any; an outside auditor audits from ledger + CAR; and
the IPFS project's own CAR library reads what we write and writes what we read."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from multiformats import CID, multihash
from typer.testing import CliRunner

from consortium.audit import audit
from consortium.cli.app import app
from consortium.core.encoding import encode
from consortium.core.errors import AuditError, StoreError
from consortium.ledger.log import Ledger
from consortium.protocol.record import run_records
from consortium.store import (
    PROFILES,
    BlockStore,
    as_cid,
    cid_for,
    file_cid,
    get_bytes,
    get_object,
    parse_cid,
    walk,
)
from consortium.store.car import car_header, car_section, import_car
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.ipfs_support import needs_js, run_js
from tests.test_audit import build_folder

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _node(tmp_path: Path, n_records: int = 12) -> Path:
    folder = tmp_path / "node"
    folder.mkdir()
    return build_folder(folder, n_records=n_records)


def _artifacts(folder: Path) -> list[CID]:
    with Ledger.open(folder / "ledger.sqlite", readonly=True) as ledger:
        return [as_cid(ref) for e in ledger.iter_entries(1) for ref in e.references()]


def _export(folder: Path, car: Path) -> str:
    code, out, err = _invoke("store", "export", str(folder), "--car", str(car))
    assert code == 0, err
    return out


def test_an_outside_auditor_audits_from_the_ledger_and_a_car(tmp_path: Path) -> None:
    node = _node(tmp_path)
    car = tmp_path / "run.car"
    out = _export(node, car)
    assert "12 artifacts referenced by the 13 entries under the latest final head" in out
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(node / "ledger.sqlite", auditor)  # from any member: entries and cosigned heads
    with pytest.raises(AuditError, match="there is no store"):
        audit(auditor)
    code, out, err = _invoke("store", "import", str(car), "--dir", str(auditor))
    assert code == 0, err
    report = audit(auditor)
    assert report.artifacts == 12 and report.latest_final_size == 13
    # The CAR holds every block of every artifact, plus its index root, and nothing else.
    original = BlockStore(node / "store")
    wanted = {str(sub) for a in _artifacts(node) for sub in walk(original, a)}
    root = parse_cid(out.split("roots: ")[1].strip())
    imported = {str(c) for c in BlockStore(auditor / "store").iter_cids()}
    assert imported == wanted | {str(root)}
    assert f"{len(wanted) + 1} blocks ({len(wanted) + 1} new)" in out
    index = get_object(BlockStore(auditor / "store"), root)
    assert index["format"] == "consortium-car/v1" and index["size"] == 13
    assert [str(a) for a in index["artifacts"]] == [str(a) for a in _artifacts(node)]
    with Ledger.open(node / "ledger.sqlite", readonly=True) as ledger:
        assert index["consortium"] == ledger.genesis().digest()
        assert index["root"] == ledger.root(13)
    code, out, _ = _invoke("store", "import", str(car), "--dir", str(auditor))
    assert code == 0 and "(0 new)" in out


def test_export_holds_only_what_the_latest_final_head_covers(tmp_path: Path) -> None:
    node = _node(tmp_path, n_records=13)  # entry 13 is not under a final head
    car = tmp_path / "run.car"
    assert "12 artifacts referenced by the 13 entries" in _export(node, car)
    fresh = BlockStore(tmp_path / "fresh")
    report = import_car(fresh, car)
    last = _artifacts(node)[-1]
    assert not fresh.has(last) and all(fresh.has(a) for a in _artifacts(node)[:-1])
    assert report.added == report.blocks


def test_export_names_an_artifact_the_store_lacks_and_writes_nothing(tmp_path: Path) -> None:
    node = _node(tmp_path)
    store = BlockStore(node / "store")
    big = next(a for a in _artifacts(node) if a.codec.name == "dag-pb")
    leaf = list(walk(store, big))[-1]
    store.delete(leaf)
    car = tmp_path / "run.car"
    code, _, err = _invoke("store", "export", str(node), "--car", str(car))
    line = _one_error_line(err)
    assert code != 0 and str(big) in line and f"block {leaf} is not in the store" in line
    assert "referenced by entry" in line
    assert not car.exists() and list(tmp_path.iterdir()) == [node]
    code, _, err = _invoke("store", "export", str(tmp_path / "none"), "--car", str(car))
    assert code != 0 and "is not a folder" in _one_error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = _invoke("store", "export", str(tmp_path / "empty"), "--car", str(car))
    assert code != 0 and "no ledger" in _one_error_line(err)


# -- hostile CARs ----------------------------------------------------------------------------------

A, B = b"first block", b"second block"
GOOD = car_header([cid_for(A)]) + car_section(cid_for(A), A) + A + car_section(cid_for(B), B) + B


def _block(cid: CID, data: bytes) -> bytes:
    return car_section(cid, data) + data


def _cid(codec: str, data: bytes, hash_name: str = "sha2-256") -> CID:
    return CID("base32", 1, codec, multihash.digest(data, hash_name))


HOSTILE = {
    "mismatch": (
        GOOD + _block(cid_for(b"other"), b"bytes"),
        r"block 2 \(bafkrei\w+\) does not match its CID",
    ),
    "codec": (
        GOOD + _block(_cid("dag-json", b"{}"), b"{}"),
        r"block 2 at byte \d+ has CID bagu\w+ with codec dag-json",
    ),
    "hash": (GOOD + _block(_cid("raw", b"x", "sha2-512"), b"x"), "only sha2-256"),
    "truncated": (GOOD[:-3], r"truncated: block 1 at byte \d+ needs"),
    "cut varint": (GOOD + b"\x80", r"truncated: block 2 at byte \d+ ends with the file"),
    "header": (GOOD[:20], "truncated: the header"),
    "not a car": (b"hello, this is not a CAR file", "not a CAR"),
    "bad dag-pb": (GOOD + _block(cid_for(b"\x08", "dag-pb"), b"\x08"), "not valid dag-pb"),
    "bad dag-cbor": (GOOD + _block(cid_for(b"\xa1", "dag-cbor"), b"\xa1"), "not valid dag-cbor"),
    "huge block": (GOOD + b"\xff\xff\xff\x7f", "claims 268435455 bytes"),
}


def _header(header: object) -> bytes:
    data = encode(header)
    return bytes([len(data)]) + data


HOSTILE["version 2"] = (_header({"version": 2}), "CAR version 2 is not supported")
HOSTILE["no roots"] = (_header({"version": 1}), "exactly roots and version")
HOSTILE["root"] = (_header({"roots": [1], "version": 1}), "a root is not a CID")
HOSTILE["cid version"] = (
    GOOD + b"\x04\x02\x55\x12\x20",
    "block 2 at byte 156 has a CID of version 2",
)
HOSTILE["short v0"] = (GOOD + b"\x03\x12\x20\x00", "a CIDv0 shorter than its hash")
HOSTILE["short v1"] = (GOOD + b"\x05\x01\x55\x12\x20\x00", "a CID longer than its section")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_bad_car_adds_nothing_and_names_the_problem(tmp_path: Path, case: str) -> None:
    data, reason = HOSTILE[case]
    car = tmp_path / "bad.car"
    car.write_bytes(data)
    folder = tmp_path / "node"
    folder.mkdir()
    code, _, err = _invoke("store", "import", str(car), "--dir", str(folder))
    line = _one_error_line(err)
    assert code != 0 and "CAR bad.car" in line
    assert re.search(reason, line), line
    store = BlockStore(folder / "store")
    assert list(store.iter_cids()) == [] and sorted(p.name for p in store.root.iterdir()) == [
        "blocks"
    ]  # no block, and no staging folder left behind


def test_a_staging_folder_left_by_a_killed_import_is_removed_at_start(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    (store.root / ".import-x1").mkdir()
    (store.root / ".import-x1" / "bafkreia").write_bytes(b"half")
    assert store.remove_temp_files() == [".import-x1"]
    assert sorted(p.name for p in store.root.iterdir()) == ["blocks"]


def test_a_good_car_imports_and_a_missing_file_is_one_line(tmp_path: Path) -> None:
    car = tmp_path / "good.car"
    car.write_bytes(GOOD + _block(cid_for(A), A))  # a repeated block is added once
    report = import_car(BlockStore(tmp_path / "s"), car)
    assert (report.roots, report.blocks, report.added) == ([cid_for(A)], 2, 2)
    code, _, err = _invoke("store", "import", str(tmp_path / "nope.car"), "--dir", str(tmp_path))
    assert code != 0 and "not a file" in _one_error_line(err)


# -- the IPFS project's CAR library (slow: Node.js) ------------------------------------------------


@pytest.mark.slow
@needs_js
def test_the_javascript_car_reader_reads_our_car_and_rebuilds_every_artifact(
    tmp_path: Path,
) -> None:
    node = _node(tmp_path)
    car = tmp_path / "run.car"
    out = _export(node, car)
    root = out.rsplit("root ", 1)[1].strip()
    artifacts = _artifacts(node)
    lines = run_js("car_read.mjs", str(car), *map(str, artifacts)).splitlines()
    store = BlockStore(node / "store")
    blocks = len({str(sub) for a in artifacts for sub in walk(store, a)}) + 1
    assert lines[0] == f"roots {root}" and lines[1] == f"blocks {blocks}"
    expected = [f"{a} {hashlib.sha256(get_bytes(store, a)).hexdigest()}" for a in artifacts]
    assert lines[2:] == expected


@pytest.mark.slow
@needs_js
@pytest.mark.parametrize("name", list(PROFILES))
def test_a_car_the_javascript_library_writes_imports_into_us(tmp_path: Path, name: str) -> None:
    data = np.random.default_rng(11).bytes(3 * 1024 * 1024 + 17)
    src, car = tmp_path / "model.bin", tmp_path / "js.car"
    src.write_bytes(data)
    cid = run_js("car_write.mjs", name, str(src), str(car)).strip()
    assert cid == str(file_cid(data, name))
    folder = tmp_path / "node"
    folder.mkdir()
    code, out, err = _invoke("store", "import", str(car), "--dir", str(folder))
    assert code == 0 and f"roots: {cid}" in out, err
    assert get_bytes(BlockStore(folder / "store"), cid) == data


def test_a_run_under_kubos_default_profile_audits_and_exports(tmp_path: Path) -> None:
    """A consortium whose genesis picks unixfs-v0-2015: models are stored (and recorded on the
    ledger) under kubo's CIDv0, every member's folder audits, and so does a folder rebuilt from
    one member's ledger and CAR."""

    async def main() -> Path:
        nodes, net, clock = await cluster(
            tmp_path / "run", 3, seed=4, consent=False, unixfs_profile="unixfs-v0-2015"
        )
        try:
            await start(nodes, run_config(2, seed=4))
            await drive(nodes, net, clock)
            records = run_records(nodes[0].ledger)
            assert len(records) == 2
            assert all(str(r.model).startswith("Qm") for r in records)
            return nodes[0].dir
        finally:
            for n in nodes:
                await n.stop()

    node = asyncio.run(main())
    assert audit(node).artifacts >= 3
    car = tmp_path / "run.car"
    _export(node, car)
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(node / "ledger.sqlite", auditor)
    code, _, err = _invoke("store", "import", str(car), "--dir", str(auditor))
    assert code == 0, err
    assert audit(auditor).artifacts == audit(node).artifacts


def test_random_damage_to_a_car_is_refused_cleanly_and_adds_nothing(tmp_path: Path) -> None:
    """Bit flips and truncations anywhere in a real CAR: the import succeeds (a flip in a place
    that does not matter, such as a root's base) or fails with a StoreError, never another
    exception, and a failed import adds no block."""
    import random

    node = _node(tmp_path)
    car = tmp_path / "run.car"
    _export(node, car)
    good = car.read_bytes()
    rng = random.Random(3)
    bad = tmp_path / "bad.car"
    for i in range(60):
        data = bytearray(good)
        if i % 2:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data)) :]
        bad.write_bytes(bytes(data))
        store = BlockStore(tmp_path / f"s{i}")
        try:
            import_car(store, bad)
        except StoreError:
            assert list(store.iter_cids()) == []

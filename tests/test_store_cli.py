"""`consortium store` commands through typer's test runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from consortium.cli.store import app
from consortium.core.genesis import GENESIS_FILE, Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.store import CHUNK_SIZE, BlockStore, cid_for

runner = CliRunner()


def test_put_get_verify(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello")
    res = runner.invoke(app, ["put", str(small), "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(cid_for(b"hello"))

    big_data = np.random.default_rng(0).bytes(2 * CHUNK_SIZE + 3)
    big = tmp_path / "big.bin"
    big.write_bytes(big_data)
    res = runner.invoke(app, ["put", str(big), "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    cid = res.stdout.strip()
    assert cid.startswith("bafybei")  # a UnixFS file node (unixfs-v1-2025)

    out = tmp_path / "copy.bin"
    res = runner.invoke(app, ["get", cid, str(out), "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == big_data

    res = runner.invoke(app, ["verify", "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "5 blocks" in res.stdout


def test_verify_names_the_corrupt_block(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"precious")
    runner.invoke(app, ["put", str(tmp_path / "f"), "--dir", str(tmp_path)])
    cid = cid_for(b"precious")
    path = BlockStore(tmp_path / "store").path_for(cid)
    os.chmod(path, 0o644)
    path.write_bytes(b"Precious")
    res = runner.invoke(app, ["verify", "--dir", str(tmp_path)])
    assert res.exit_code == 1
    assert str(cid) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["get", str(cid), str(tmp_path / "o"), "--dir", str(tmp_path)])
    assert res.exit_code == 1 and "corrupt" in res.stderr
    assert not (tmp_path / "o").exists()


def _one_error_line(res: object) -> str:
    stderr: str = res.stderr  # type: ignore[attr-defined]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_error_lines(tmp_path: Path) -> None:
    res = runner.invoke(app, ["put", str(tmp_path / "missing"), "--dir", str(tmp_path)])
    assert res.exit_code != 0 and "not a file" in _one_error_line(res)

    res = runner.invoke(app, ["get", "not-a-cid", str(tmp_path / "o"), "--dir", str(tmp_path)])
    assert res.exit_code != 0 and "not a valid CID" in _one_error_line(res)

    res = runner.invoke(
        app, ["get", str(cid_for(b"x")), str(tmp_path / "o"), "--dir", str(tmp_path)]
    )
    assert res.exit_code != 0 and "no block store" in _one_error_line(res)

    BlockStore(tmp_path / "store")
    res = runner.invoke(
        app, ["get", str(cid_for(b"x")), str(tmp_path / "o"), "--dir", str(tmp_path)]
    )
    assert res.exit_code != 0 and "not in the store" in _one_error_line(res)

    res = runner.invoke(app, ["verify", "--dir", str(tmp_path / "nowhere")])
    assert res.exit_code != 0 and "not a folder" in _one_error_line(res)

    (tmp_path / "f").write_bytes(b"x")
    res = runner.invoke(
        app, ["put", str(tmp_path / "f"), "--dir", str(tmp_path), "--profile", "v2"]
    )
    assert res.exit_code != 0 and "unknown UnixFS profile 'v2'" in _one_error_line(res)


def test_put_gives_kubos_cids_under_each_profile(tmp_path: Path) -> None:
    """kubo's published CIDs of "hello world": `ipfs add` (CIDv0), `--cid-version 1`, and the
    unixfs-v1-2025 profile (both raw leaves: one chunk is its raw block)."""
    hello = tmp_path / "hello.txt"
    hello.write_bytes(b"hello world")
    expected = {
        "unixfs-v0-2015": "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD",
        "kubo-cid-v1": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
        "unixfs-v1-2025": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
    }
    for name, cid in expected.items():
        res = runner.invoke(app, ["put", str(hello), "--dir", str(tmp_path), "--profile", name])
        assert res.exit_code == 0 and res.stdout.strip() == cid, res.output
        out = tmp_path / f"{name}.out"
        res = runner.invoke(app, ["get", cid, str(out), "--dir", str(tmp_path)])
        assert res.exit_code == 0 and out.read_bytes() == b"hello world", res.output


def test_put_defaults_to_the_consortiums_profile(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("m0", "127.0.0.1:7300")
    genesis = Genesis.ceremony("c", [ident], [Purpose("p")], 1, unixfs_profile="unixfs-v0-2015")
    genesis.save(tmp_path / GENESIS_FILE)
    (tmp_path / "f").write_bytes(b"hello world")
    res = runner.invoke(app, ["put", str(tmp_path / "f"), "--dir", str(tmp_path)])
    assert res.exit_code == 0 and res.stdout.strip().startswith("Qmf412"), res.output

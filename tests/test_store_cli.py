"""`consortium store` commands through typer's test runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from consortium.cli.store import app
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
    assert cid.startswith("bafyrei")

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

"""Identity keys at rest: the sealed `consortium-key/v1` format, migration and the CLI."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from consortium.cli import common
from consortium.cli.app import app
from consortium.core import keyfile
from consortium.core.errors import IdentityError
from consortium.core.identity import NodeIdentity, keys_encrypted, reencrypt_keys

runner = CliRunner()
PW = "correct horse"
FAST = keyfile.ScryptCost(n=2**10, r=8, p=1)


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The production cost (128 MiB, ~0.5 s per key) would make every test here slow.
    monkeypatch.setattr(keyfile, "WRITE_COST", FAST)
    monkeypatch.delenv("CONSORTIUM_PASSPHRASE", raising=False)
    monkeypatch.delenv("CONSORTIUM_NEW_PASSPHRASE", raising=False)


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _write_doc(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))


def _save_legacy(ident: NodeIdentity, directory: Path, passphrase: str) -> None:
    """Write `ident` as the previous version did: PKCS#8 PEM under BestAvailableEncryption."""
    ident.save(directory)
    for fname in ("node.key", "tls.key"):
        key = serialization.load_pem_private_key((directory / fname).read_bytes(), None)
        (directory / fname).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(passphrase.encode()),
            )
        )


def test_default_cost_is_the_documented_one() -> None:
    assert keyfile.ScryptCost(n=2**17, r=8, p=1) == keyfile.DEFAULT_COST
    assert keyfile.DEFAULT_COST.check() is None  # the default must be readable back


def test_encrypted_round_trip_uses_the_new_format(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("bob")
    ident.save(tmp_path, passphrase=PW)
    for fname in ("node.key", "tls.key"):
        doc = _doc(tmp_path / fname)
        assert doc["format"] == "consortium-key/v1" and doc["key"] == fname
        assert (doc["kdf"], doc["n"], doc["r"], doc["p"]) == ("scrypt", FAST.n, 8, 1)
        assert doc["aead"] == "chacha20poly1305"
        assert stat.S_IMODE((tmp_path / fname).stat().st_mode) == 0o600
    assert keys_encrypted(tmp_path)
    loaded = NodeIdentity.load(tmp_path, PW)
    assert loaded.node_id == ident.node_id
    assert loaded.tls_key_pem() == ident.tls_key_pem()
    with pytest.raises(IdentityError, match="encrypted: set CONSORTIUM_PASSPHRASE"):
        NodeIdentity.load(tmp_path)


def test_unencrypted_keys_stay_plain_pem(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("carol")
    ident.save(tmp_path)
    assert (tmp_path / "node.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not keys_encrypted(tmp_path)
    assert NodeIdentity.load(tmp_path).node_id == ident.node_id
    with pytest.raises(IdentityError, match="not encrypted, but a passphrase was given"):
        NodeIdentity.load(tmp_path, PW)


def test_wrong_passphrase_is_refused_naming_the_file(tmp_path: Path) -> None:
    NodeIdentity.generate("d").save(tmp_path, passphrase=PW)
    with pytest.raises(IdentityError, match=r"cannot decrypt .*node\.key: wrong passphrase"):
        NodeIdentity.load(tmp_path, "wrong")


@pytest.mark.parametrize(
    ("field", "value"),
    [("p", 2), ("salt", "AAAAAAAAAAAAAAAAAAAAAA=="), ("nonce", "AAAAAAAAAAAAAAAA")],
)
def test_tampered_header_is_refused(tmp_path: Path, field: str, value: Any) -> None:
    NodeIdentity.generate("e").save(tmp_path, passphrase=PW)
    doc = _doc(tmp_path / "tls.key")
    assert doc[field] != value
    _write_doc(tmp_path / "tls.key", {**doc, field: value})
    with pytest.raises(IdentityError, match=r"cannot decrypt .*tls\.key"):
        NodeIdentity.load(tmp_path, PW)


def test_tampered_ciphertext_is_refused(tmp_path: Path) -> None:
    NodeIdentity.generate("f").save(tmp_path, passphrase=PW)
    doc = _doc(tmp_path / "node.key")
    raw = bytearray(base64.b64decode(doc["ciphertext"]))
    raw[5] ^= 1
    _write_doc(tmp_path / "node.key", {**doc, "ciphertext": base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(IdentityError, match=r"cannot decrypt .*node\.key: .*altered"):
        NodeIdentity.load(tmp_path, PW)


def test_swapped_key_files_are_refused(tmp_path: Path) -> None:
    NodeIdentity.generate("g").save(tmp_path, passphrase=PW)
    node, tls = (tmp_path / "node.key").read_bytes(), (tmp_path / "tls.key").read_bytes()
    (tmp_path / "node.key").write_bytes(tls)
    (tmp_path / "tls.key").write_bytes(node)
    with pytest.raises(IdentityError, match=r"holds 'tls.key', not 'node.key': .*swapped"):
        NodeIdentity.load(tmp_path, PW)
    # Relabelling the swapped file does not help: the label is bound by the AEAD.
    _write_doc(tmp_path / "node.key", {**_doc(tmp_path / "node.key"), "key": "node.key"})
    with pytest.raises(IdentityError, match=r"cannot decrypt .*node\.key"):
        NodeIdentity.load(tmp_path, PW)


@pytest.mark.parametrize(
    ("n", "r", "p", "why"),
    [
        (2**40, 8, 1, "MiB"),  # a terabyte of scrypt memory
        (2**18 + 1, 8, 1, "power of two"),
        (2**14, 10**6, 1, "outside"),
        (2**14, 8, 10**6, "outside"),
    ],
)
def test_absurd_scrypt_parameters_are_refused_before_deriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, r: int, p: int, why: str
) -> None:
    NodeIdentity.generate("h").save(tmp_path, passphrase=PW)
    _write_doc(tmp_path / "node.key", {**_doc(tmp_path / "node.key"), "n": n, "r": r, "p": p})

    def no_scrypt(*args: object, **kwargs: object) -> None:
        raise AssertionError("scrypt was run on refused parameters")

    monkeypatch.setattr(keyfile, "Scrypt", no_scrypt)
    with pytest.raises(IdentityError, match=rf"node\.key: scrypt parameters refused: .*{why}"):
        NodeIdentity.load(tmp_path, PW)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": "consortium-key/v1"}',
        b"{" + b" " * (keyfile.MAX_FILE_BYTES + 1) + b"}",
        b"garbage",
    ],
)
def test_malformed_key_file_is_an_identity_error_naming_it(tmp_path: Path, content: bytes) -> None:
    NodeIdentity.generate("i").save(tmp_path, passphrase=PW)
    (tmp_path / "tls.key").write_bytes(content)
    with pytest.raises(IdentityError, match=r"tls\.key"):
        NodeIdentity.load(tmp_path, PW)


def test_malformed_fields_are_refused(tmp_path: Path) -> None:
    NodeIdentity.generate("j").save(tmp_path, passphrase=PW)
    doc = _doc(tmp_path / "node.key")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": "1024"}, "must be integers"),
        ({"r": True}, "must be integers"),
        ({"salt": "not base64!"}, "salt is not valid base64"),
        ({"nonce": base64.b64encode(b"short").decode()}, "nonce length"),
        ({"kdf": "pbkdf2"}, "unsupported key file"),
        ({"format": "consortium-key/v9"}, "unsupported key file"),
    ]
    for bad, match in cases:
        _write_doc(tmp_path / "node.key", {**doc, **bad})
        with pytest.raises(IdentityError, match=match):
            NodeIdentity.load(tmp_path, PW)


@pytest.mark.parametrize("fname", ["node.key", "tls.key"])
def test_loose_key_permissions_are_refused(tmp_path: Path, fname: str) -> None:
    NodeIdentity.generate("k").save(tmp_path)
    os.chmod(tmp_path / fname, 0o644)
    with pytest.raises(IdentityError, match=rf"{fname} has permissions 0o644; run chmod 600"):
        NodeIdentity.load(tmp_path)


def test_old_pbkdf2_keys_load_with_a_warning_and_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ident = NodeIdentity.generate("legacy")
    _save_legacy(ident, tmp_path, PW)
    assert (tmp_path / "node.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    assert keys_encrypted(tmp_path)
    with caplog.at_level(logging.WARNING, logger="consortium.core.identity"):
        assert NodeIdentity.load(tmp_path, PW).node_id == ident.node_id
    assert "old PBKDF2 key format" in caplog.text and "node reencrypt" in caplog.text

    monkeypatch.setenv("CONSORTIUM_PASSPHRASE", PW)
    res = runner.invoke(app, ["node", "reencrypt", "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for fname in ("node.key", "tls.key"):
        assert _doc(tmp_path / fname)["format"] == "consortium-key/v1"
        assert stat.S_IMODE((tmp_path / fname).stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="consortium.core.identity"):
        assert NodeIdentity.load(tmp_path, PW).node_id == ident.node_id
    assert "old PBKDF2" not in caplog.text


def test_reencrypt_changes_the_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ident = NodeIdentity.generate("m")
    ident.save(tmp_path, passphrase=PW)
    monkeypatch.setenv("CONSORTIUM_PASSPHRASE", PW)
    monkeypatch.setenv("CONSORTIUM_NEW_PASSPHRASE", "battery staple")
    res = runner.invoke(app, ["node", "reencrypt", "--dir", str(tmp_path), "--change-passphrase"])
    assert res.exit_code == 0, res.output
    assert NodeIdentity.load(tmp_path, "battery staple").node_id == ident.node_id
    with pytest.raises(IdentityError, match="wrong passphrase"):
        NodeIdentity.load(tmp_path, PW)


def test_reencrypt_finishes_after_an_interruption(tmp_path: Path) -> None:
    # A crash between the two renames leaves node.key under the new passphrase, tls.key old.
    ident = NodeIdentity.generate("n")
    _save_legacy(ident, tmp_path, PW)
    fresh = tmp_path / "fresh"
    ident.save(fresh, passphrase="new")
    (tmp_path / "node.key").write_bytes((fresh / "node.key").read_bytes())
    with pytest.raises(IdentityError):  # a plain load cannot open the mixed pair
        NodeIdentity.load(tmp_path, "new")
    reencrypt_keys(tmp_path, PW, "new")
    assert NodeIdentity.load(tmp_path, "new").node_id == ident.node_id


def test_reencrypt_encrypts_plain_keys_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = NodeIdentity.generate("o")
    ident.save(tmp_path)
    res = runner.invoke(app, ["node", "reencrypt", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "--change-passphrase" in res.stderr
    monkeypatch.setenv("CONSORTIUM_NEW_PASSPHRASE", PW)
    res = runner.invoke(app, ["node", "reencrypt", "--dir", str(tmp_path), "--change-passphrase"])
    assert res.exit_code == 0, res.output
    assert NodeIdentity.load(tmp_path, PW).node_id == ident.node_id


def test_node_init_encrypt_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSORTIUM_PASSPHRASE", PW)
    res = runner.invoke(app, ["node", "init", "--name", "a", "--dir", str(tmp_path), "--encrypt"])
    assert res.exit_code == 0, res.output
    assert _doc(tmp_path / "node.key")["format"] == "consortium-key/v1"
    assert NodeIdentity.load(tmp_path, PW).name == "a"


def test_node_init_encrypt_prompts_with_confirmation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "_interactive", lambda: True)
    args = ["node", "init", "--name", "a", "--dir", str(tmp_path / "x"), "--encrypt"]
    res = runner.invoke(app, args, input=f"{PW}\nsomething else\n{PW}\n{PW}\n")
    assert res.exit_code == 0, res.output
    assert "do not match" in res.output  # the mistyped confirmation was asked again
    assert NodeIdentity.load(tmp_path / "x", PW).name == "a"


def test_cli_without_a_passphrase_and_no_terminal_says_what_to_set(tmp_path: Path) -> None:
    res = runner.invoke(app, ["node", "init", "--name", "a", "--dir", str(tmp_path), "--encrypt"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "set CONSORTIUM_PASSPHRASE" in lines[0], res.stderr
    assert not (tmp_path / "node.key").exists()

    NodeIdentity.generate("b").save(tmp_path / "b", passphrase=PW)
    (tmp_path / "b" / "genesis.json").write_text("{}")
    res = runner.invoke(app, ["node", "start", "--dir", str(tmp_path / "b")])
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "set CONSORTIUM_PASSPHRASE" in lines[0], res.stderr


def test_passphrase_option_is_gone(tmp_path: Path) -> None:
    for args in (
        ["node", "init", "--name", "a", "--dir", str(tmp_path)],
        ["node", "start", "--dir", str(tmp_path)],
        ["run", "start", "--dir", str(tmp_path)],
        ["genesis", "sign", "--dir", str(tmp_path)],
    ):
        res = runner.invoke(app, [*args, "--passphrase", PW])
        assert res.exit_code == 2 and "No such option" in res.output, args
    assert not (tmp_path / "node.key").exists()

"""chain.toml parsing and the `chain deploy` / `audit --chain-url` errors that need no chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.audit import audit
from consortium.chain.accounts import derive_account
from consortium.cli.app import app
from consortium.cli.chain import chain_app
from consortium.core.errors import ConfigError
from consortium.core.genesis import GENESIS_FILE, Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger.log import Ledger
from consortium.node.anchoring import (
    CHAIN_CONFIG_FILE,
    Anchorer,
    ChainConfig,
    load_chain_config,
    read_chain_config,
    write_chain_config,
)

ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
runner = CliRunner()


def _one_error_line(res: object) -> str:
    stderr: str = res.stderr  # type: ignore[attr-defined]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_round_trip_and_absent(tmp_path: Path) -> None:
    assert load_chain_config(tmp_path) is None  # no chain.toml: the embedded chain
    cfg = ChainConfig.of("http://127.0.0.1:8545", ADDRESS.lower(), keystore='k "1".json')
    write_chain_config(tmp_path, cfg)
    back = load_chain_config(tmp_path)
    assert back == cfg and back.contract == ADDRESS  # stored checksummed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url = 'http://x'\ncontract = \n", "not valid TOML"),
        ("url = 'http://x:8545'\n", "contract: Field required"),
        (f"url = 'ftp://x'\ncontract = '{ADDRESS}'\n", "url: url must be http"),
        ("url = 'http://x'\ncontract = '0x1234'\n", "contract: not an Ethereum address"),
        (f"url = 'http://x'\ncontract = '{ADDRESS}'\nkey = 'secret'\n", "key: Extra inputs"),
    ],
)
def test_garbled_chain_toml_is_one_config_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / CHAIN_CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_chain_config(tmp_path)
    assert CHAIN_CONFIG_FILE in str(err.value) and "\n" not in str(err.value)


def test_missing_chain_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_chain_config(tmp_path / CHAIN_CONFIG_FILE)


def _member(tmp_path: Path) -> tuple[Path, NodeIdentity, Genesis]:
    ident = NodeIdentity.generate("solo", "127.0.0.1:7000")
    ident.evm_address = derive_account(ident).address
    genesis = Genesis.ceremony("t", [ident], [Purpose("research")], 1)
    ident.save(tmp_path)
    genesis.save(tmp_path / GENESIS_FILE)
    return tmp_path, ident, genesis


def test_node_refuses_bad_chain_config_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, ident, genesis = _member(tmp_path)
    (d / CHAIN_CONFIG_FILE).write_text("url = 'http://127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match="contract"):
        Anchorer(d, ident, genesis)
    write_chain_config(d, ChainConfig.of("http://127.0.0.1:1", ADDRESS, keystore="k.json"))
    monkeypatch.delenv("CONSORTIUM_CHAIN_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError, match="CONSORTIUM_CHAIN_PASSPHRASE"):
        Anchorer(d, ident, genesis)
    write_chain_config(d, ChainConfig.of("http://127.0.0.1:1", ADDRESS))
    anchorer = Anchorer(d, ident, genesis)
    try:  # shared chain: only the round's author anchors
        assert anchorer.shared
        assert anchorer.should_anchor(ident.node_id) and not anchorer.should_anchor("other")
    finally:
        anchorer.close()


def test_deploy_errors_are_one_line(tmp_path: Path) -> None:
    d, _, _ = _member(tmp_path)
    base = ["deploy", "--url", "http://127.0.0.1:1", "--dir", str(d)]
    res = runner.invoke(chain_app, base)
    assert res.exit_code == 2 and "exactly one of" in _one_error_line(res)
    res = runner.invoke(chain_app, [*base, "--deployer-key-env", "NO_SUCH_VAR_X"], env={})
    assert res.exit_code == 2 and "NO_SUCH_VAR_X is not set" in _one_error_line(res)
    secret = "0x" + "zz" * 32
    res = runner.invoke(chain_app, [*base, "--deployer-key-env", "K"], env={"K": secret})
    line = _one_error_line(res)
    assert res.exit_code == 2 and "not hold a valid" in line and secret not in res.output
    key = "0x" + "11" * 32
    res = runner.invoke(
        chain_app, [*base, "--deployer-key-env", "K", "--fund-members", "lots"], env={"K": key}
    )
    assert res.exit_code == 2 and "not an amount of ETH" in _one_error_line(res)
    res = runner.invoke(chain_app, [*base, "--deployer-key-env", "K"], env={"K": key})
    assert res.exit_code == 1 and "cannot reach an Ethereum node" in _one_error_line(res)
    assert key[2:] not in res.output
    assert not (d / CHAIN_CONFIG_FILE).exists()


def test_audit_chain_options(tmp_path: Path) -> None:
    d, _, genesis = _member(tmp_path)
    Ledger.create(d / LEDGER_FILE, genesis).close()
    assert audit(d).anchored == 0
    res = runner.invoke(app, ["audit", str(d), "--chain-url", "http://127.0.0.1:1"])
    assert res.exit_code == 2 and "needs --contract" in _one_error_line(res)
    res = runner.invoke(
        app, ["audit", str(d), "--chain-url", "http://127.0.0.1:1", "--contract", ADDRESS]
    )
    assert res.exit_code != 0 and "cannot reach an Ethereum node" in _one_error_line(res)
    (d / CHAIN_CONFIG_FILE).write_text("garbled =")
    res = runner.invoke(app, ["audit", str(d)])
    assert res.exit_code == 2 and "not valid TOML" in _one_error_line(res)

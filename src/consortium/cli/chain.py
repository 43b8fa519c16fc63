"""`consortium chain deploy`: put the consortium's anchor contract on a shared Ethereum chain.

The deployer is any funded account: a keystore file, or a hex private key read from an
environment variable the operator names (never from argv, where `ps` and shell history see it).
The key is never printed, logged or put in an error message.
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount

from consortium.chain.accounts import account_from_keystore
from consortium.chain.client import AnchorChain
from consortium.cli.common import console, err_console, handle_errors, secret
from consortium.core.errors import ConfigError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.node.anchoring import (
    CHAIN_CONFIG_FILE,
    PASSPHRASE_ENV,
    ChainConfig,
    write_chain_config,
)

chain_app = typer.Typer(
    help="Anchor tree heads on the consortium's shared Ethereum chain.", no_args_is_help=True
)

WEI_PER_ETH = Decimal(10) ** 18


@chain_app.callback()
def _group() -> None:
    """Anchor tree heads on the consortium's shared Ethereum chain."""
    # A callback keeps `chain` a group (`chain deploy`) even while it has a single command.


def _deployer(key_env: str | None, keystore: Path | None) -> LocalAccount:
    if (key_env is None) == (keystore is None):
        raise ConfigError("give exactly one of --deployer-key-env VAR and --keystore FILE")
    if keystore is not None:
        return account_from_keystore(keystore, secret(PASSPHRASE_ENV, f"passphrase for {keystore}"))
    assert key_env is not None
    key = os.environ.get(key_env)
    if not key:
        raise ConfigError(f"environment variable {key_env} is not set (it must hold a hex key)")
    try:
        account: LocalAccount = Account.from_key(key.strip())
    except Exception:  # the message may quote the key: say only where it came from
        raise ConfigError(
            f"environment variable {key_env} does not hold a valid hex private key"
        ) from None
    return account


def _wei(eth: str) -> int:
    try:
        value = Decimal(eth) * WEI_PER_ETH
    except InvalidOperation:
        raise ConfigError(f"--fund-members: not an amount of ETH: {eth!r}") from None
    if value <= 0 or value != value.to_integral_value():
        raise ConfigError(f"--fund-members: must be a positive amount of ETH, got {eth!r}")
    return int(value)


@chain_app.command("deploy")
@handle_errors
def deploy(
    url: str = typer.Option(..., help="HTTP(S) URL of the shared Ethereum JSON-RPC node."),
    directory: Path = typer.Option(
        ..., "--dir", help="A member's folder (its genesis.json; chain.toml is written there)."
    ),
    deployer_key_env: str | None = typer.Option(
        None, help="Name of an environment variable holding the deployer's hex private key."
    ),
    keystore: Path | None = typer.Option(
        None, help=f"Deployer keystore file (passphrase from ${PASSPHRASE_ENV} or a prompt)."
    ),
    fund_members: str | None = typer.Option(
        None, metavar="ETH", help="Also send each member's anchoring account this much ETH."
    ),
    force: bool = typer.Option(False, help=f"Replace an existing {CHAIN_CONFIG_FILE}."),
) -> None:
    """Deploy the TreeHeadAnchor contract for this consortium and write DIR/chain.toml."""
    target = directory / CHAIN_CONFIG_FILE
    if target.exists() and not force:
        raise ConfigError(f"{target} exists (this consortium has a contract); use --force")
    genesis = Genesis.load(directory / GENESIS_FILE)
    genesis.verify()
    members = [m.evm_address for m in genesis.members if m.evm_address]
    if not members:
        raise ConfigError(f"no member of {directory / GENESIS_FILE} has an EVM address")
    for m in genesis.members:
        if not m.evm_address:
            err_console.print(f"[yellow]warning:[/] {m.name} has no EVM address: it cannot anchor")
    wei = _wei(fund_members) if fund_members is not None else 0
    deployer = _deployer(deployer_key_env, keystore)
    ChainConfig.of(url, deployer.address)  # check the URL before connecting
    chain = AnchorChain.connect(url)
    address = chain.deploy(members, genesis.digest(), deployer=deployer)
    console.print(
        f"anchor contract deployed at {address} on {url} (chain id {chain.chain_id})",
        highlight=False,
    )
    for m in genesis.members:
        if wei and m.evm_address:
            tx = chain.fund(m.evm_address, wei, funder=deployer)
            console.print(
                f"funded {m.name} {m.evm_address} with {fund_members} ETH ({tx.tx_hash})",
                highlight=False,
            )
    path = write_chain_config(directory, ChainConfig.of(url, address))
    console.print(f"wrote {path}: copy it into every member's folder", highlight=False)

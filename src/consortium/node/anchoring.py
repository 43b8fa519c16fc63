"""Anchor final tree heads on an EVM chain: the consortium's shared chain, or an embedded one.

* **Shared chain** (production): `DIR/chain.toml` names an Ethereum JSON-RPC node and the
  TreeHeadAnchor contract deployed for this consortium (`consortium chain deploy`). Only the
  round's leader anchors, so the contract gets one anchor per head; the account is the node's
  derived one (its genesis `evm_address`) or a keystore named in chain.toml, decrypted with the
  passphrase in `CONSORTIUM_CHAIN_PASSPHRASE`.
* **Embedded chain** (no chain.toml): every node anchors on its own py-evm chain in `DIR/chain`,
  so each folder stays auditable on its own.

Blocking (web3, py-evm, SQLite): every chain call runs on one dedicated worker thread (SQLite
objects belong to the thread that made them; one thread also keeps our nonces in order), awaited
by the node's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consortium.chain.accounts import account_from_keystore, checksum, derive_account
from consortium.chain.check import check_deployment
from consortium.chain.client import AnchorChain, TxInfo
from consortium.core.errors import ChainError, ConfigError, ConsortiumError
from consortium.core.files import atomic_write
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity
from consortium.core.layout import CHAIN_DIR

log = logging.getLogger("consortium.node.anchoring")

CHAIN_CONFIG_FILE = "chain.toml"
PASSPHRASE_ENV = "CONSORTIUM_CHAIN_PASSPHRASE"
#: The contract's revert when a head of this size or larger is already anchored.
SUPERSEDED = "size must grow"


class ChainConfig(BaseModel):
    """`DIR/chain.toml`: the consortium's shared chain. The same file goes to every member."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="HTTP(S) URL of an Ethereum JSON-RPC node")
    contract: str = Field(description="address of the consortium's TreeHeadAnchor contract")
    keystore: str | None = Field(
        None, description="keystore file to anchor from (default: the identity-derived account)"
    )

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url must be http:// or https://, got {v!r}")
        return v

    @field_validator("contract")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            return str(checksum(v))
        except ConsortiumError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def of(cls, url: str, contract: str, keystore: str | None = None) -> ChainConfig:
        """Validated, with a problem as one ConfigError (for values given on a command line)."""
        try:
            return cls(url=url, contract=contract, keystore=keystore)
        except ValidationError as exc:
            raise ConfigError(_first(exc)) from exc

    def to_toml(self) -> str:
        # JSON string escapes are valid TOML basic-string escapes.
        lines = [f"url = {json.dumps(self.url)}", f"contract = {json.dumps(self.contract)}"]
        if self.keystore is not None:
            lines.append(f"keystore = {json.dumps(self.keystore)}")
        return "\n".join(lines) + "\n"


def read_chain_config(path: Path) -> ChainConfig:
    """Parse and validate a chain.toml; any problem is one ConfigError naming the file."""
    path = Path(path)
    try:
        return ChainConfig.model_validate(tomllib.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first(exc)}") from exc


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "file"
    return f"{where}: {str(err['msg']).removeprefix('Value error, ')}"


def load_chain_config(directory: Path) -> ChainConfig | None:
    """The folder's chain.toml, or None when there is none (anchor on the embedded chain)."""
    path = Path(directory) / CHAIN_CONFIG_FILE
    return read_chain_config(path) if path.exists() else None


def write_chain_config(directory: Path, config: ChainConfig) -> Path:
    path = Path(directory) / CHAIN_CONFIG_FILE
    atomic_write(path, config.to_toml().encode())
    return path


def chain_account(directory: Path, identity: NodeIdentity, config: ChainConfig) -> LocalAccount:
    """The account this node anchors from on the shared chain."""
    if config.keystore is None:
        return derive_account(identity)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        raise ConfigError(
            f"{Path(directory) / CHAIN_CONFIG_FILE} names a keystore: set {PASSPHRASE_ENV}"
        )
    keystore = Path(config.keystore)
    return account_from_keystore(
        keystore if keystore.is_absolute() else Path(directory) / keystore, passphrase
    )


@dataclass(frozen=True)
class Anchored:
    size: int
    tx: TxInfo
    seconds: float  # wall time of one anchor: read-only call, send, wait for the receipt


class Anchorer:
    def __init__(self, directory: Path, identity: NodeIdentity, genesis: Genesis) -> None:
        self._dir = Path(directory)
        self._node_id = identity.node_id
        self._genesis = genesis
        # Read now so a bad chain.toml or keystore stops the node at start, not at round k.
        self.config = load_chain_config(self._dir)
        if self.config is None:
            self._account = derive_account(identity)
        else:
            self._account = chain_account(self._dir, identity, self.config)
            own = next((m.evm_address for m in genesis.members if m.node_id == self._node_id), "")
            if own and own.lower() != self._account.address.lower():
                log.warning(
                    "%s: anchoring account %s is not this member's genesis address %s; "
                    "the contract will refuse it",
                    identity.name,
                    self._account.address,
                    own,
                )
        self._chain: AnchorChain | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anchor")
        self.history: list[Anchored] = []

    @property
    def shared(self) -> bool:
        """Whether this node anchors on the consortium's shared chain (from chain.toml)."""
        return self.config is not None

    def should_anchor(self, author: str) -> bool:
        """On a shared chain only the round's leader (the entry's author) anchors its head."""
        return not self.shared or author == self._node_id

    def _members(self) -> list[str]:
        return [m.evm_address for m in self._genesis.members if m.evm_address]

    def _open(self) -> AnchorChain:
        if self._chain is not None:
            return self._chain
        if self.config is None:
            chain = AnchorChain.embedded(self._dir / CHAIN_DIR)
            if chain.contract_address is None:
                chain.deploy(self._members(), self._genesis.digest())
        else:
            chain = AnchorChain.connect(self.config.url, self.config.contract)
            # Anchoring into a contract that is not this consortium's would be wasted gas.
            problems = check_deployment(
                chain.members(),
                chain.genesis_digest(),
                chain.code_matches(),
                self._members(),
                self._genesis.digest(),
            )
            if problems:
                raise ChainError(f"contract {self.config.contract}: {problems[0]}")
        self._chain = chain
        return chain

    def _anchor_blocking(self, size: int, root: bytes) -> TxInfo:
        chain = self._open()
        t0 = time.perf_counter()
        tx = chain.anchor(self._account, size, root)
        self.history.append(Anchored(size, tx, time.perf_counter() - t0))
        return tx

    async def anchor(self, size: int, root: bytes) -> TxInfo:
        """Anchor (size, root); raises ChainError (e.g. "size must grow")."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._anchor_blocking, size, root)

    async def publish(self, label: str, size: int, root: bytes) -> None:
        """Anchor and log the outcome; never raises a ConsortiumError (the next anchor covers
        a failed one, since the contract keeps only growing sizes)."""
        try:
            tx = await self.anchor(size, root)
        except ConsortiumError as exc:
            if SUPERSEDED in str(exc):  # another member already anchored this size or later
                log.info("%s: head of size %d is already anchored: %s", label, size, exc)
            else:
                log.warning("%s: anchoring head of size %d failed: %s", label, size, exc)
            return
        log.info(
            "%s: anchored head of size %d (gas %d, block %d)", label, size, tx.gas_used, tx.block
        )

    def _close(self) -> None:
        if self._chain is not None:
            self._chain.close()
            self._chain = None

    def close(self) -> None:
        self._thread.submit(self._close).result()
        self._thread.shutdown()

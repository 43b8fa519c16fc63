"""`AnchorChain`: deploy the TreeHeadAnchor contract and anchor tree heads, over web3.

Two kinds of chain:

* `AnchorChain.embedded(state_dir)` runs py-evm in-process (web3's `EthereumTesterProvider`).
  eth-tester has no persistence, so every transaction we send is recorded (signed raw bytes and a
  receipt digest, see `txlog`) under `state_dir` and replayed into a fresh chain on open; replay
  checks each receipt against the record. Accounts are funded on demand from eth-tester's fixed
  genesis faucet, with recorded transactions like any other. One writer at a time (a lock file);
  `readonly=True` opens for auditing alongside it.
* `AnchorChain.connect(url)` talks to any Ethereum JSON-RPC node (anvil, hardhat, geth, Besu).

Transactions are signed locally with the node's own account and sent raw, with an explicit gas
limit (estimation would double the cost of each call). A real node does not return the revert
reason of a mined transaction, so `anchor` first runs the same call read-only: a revert there
(eth-tester's `TransactionFailed`, web3's `ContractLogicError`) becomes a `ChainError` carrying
the contract's message, e.g. "not a member" or "size must grow".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionFailed
from eth_typing import ChecksumAddress
from eth_utils.exceptions import ValidationError
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import ContractLogicError, Web3Exception
from web3.logs import DISCARD

from consortium.chain.accounts import checksum
from consortium.chain.contract import CompiledContract, compiled_contract
from consortium.chain.txlog import TxLog, receipt_digest
from consortium.core.errors import ChainError, ConsortiumError, IdentityError

#: Gas limit for one `anchor` call (it uses about 115k the first time, 100k after).
ANCHOR_GAS = 200_000
#: Page size of the contract's `heads(start, limit)` view.
PAGE = 256
PRIORITY_FEE_WEI = 10**9
#: The embedded chain tops an account up to this when it falls below a tenth of it.
EMBEDDED_FUNDING_WEI = 10 * 10**18
RECEIPT_TIMEOUT_S = 60.0
RECORD_FILE = "chain.sqlite"
LOCK_FILE = "chain.lock"


@dataclass(frozen=True)
class AnchoredHead:
    """A tree head as the contract holds it."""

    size: int
    root: bytes
    submitter: str


@dataclass(frozen=True)
class TxInfo:
    tx_hash: str
    gas_used: int
    block: int


@dataclass(frozen=True)
class AnchorTx:
    """An `Anchored` event: the head, and the block and transaction that anchored it."""

    head: AnchoredHead
    block: int
    tx_hash: str


@contextlib.contextmanager
def _chain_errors(what: str) -> Iterator[None]:
    """Turn library exceptions (reverts, unreachable node) into ChainError."""
    try:
        yield
    except ConsortiumError:
        raise
    except TransactionFailed as exc:  # eth-tester
        reason = _reason(str(exc.args[0] if exc.args else exc))
        raise ChainError(f"{what} reverted: {reason}") from exc
    except ContractLogicError as exc:  # real JSON-RPC nodes
        raise ChainError(f"{what} reverted: {_reason(str(exc.message or exc))}") from exc
    except (Web3Exception, ValidationError, OSError, ValueError) as exc:
        raise ChainError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _reason(message: str) -> str:
    for prefix in ("execution reverted: ", "execution reverted:"):
        if message.startswith(prefix):
            return message[len(prefix) :].strip()
    return message


class AnchorChain:
    """A connection to an EVM chain, bound to (at most) one TreeHeadAnchor contract."""

    def __init__(
        self,
        w3: Web3,
        *,
        description: str,
        contract_address: str | None = None,
        faucet: LocalAccount | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.w3 = w3
        self.description = description
        self._compiled: CompiledContract = compiled_contract(cache_dir)
        self._address: ChecksumAddress | None = None
        self._faucet = faucet
        self._funded: set[str] = set()
        self._record: TxLog | None = None
        self._receipts: list[Any] = []  # an embedded chain's, as replayed (see anchor_log)
        self._lock_fd: int | None = None
        self._readonly = False
        with _chain_errors(f"connecting to {description}"):
            self.chain_id = int(w3.eth.chain_id)
        if contract_address is not None:
            self.use(contract_address)

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str, contract_address: str | None = None) -> AnchorChain:
        """Any Ethereum JSON-RPC node over HTTP."""
        w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}))
        try:
            reachable = bool(w3.is_connected())
        except Exception:  # any transport failure means the same thing here
            reachable = False
        if not reachable:
            raise ChainError(f"cannot reach an Ethereum node at {url}; is it running?")
        return cls(w3, description=url, contract_address=contract_address)

    @classmethod
    def embedded(cls, state_dir: Path, *, readonly: bool = False) -> AnchorChain:
        """An in-process py-evm chain whose state lives in `state_dir` (replayed on open)."""
        state_dir = Path(state_dir)
        record_path = state_dir / RECORD_FILE
        if readonly and not record_path.exists():
            raise ChainError(f"no embedded chain in {state_dir}")
        state_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = None if readonly else _lock(state_dir / LOCK_FILE)
        backend = PyEVMBackend()  # fixed genesis; faucet keys are 0x…01, 0x…02, …
        w3 = Web3(EthereumTesterProvider(EthereumTester(backend)))
        faucet: LocalAccount = Account.from_key(backend.account_keys[0].to_bytes())
        record: TxLog | None = None
        try:
            # An auditor (read-only) compiles afresh rather than trust a cache in the run folder,
            # since `code_matches` compares the deployed code against it.
            chain = cls(
                w3,
                description=f"embedded chain in {state_dir}",
                faucet=faucet,
                cache_dir=None if readonly else state_dir,
            )
            record = TxLog(record_path, readonly=readonly)
            created = chain._replay(record)
            chain._record = record
            chain._lock_fd = lock_fd
            chain._readonly = readonly
            address = record.get_meta("contract")
            if record.meta_keys() not in ([], ["contract"]) or (address is None and created):
                raise ChainError(f"{record_path} was altered: its contract address is not named")
            if address is not None:
                try:
                    chain.use(address)
                except IdentityError as exc:
                    raise ChainError(f"{record_path} was altered: {exc}") from exc
                if address != chain._address:
                    raise ChainError(
                        f"{record_path} was altered: the contract address is not as `deploy` "
                        f"wrote it ({address})"
                    )
                # The record names the contract; replay says what it really deployed.
                if chain._address not in created:
                    raise ChainError(
                        f"{record_path} was altered: none of its transactions deployed the "
                        f"contract it names ({address})"
                    )
        except BaseException:
            if record is not None:
                record.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return chain

    def _replay(self, record: TxLog) -> list[ChecksumAddress]:
        """Replay the recorded transactions; return the contracts they created."""
        created: list[ChecksumAddress] = []
        for seq, raw, tx_hash, expected in record.entries():
            try:
                with _chain_errors(f"replaying transaction {seq} of {record.path}"):
                    sent = bytes(self.w3.eth.send_raw_transaction(raw))
                    # eth-tester mines synchronously: a receipt not there at once never comes
                    receipt = self.w3.eth.wait_for_transaction_receipt(HexBytes(sent), timeout=5)
            except ConsortiumError:
                raise
            except Exception as exc:
                # The recorded bytes are untrusted and reach rlp, eth-keys and py-evm, whose
                # refusals have no common type: any of them means the record was altered.
                raise ChainError(
                    f"{record.path} was altered: transaction {seq} does not replay "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            if sent != tx_hash or receipt_digest(receipt) != expected:
                raise ChainError(
                    f"{record.path} was altered: transaction {seq} replays differently "
                    "from how it was recorded"
                )
            if receipt.get("contractAddress"):
                created.append(checksum(str(receipt["contractAddress"])))
            self._receipts.append(receipt)
        return created

    def close(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> AnchorChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the contract --------------------------------------------------------------------------

    @property
    def contract_address(self) -> ChecksumAddress | None:
        return self._address

    def use(self, address: str) -> None:
        """Bind to an already deployed anchor contract."""
        self._address = checksum(address)

    def _contract(self) -> Any:
        return self.w3.eth.contract(address=self._bound(), abi=self._compiled.abi)

    def _bound(self) -> ChecksumAddress:
        if self._address is None:
            raise ChainError(f"no anchor contract deployed on {self.description}")
        return self._address

    def deploy(
        self,
        members: Sequence[str],
        genesis_digest: bytes,
        *,
        deployer: LocalAccount | None = None,
    ) -> ChecksumAddress:
        """Deploy a contract for `members` (EVM addresses) and bind to it; returns its address.

        Who deploys does not matter for safety (the auditor checks members, genesis digest and
        code); the embedded chain defaults to its faucet account.
        """
        if len(genesis_digest) != 32:
            raise ChainError(f"genesis digest must be 32 bytes, got {len(genesis_digest)}")
        sender = deployer or self._faucet
        if sender is None:
            raise ChainError("deploying to an external node needs a funded deployer account")
        addrs = [checksum(m) for m in members]
        factory = self.w3.eth.contract(abi=self._compiled.abi, bytecode=self._compiled.bytecode)
        with _chain_errors("deploying the anchor contract"):
            tx = factory.constructor(addrs, genesis_digest).build_transaction(
                {
                    "from": sender.address,
                    "gas": 0,
                    "nonce": 0,
                    "maxFeePerGas": 0,
                    "maxPriorityFeePerGas": 0,
                }
            )
            tx["gas"] = int(
                self.w3.eth.estimate_gas({"from": sender.address, "data": tx["data"]}) * 6 // 5
            )
        receipt = self._send(sender, {"data": tx["data"], "gas": tx["gas"]}, "deploying")
        address = checksum(str(receipt["contractAddress"]))
        self._address = address
        if self._record is not None:
            self._record.set_meta("contract", address)
        return address

    def anchor(self, account: LocalAccount, size: int, root: bytes) -> TxInfo:
        """Anchor tree head (size, root), sent by `account` (which must be a member)."""
        if len(root) != 32:
            raise ChainError(f"tree head root must be 32 bytes, got {len(root)}")
        if size < 0:
            raise ChainError(f"tree size must not be negative, got {size}")
        fn = self._contract().functions.anchor(size, root)
        what = f"anchoring tree head at size {size}"
        self._top_up(account.address)
        with _chain_errors(what):
            # Run it read-only first: this surfaces the revert reason before spending gas.
            fn.call({"from": account.address, "gas": ANCHOR_GAS})
            data = fn._encode_transaction_data()
        receipt = self._send(account, {"to": self._address, "data": data, "gas": ANCHOR_GAS}, what)
        return TxInfo(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            gas_used=int(receipt["gasUsed"]),
            block=int(receipt["blockNumber"]),
        )

    # -- reading -------------------------------------------------------------------------------

    def anchored_heads(self) -> list[AnchoredHead]:
        """Every anchored head, oldest first, read through view calls (one per 256 heads)."""
        c = self._contract()
        with _chain_errors("reading anchored heads"):
            count = int(c.functions.count().call())
            rows: list[Any] = []
            while len(rows) < count:
                rows.extend(c.functions.heads(len(rows), PAGE).call())
        return [AnchoredHead(int(s), bytes(r), checksum(str(a))) for s, r, a in rows[:count]]

    def anchor_log(self) -> list[AnchorTx]:
        """Every `Anchored` event of the contract with its block and transaction, oldest first.
        An embedded chain reads them from the receipts of its replay (eth-tester's log filter
        slows down with chain length); any other node answers a log query."""
        event = self._contract().events.Anchored()
        with _chain_errors("reading anchor events"):
            if self._record is not None:
                logs = [
                    log
                    for receipt in self._receipts
                    for log in event.process_receipt(receipt, errors=DISCARD)
                    if log["address"] == self._address
                ]
            else:
                logs = list(event.get_logs(from_block=0))
        return [
            AnchorTx(
                AnchoredHead(
                    int(log["args"]["size"]),
                    bytes(log["args"]["root"]),
                    checksum(str(log["args"]["submitter"])),
                ),
                int(log["blockNumber"]),
                "0x" + bytes(log["transactionHash"]).hex(),
            )
            for log in logs
        ]

    def latest(self) -> AnchoredHead | None:
        c = self._contract()
        with _chain_errors("reading the latest anchored head"):
            if int(c.functions.count().call()) == 0:
                return None
            s, r, a = c.functions.latest().call()
        return AnchoredHead(int(s), bytes(r), checksum(str(a)))

    def count(self) -> int:
        with _chain_errors("reading the anchored head count"):
            return int(self._contract().functions.count().call())

    def members(self) -> list[str]:
        c = self._contract()
        with _chain_errors("reading the member list"):
            n = int(c.functions.member_count().call())
            return [checksum(str(c.functions.members(i).call())) for i in range(n)]

    def genesis_digest(self) -> bytes:
        with _chain_errors("reading the genesis digest"):
            return bytes(self._contract().functions.genesis_digest().call())

    def code_matches(self) -> bool:
        """Whether the code at the bound address is exactly our compiled contract."""
        address = self._bound()
        with _chain_errors("reading contract code"):
            code = bytes(self.w3.eth.get_code(address))
        return code == bytes.fromhex(self._compiled.bytecode_runtime.removeprefix("0x"))

    # -- sending -------------------------------------------------------------------------------

    def fund(self, address: str, wei: int, *, funder: LocalAccount | None = None) -> TxInfo:
        """Send `wei` to `address` (from the embedded faucet unless `funder` is given)."""
        sender = funder or self._faucet
        if sender is None:
            raise ChainError("funding on an external node needs a funder account")
        receipt = self._send(
            sender, {"to": checksum(address), "value": wei, "gas": 21_000}, "funding", fund=False
        )
        return TxInfo(
            "0x" + bytes(receipt["transactionHash"]).hex(),
            int(receipt["gasUsed"]),
            int(receipt["blockNumber"]),
        )

    def _top_up(self, address: ChecksumAddress) -> None:
        if self._faucet is None or address in self._funded or address == self._faucet.address:
            return
        with _chain_errors("reading a balance"):
            balance = int(self.w3.eth.get_balance(address))
        if balance < EMBEDDED_FUNDING_WEI // 10:
            self.fund(address, EMBEDDED_FUNDING_WEI)
        self._funded.add(address)

    def _send(
        self, account: LocalAccount, tx: dict[str, Any], what: str, *, fund: bool = True
    ) -> Any:
        if self._readonly:
            raise ChainError(f"{self.description} is open read-only")
        if fund:
            self._top_up(account.address)
        with _chain_errors(what):
            base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
            full = {
                **tx,
                "chainId": self.chain_id,
                "nonce": int(self.w3.eth.get_transaction_count(account.address, "pending")),
                "maxPriorityFeePerGas": PRIORITY_FEE_WEI,
                "maxFeePerGas": 2 * base_fee + PRIORITY_FEE_WEI,
            }
            signed = account.sign_transaction(full)
            raw = bytes(signed.raw_transaction)
            tx_hash = self.w3.eth.send_raw_transaction(raw)
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.05
            )
        if self._record is not None:  # mined, so part of the chain even if it reverted
            self._record.append(raw, bytes(tx_hash), receipt_digest(receipt))
            self._receipts.append(receipt)
        if int(receipt["status"]) != 1:
            raise ChainError(f"{what}: transaction {bytes(tx_hash).hex()} reverted on chain")
        return receipt


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ChainError(
            f"the embedded chain in {path.parent} is open in another process; "
            "open it read-only to inspect it"
        ) from exc
    return fd

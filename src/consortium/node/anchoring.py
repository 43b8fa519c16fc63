"""Anchor final tree heads on this node's embedded EVM chain (state in DIR/chain).

Blocking (web3 + py-evm, SQLite): every chain call runs on one dedicated worker thread (SQLite
objects belong to the thread that made them), awaited by the node's event loop. One chain per node
folder, so each folder stays auditable on its own; the contract's allow-list is every member's
EVM address from genesis, and its genesis digest binds it to this consortium.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from consortium.chain.accounts import derive_account
from consortium.chain.client import AnchorChain, TxInfo
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity
from consortium.core.layout import CHAIN_DIR


class Anchorer:
    def __init__(self, directory: Path, identity: NodeIdentity, genesis: Genesis) -> None:
        self._dir = Path(directory) / CHAIN_DIR
        self._account = derive_account(identity)
        self._genesis = genesis
        self._chain: AnchorChain | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anchor")

    def _open(self) -> AnchorChain:
        if self._chain is None:
            chain = AnchorChain.embedded(self._dir)
            if chain.contract_address is None:
                members = [m.evm_address for m in self._genesis.members if m.evm_address]
                chain.deploy(members, self._genesis.digest())
            self._chain = chain
        return self._chain

    async def anchor(self, size: int, root: bytes) -> TxInfo:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, lambda: self._open().anchor(self._account, size, root)
        )

    def _close(self) -> None:
        if self._chain is not None:
            self._chain.close()
            self._chain = None

    def close(self) -> None:
        self._thread.submit(self._close).result()
        self._thread.shutdown()

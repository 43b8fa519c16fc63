"""Anchoring against a real Ethereum JSON-RPC node: anvil (Foundry) started on 127.0.0.1.

Install it (44 MB, no postinstall needed) with:
    npm install --prefix .tmp/anvil --no-audit --no-fund @foundry-rs/anvil@1.7.1
or put `anvil` on PATH, or point CONSORTIUM_ANVIL at the binary. Skipped when none is found.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from consortium.chain.accounts import derive_account
from consortium.chain.check import check_anchored, check_deployment
from consortium.chain.client import AnchorChain, AnchoredHead
from consortium.core.errors import ChainError
from consortium.core.identity import NodeIdentity

REPO = Path(__file__).resolve().parents[1]
#: anvil's first development account (public, well known: funded with 10000 ETH at its genesis).
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
GENESIS = hashlib.sha256(b"anvil genesis").digest()

pytestmark = pytest.mark.slow


def find_anvil() -> str | None:
    if env := os.environ.get("CONSORTIUM_ANVIL"):
        if not os.access(env, os.X_OK):
            pytest.fail(f"CONSORTIUM_ANVIL={env} is not an executable file")
        return env
    if on_path := shutil.which("anvil"):
        return on_path
    # the native binary npm puts in the platform package (avoids the node wrapper's start-up)
    native = sorted((REPO / ".tmp/anvil/node_modules/@foundry-rs").glob("anvil-*/bin/anvil"))
    return str(native[0]) if native else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    binary = find_anvil()
    if binary is None:
        pytest.skip(
            "anvil not installed: npm install --prefix .tmp/anvil @foundry-rs/anvil@1.7.1 "
            "(or set CONSORTIUM_ANVIL)"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"anvil exited with {proc.returncode}: {err[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("anvil did not open its port within 30 s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def members(anvil_url: str) -> list[LocalAccount]:
    accounts = [derive_account(NodeIdentity.generate(f"node{i}")) for i in range(3)]
    chain = AnchorChain.connect(anvil_url)
    dev = Account.from_key(ANVIL_DEV_KEY)
    for acct in accounts:
        chain.fund(acct.address, 10**18, funder=dev)
    return accounts


def root(i: int) -> bytes:
    return hashlib.sha256(b"root %d" % i).digest()


def test_anchor_on_a_real_node(anvil_url: str, members: list[LocalAccount]) -> None:
    chain = AnchorChain.connect(anvil_url)
    address = chain.deploy(
        [m.address for m in members], GENESIS, deployer=Account.from_key(ANVIL_DEV_KEY)
    )
    assert chain.code_matches()
    infos = [chain.anchor(members[i], size, root(size)) for i, size in enumerate((2, 5, 8))]
    assert all(90_000 < i.gas_used < 200_000 for i in infos)
    assert infos[0].block < infos[1].block < infos[2].block

    # reverts from a real node arrive as ContractLogicError; both map to ChainError
    with pytest.raises(ChainError, match="size must grow"):
        chain.anchor(members[0], 8, root(8))
    with pytest.raises(ChainError, match="not a member"):
        chain.anchor(Account.from_key(ANVIL_DEV_KEY), 9, root(9))

    # a second client, e.g. the auditor, binds to the deployed address
    auditor = AnchorChain.connect(anvil_url, contract_address=address)
    heads = auditor.anchored_heads()
    assert heads == [
        AnchoredHead(2, root(2), members[0].address),
        AnchoredHead(5, root(5), members[1].address),
        AnchoredHead(8, root(8), members[2].address),
    ]
    assert auditor.latest() == heads[-1]
    assert (
        check_deployment(
            auditor.members(),
            auditor.genesis_digest(),
            auditor.code_matches(),
            [m.address for m in members],
            GENESIS,
        )
        == []
    )
    # a local log whose root at size 5 differs was rewritten after anchoring
    local = {2: root(2), 5: root(55), 8: root(8)}
    problems = check_anchored(heads, 8, local.__getitem__, lambda a, b: True)
    assert problems and "does not extend anchored head at size 5" in problems[0]


def test_external_node_needs_explicit_deployer(anvil_url: str) -> None:
    chain = AnchorChain.connect(anvil_url)
    with pytest.raises(ChainError, match="deployer"):
        chain.deploy([Account.create().address], GENESIS)
    with pytest.raises(ChainError, match="funder"):
        chain.fund(Account.create().address, 1)

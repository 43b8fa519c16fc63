"""Anchoring against a real Ethereum JSON-RPC node: anvil (Foundry) started on 127.0.0.1.

How anvil is found and started: tests/anvil_support.py. Skipped when none is found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from consortium.chain.accounts import derive_account
from consortium.chain.check import check_anchored, check_deployment
from consortium.chain.client import AnchorChain, AnchoredHead
from consortium.core.errors import ChainError
from consortium.core.identity import NodeIdentity
from tests.anvil_support import ANVIL_DEV_KEY, running_anvil

GENESIS = hashlib.sha256(b"anvil genesis").digest()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    with running_anvil() as url:
        yield url


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

"""Anchoring cosigned ledger tree heads on an EVM chain (Vyper contract + web3)."""

from consortium.chain.accounts import (
    account_from_keystore,
    bind_account,
    derive_account,
    verify_account_binding,
)
from consortium.chain.check import check_anchored, check_deployment
from consortium.chain.client import AnchorChain, AnchoredHead, AnchorTx, TxInfo
from consortium.chain.contract import CompiledContract, compiled_contract

__all__ = [
    "AnchorChain",
    "AnchorTx",
    "AnchoredHead",
    "CompiledContract",
    "TxInfo",
    "account_from_keystore",
    "bind_account",
    "check_anchored",
    "check_deployment",
    "compiled_contract",
    "derive_account",
    "verify_account_binding",
]

"""Ethereum accounts for nodes, derived from their Ed25519 identities (no extra key file).

A node's account key is HKDF-SHA256 over its identity key's signature of a fixed, domain-separated
message. Ed25519 signatures are deterministic (RFC 8032), so the same identity always yields the
same account, and only the holder of the identity key can compute it. Because the address cannot be
computed from the public key alone, a node publishes it with a *binding*: a signature by the
identity key over the address, which anyone can check against the genesis member list.

An operator who prefers a separate funded key can load it from a standard Ethereum keystore
file instead (`account_from_keystore`). Key material is never logged or put in an exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import is_checksum_address, to_checksum_address

from consortium.core.encoding import Domain
from consortium.core.errors import IdentityError, SignatureError
from consortium.core.identity import NodeIdentity, evm_binding_body, verify_signature

#: The message a node signs to derive its account key. Changing it changes every address.
DERIVATION_MESSAGE: dict[str, Any] = {"purpose": "evm-account-key", "curve": "secp256k1", "v": 1}
_SALT = b"consortium/v1/evm-account"
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def derive_account(identity: NodeIdentity) -> LocalAccount:
    """The node's Ethereum account: the same identity always gives the same account."""
    secret = identity.sign(Domain.CHAIN_KEY, DERIVATION_MESSAGE)
    for counter in range(256):  # a draw outside [1, n) has probability ~2^-128; retry anyway
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=_SALT, info=b"secp256k1/%d" % counter
        ).derive(secret)
        if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
            account: LocalAccount = Account.from_key(key)
            return account
    raise IdentityError("could not derive a secp256k1 key from the identity")  # pragma: no cover


def account_from_keystore(path: Path, passphrase: str) -> LocalAccount:
    """Load an account from a standard (geth/web3 v3) encrypted keystore JSON file."""
    try:
        keyfile = json.loads(Path(path).read_text())
        key = Account.decrypt(keyfile, passphrase)
    except FileNotFoundError as exc:
        raise IdentityError(f"keystore file not found: {path}") from exc
    except ValueError as exc:  # wrong MAC (passphrase) or malformed JSON; both are ValueErrors
        raise IdentityError(
            f"cannot decrypt keystore {path}: wrong passphrase or corrupt file"
        ) from exc
    except (OSError, KeyError, TypeError) as exc:
        raise IdentityError(f"cannot read keystore {path}: {type(exc).__name__}") from exc
    account: LocalAccount = Account.from_key(key)
    return account


def bind_account(identity: NodeIdentity, address: str) -> bytes:
    """The identity key's signature vouching that `address` is this node's anchoring account."""
    return identity.sign(
        Domain.CHAIN_ACCOUNT, evm_binding_body(identity.node_id, checksum(address))
    )


def verify_account_binding(public_key: bytes, node_id: str, address: str, signature: bytes) -> None:
    """Raise IdentityError unless `signature` binds `address` to the node with `public_key`."""
    try:
        verify_signature(
            public_key,
            Domain.CHAIN_ACCOUNT,
            evm_binding_body(node_id, checksum(address)),
            signature,
        )
    except SignatureError as exc:
        raise IdentityError(f"EVM address {address} is not bound to node {node_id}") from exc


def checksum(address: str) -> ChecksumAddress:
    """The EIP-55 form of `address`, refusing anything that is not a 20-byte hex address."""
    try:
        out: ChecksumAddress = to_checksum_address(address)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"not an Ethereum address: {address!r}") from exc
    if not is_checksum_address(out):  # pragma: no cover - to_checksum_address guarantees this
        raise IdentityError(f"not an Ethereum address: {address!r}")
    return out

"""Passphrase-encrypted private key files (`consortium-key/v1`).

A sealed key file is one small JSON document:

    {"format": "consortium-key/v1", "key": "node.key",
     "kdf": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": "<base64>",
     "aead": "chacha20poly1305", "nonce": "<base64>", "ciphertext": "<base64>"}

The ciphertext is the key's PKCS#8 DER sealed with ChaCha20-Poly1305 under a 32-byte key that
scrypt derives from the passphrase. The associated data is the canonical dag-cbor of every other
field, so no header field can be altered and a file cannot be passed off as another key (`key`
names which one it is: node.key or tls.key). Reading bounds the scrypt cost before deriving
anything: a hostile file cannot make us allocate gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from consortium.core.encoding import encode
from consortium.core.errors import IdentityError

FORMAT = "consortium-key/v1"
KDF = "scrypt"
AEAD = "chacha20poly1305"
SALT_BYTES = 16
NONCE_BYTES = 12
#: A sealed key file is a few hundred bytes; anything larger is not one of ours.
MAX_FILE_BYTES = 16 * 1024
#: scrypt needs 128·r·n bytes: refuse a header asking for more than 256 MiB (twice the default).
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
MAX_R = 32
MAX_P = 4
_FIELDS = frozenset({"format", "key", "kdf", "n", "r", "p", "salt", "aead", "nonce", "ciphertext"})


@dataclass(frozen=True)
class ScryptCost:
    n: int
    r: int
    p: int

    def check(self) -> str | None:
        """Why these parameters are refused, or None if they are acceptable."""
        n, r, p = self.n, self.r, self.p
        if n < 2 or n & (n - 1):
            return f"n={n} is not a power of two >= 2"
        if not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
            return f"r={r}, p={p} outside 1..{MAX_R}, 1..{MAX_P}"
        if 128 * r * n > MAX_SCRYPT_MEMORY:
            return (
                f"n={n}, r={r} would need {128 * r * n >> 20} MiB (limit {MAX_SCRYPT_MEMORY >> 20})"
            )
        return None


#: n=2**17, r=8 (128 MiB, about half a second) is the cost OWASP recommends for scrypt password
#: storage; keys are decrypted once per process start, so a slow derivation costs operators
#: nothing and makes each guess of an offline attacker expensive.
DEFAULT_COST = ScryptCost(n=2**17, r=8, p=1)
#: The cost new files are sealed with. Tests lower it (monkeypatch) to stay fast; nothing else may.
WRITE_COST = DEFAULT_COST


def is_sealed(data: bytes) -> bool:
    """Whether `data` looks like a sealed key file rather than PEM."""
    return data.lstrip().startswith(b"{")


def seal(der: bytes, passphrase: str, key_name: str, *, cost: ScryptCost | None = None) -> bytes:
    """Encrypt a PKCS#8 DER private key as a `consortium-key/v1` document."""
    if not passphrase:
        raise IdentityError("an empty passphrase does not encrypt anything")
    cost = cost or WRITE_COST
    if (why := cost.check()) is not None:
        raise IdentityError(f"scrypt parameters refused: {why}")
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header: dict[str, Any] = {
        "format": FORMAT,
        "key": key_name,
        "kdf": KDF,
        "n": cost.n,
        "r": cost.r,
        "p": cost.p,
        "salt": _b64(salt),
        "aead": AEAD,
        "nonce": _b64(nonce),
    }
    key = _derive(passphrase, salt, cost)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, der, encode(header))
    return (json.dumps({**header, "ciphertext": _b64(ciphertext)}, indent=1) + "\n").encode()


def unseal(data: bytes, passphrase: str, key_name: str, path: Path) -> bytes:
    """The PKCS#8 DER inside a sealed file; IdentityError (naming `path`) if anything is off."""
    if len(data) > MAX_FILE_BYTES:
        raise IdentityError(f"{path}: too large to be a key file")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise IdentityError(f"{path}: malformed key file: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise IdentityError(f"{path}: malformed key file: expected the fields {sorted(_FIELDS)}")
    if doc["format"] != FORMAT or doc["kdf"] != KDF or doc["aead"] != AEAD:
        raise IdentityError(
            f"{path}: unsupported key file (format {doc['format']!r}, kdf {doc['kdf']!r}, "
            f"aead {doc['aead']!r}); this version reads {FORMAT} with {KDF} and {AEAD}"
        )
    if doc["key"] != key_name:
        raise IdentityError(
            f"{path} holds {doc['key']!r}, not {key_name!r}: were the key files swapped?"
        )
    if not all(type(doc[f]) is int for f in ("n", "r", "p")):
        raise IdentityError(f"{path}: malformed key file: n, r and p must be integers")
    cost = ScryptCost(doc["n"], doc["r"], doc["p"])
    if (why := cost.check()) is not None:
        raise IdentityError(f"{path}: scrypt parameters refused: {why}")
    salt = _unb64(doc["salt"], path, "salt")
    nonce = _unb64(doc["nonce"], path, "nonce")
    ciphertext = _unb64(doc["ciphertext"], path, "ciphertext")
    if not SALT_BYTES <= len(salt) <= 64 or len(nonce) != NONCE_BYTES:
        raise IdentityError(f"{path}: malformed key file: bad salt or nonce length")
    header = {k: v for k, v in doc.items() if k != "ciphertext"}
    try:
        return ChaCha20Poly1305(_derive(passphrase, salt, cost)).decrypt(
            nonce, ciphertext, encode(header)
        )
    except InvalidTag:
        raise IdentityError(
            f"cannot decrypt {path}: wrong passphrase, or the file was altered"
        ) from None


def _derive(passphrase: str, salt: bytes, cost: ScryptCost) -> bytes:
    return Scrypt(salt=salt, length=32, n=cost.n, r=cost.r, p=cost.p).derive(passphrase.encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, path: Path, field: str) -> bytes:
    if not isinstance(value, str):
        raise IdentityError(f"{path}: malformed key file: {field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{path}: malformed key file: {field} is not valid base64") from None

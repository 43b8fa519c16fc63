"""Node identities: an Ed25519 signing key, its printable NodeId, and a TLS key bound to it.

gRPC's TLS stack refuses Ed25519 certificates, so each node also holds an ECDSA P-256 key for
mutual TLS; the Ed25519 identity signs that key's public bytes (as libp2p's TLS handshake does),
and peers check the binding on every connection.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import json
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from multiformats import CID, multihash

from consortium.core import keyfile
from consortium.core.encoding import Domain, signing_payload
from consortium.core.errors import IdentityError, SignatureError
from consortium.core.files import atomic_write

KEY_FILE = "node.key"
TLS_KEY_FILE = "tls.key"
PUBLIC_FILE = "node.pub"
#: Where the CLI reads the passphrase of encrypted keys (never from the command line).
PASSPHRASE_ENV = "CONSORTIUM_PASSPHRASE"
SIGNATURE_BYTES = 64
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

log = logging.getLogger(__name__)


def node_id_for(public_key: bytes) -> str:
    """The printable id of a node: CIDv1 (libp2p-key codec) of the sha2-256 of its public key."""
    if len(public_key) != 32:
        raise IdentityError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return str(CID("base32", 1, "libp2p-key", multihash.digest(public_key, "sha2-256")))


def verify_signature(
    public_key: bytes, domain: Domain, obj: Any, signature: bytes, consortium: bytes = b""
) -> None:
    """Raise SignatureError unless `signature` by `public_key` covers `obj` in `domain` (and, for
    a consortium-bound domain, in the consortium whose genesis digest is `consortium`)."""
    # Built outside the try: a missing or misplaced digest is a programming error, not a refusal.
    verify_payload(public_key, domain, signing_payload(domain, obj, consortium), signature)


def verify_payload(public_key: bytes, domain: Domain, payload: bytes, signature: bytes) -> None:
    """`verify_signature` on a signing payload already built (`signing_payload`): one statement
    signed by many members is encoded once."""
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"signature is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"invalid {domain.value} signature") from exc


def is_valid_signature(
    public_key: bytes, domain: Domain, obj: Any, signature: bytes, consortium: bytes = b""
) -> bool:
    try:
        verify_signature(public_key, domain, obj, signature, consortium)
    except SignatureError:
        return False
    return True


def valid_signatures(
    keys: Mapping[str, bytes],
    domain: Domain,
    obj: Any,
    signatures: Mapping[str, bytes],
    consortium: bytes = b"",
) -> dict[str, bytes]:
    """The signatures on `obj` (signer -> signature) that verify under the signer's key in
    `keys`; signers without a key are dropped. The statement is encoded once for all of them
    (a quorum of a 1000-member consortium cosigns one head)."""
    payload = signing_payload(domain, obj, consortium)
    valid = {}
    for signer, signature in signatures.items():
        key = keys.get(signer)
        if key is None:
            continue
        try:
            verify_payload(key, domain, payload, signature)
        except SignatureError:
            continue
        valid[signer] = signature
    return valid


@dataclass(frozen=True)
class PublicIdentity:
    """What a node publishes about itself (`node.pub`): enough to be listed in a genesis."""

    name: str
    public_key: bytes
    address: str
    tls_cert_pem: str
    tls_binding: bytes
    #: The node's EVM account for anchoring (optional) and the identity key's signature on it.
    evm_address: str = ""
    evm_binding: bytes = b""
    #: The node's X25519 box key (shares of the beacon's key are encrypted to it at genesis) and
    #: the identity key's signature on it.
    box_key: bytes = b""
    box_binding: bytes = b""

    @functools.cached_property
    def node_id(self) -> str:
        # Cached: building a CID object costs milliseconds in multiformats' type checks.
        return node_id_for(self.public_key)

    def binding_body(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "tls_public_key": tls_public_key_der(self.tls_cert_pem)}

    def verify_binding(self) -> None:
        """Check that the identity key vouches for the TLS certificate's key."""
        try:
            verify_signature(
                self.public_key, Domain.TLS_BINDING, self.binding_body(), self.tls_binding
            )
        except SignatureError as exc:
            raise IdentityError(
                f"TLS certificate of {self.name} ({self.node_id}) is not bound to its identity key"
            ) from exc

    def verify_evm_binding(self) -> None:
        """Check that the identity key vouches for the EVM address (if one is published)."""
        if not self.evm_address and not self.evm_binding:
            return
        try:
            verify_signature(
                self.public_key,
                Domain.CHAIN_ACCOUNT,
                evm_binding_body(self.node_id, self.evm_address),
                self.evm_binding,
            )
        except SignatureError as exc:
            raise IdentityError(
                f"EVM address {self.evm_address} of {self.name} is not bound to its identity key"
            ) from exc

    def verify_box_binding(self) -> None:
        """Check that the identity key vouches for the box key (if one is published)."""
        if not self.box_key and not self.box_binding:
            return
        try:
            verify_signature(
                self.public_key,
                Domain.BOX_KEY,
                box_binding_body(self.node_id, self.box_key),
                self.box_binding,
            )
        except SignatureError as exc:
            raise IdentityError(
                f"box key of {self.name} ({self.node_id}) is not bound to its identity key"
            ) from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": self.node_id,
            "public_key": self.public_key.hex(),
            "address": self.address,
            "tls_cert": self.tls_cert_pem,
            "tls_binding": self.tls_binding.hex(),
            "evm_address": self.evm_address,
            "evm_binding": self.evm_binding.hex(),
            "box_key": self.box_key.hex(),
            "box_binding": self.box_binding.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> PublicIdentity:
        try:
            ident = cls(
                name=str(data["name"]),
                public_key=bytes.fromhex(data["public_key"]),
                address=str(data["address"]),
                tls_cert_pem=str(data["tls_cert"]),
                tls_binding=bytes.fromhex(data["tls_binding"]),
                evm_address=str(data.get("evm_address", "")),
                evm_binding=bytes.fromhex(data.get("evm_binding", "")),
                box_key=bytes.fromhex(data.get("box_key", "")),
                box_binding=bytes.fromhex(data.get("box_binding", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityError(f"malformed public identity: {exc}") from exc
        if "node_id" in data and data["node_id"] != ident.node_id:
            raise IdentityError(f"node_id of {ident.name} does not match its public key")
        ident.verify_binding()
        ident.verify_evm_binding()
        ident.verify_box_binding()
        return ident

    @classmethod
    def load(cls, path: Path) -> PublicIdentity:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise IdentityError(f"public identity file not found: {path}") from exc
        except (OSError, ValueError) as exc:
            raise IdentityError(f"cannot read public identity {path}: {exc}") from exc
        return cls.from_json(data)


def evm_binding_body(node_id: str, evm_address: str) -> dict[str, Any]:
    """What a node's identity key signs (domain chain-account) to publish its EVM address."""
    return {"node_id": node_id, "evm_address": evm_address}


def box_binding_body(node_id: str, box_key: bytes) -> dict[str, Any]:
    """What a node's identity key signs (domain box-key) to publish its X25519 box key."""
    return {"node_id": node_id, "box_key": box_key}


def tls_public_key_der(cert_pem: str) -> bytes:
    # The certificate's key is parsed lazily: a damaged key inside a well-formed certificate
    # raises here ("Invalid key", an unsupported curve), so both parses are guarded.
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"malformed TLS certificate: {exc}") from exc


class NodeIdentity:
    """A node's private keys. Never logged, never written without 0600 permissions."""

    def __init__(
        self,
        name: str,
        signing_key: Ed25519PrivateKey,
        tls_key: ec.EllipticCurvePrivateKey,
        tls_cert_pem: str,
        address: str,
        evm_address: str = "",
    ) -> None:
        self.name = name
        #: EVM account published in node.pub (set by `node init`; derived from the identity key).
        self.evm_address = evm_address
        self._signing_key = signing_key
        self._tls_key = tls_key
        self.tls_cert_pem = tls_cert_pem
        self.address = address
        self.public_key = signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = node_id_for(self.public_key)

    def __repr__(self) -> str:  # never show key material
        return f"NodeIdentity(name={self.name!r}, node_id={self.node_id!r})"

    @classmethod
    def generate(
        cls, name: str, address: str = "127.0.0.1:0", *, seed: bytes | None = None
    ) -> NodeIdentity:
        """A fresh identity; with `seed`, a reproducible one (simulations and tests only)."""
        if seed is None:
            signing_key = Ed25519PrivateKey.generate()
            tls_key = ec.generate_private_key(ec.SECP256R1())
        else:
            signing_key = Ed25519PrivateKey.from_private_bytes(
                hashlib.sha256(b"ed25519/" + seed).digest()
            )
            scalar = int.from_bytes(hashlib.sha256(b"p256/" + seed).digest(), "big")
            tls_key = ec.derive_private_key(scalar % (_P256_ORDER - 1) + 1, ec.SECP256R1())
        public = signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        cert = _self_signed_cert(tls_key, node_id_for(public), address, fixed=seed is not None)
        return cls(name, signing_key, tls_key, cert, address)

    def sign(self, domain: Domain, obj: Any, consortium: bytes = b"") -> bytes:
        """Sign `obj` in `domain`; consortium-bound domains need the genesis digest."""
        return self._signing_key.sign(signing_payload(domain, obj, consortium))

    def sign_payload(self, payload: bytes) -> bytes:
        """Sign a payload `signing_payload` already built (one statement many members sign)."""
        return self._signing_key.sign(payload)

    def public(self) -> PublicIdentity:
        unbound = PublicIdentity(self.name, self.public_key, self.address, self.tls_cert_pem, b"")
        evm_binding = (
            self.sign(Domain.CHAIN_ACCOUNT, evm_binding_body(self.node_id, self.evm_address))
            if self.evm_address
            else b""
        )
        return PublicIdentity(
            self.name,
            self.public_key,
            self.address,
            self.tls_cert_pem,
            self.sign(Domain.TLS_BINDING, unbound.binding_body()),
            self.evm_address,
            evm_binding,
            self.box_public_key,
            self.sign(Domain.BOX_KEY, box_binding_body(self.node_id, self.box_public_key)),
        )

    def box_private_key(self) -> X25519PrivateKey:
        """The X25519 key others encrypt to (the beacon's key shares at genesis). Derived from the
        identity key with HKDF, so it needs no key file of its own and no new backup."""
        raw = self._signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        seed = HKDF(hashes.SHA256(), 32, None, b"consortium/box-key/v1").derive(raw)
        return X25519PrivateKey.from_private_bytes(seed)

    @functools.cached_property
    def box_public_key(self) -> bytes:
        return self.box_private_key().public_key().public_bytes_raw()

    def tls_key_pem(self) -> bytes:
        return self._tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # -- files ---------------------------------------------------------------------------------

    def save(self, directory: Path, passphrase: str | None = None) -> None:
        """Write node.key and tls.key (0600, maybe encrypted) and node.pub; never overwrite."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for fname in (KEY_FILE, TLS_KEY_FILE, PUBLIC_FILE):
            if (directory / fname).exists():
                raise IdentityError(
                    f"{directory / fname} already exists; refusing to overwrite a key"
                )
        meta = json.dumps(
            {"name": self.name, "address": self.address, "tls_cert": self.tls_cert_pem}
        )
        for fname, data in _key_files(self._signing_key, self._tls_key, passphrase).items():
            _write_private(directory / fname, data)
        atomic_write(directory / "node.json", meta.encode())
        atomic_write(
            directory / PUBLIC_FILE, json.dumps(self.public().to_json(), indent=2).encode()
        )

    @classmethod
    def load(cls, directory: Path, passphrase: str | None = None) -> NodeIdentity:
        directory = Path(directory)
        signing_key, tls_key = _load_keys(directory, [passphrase or None], strict=True)
        try:
            meta = json.loads((directory / "node.json").read_text())
            return cls(
                meta["name"],
                signing_key,
                tls_key,
                meta["tls_cert"],
                meta["address"],
                meta.get("evm_address", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"cannot read {directory / 'node.json'}: {exc}") from exc


def keys_encrypted(directory: Path) -> bool:
    """Whether either key file in `directory` needs a passphrase (False if there are none)."""
    for fname in (KEY_FILE, TLS_KEY_FILE):
        try:
            with (Path(directory) / fname).open("rb") as fh:
                head = fh.read(64)
        except OSError:
            continue
        if keyfile.is_sealed(head) or head.startswith(_LEGACY_PEM):
            return True
    return False


def reencrypt_keys(directory: Path, passphrase: str | None, new_passphrase: str | None) -> None:
    """Rewrite node.key and tls.key in the current format under `new_passphrase` (None: plain).

    Each file is replaced atomically, but two files cannot be replaced together: if a crash falls
    between them, one file is already under the new passphrase. So each file may also open with
    the new passphrase (or be plain), and running the same command again finishes the job.
    """
    directory = Path(directory)
    candidates = list(dict.fromkeys([passphrase or None, new_passphrase or None]))
    signing_key, tls_key = _load_keys(directory, candidates, strict=False)
    for fname, data in _key_files(signing_key, tls_key, new_passphrase).items():  # both first
        _write_private(directory / fname, data)


def _key_files(
    signing_key: Ed25519PrivateKey, tls_key: ec.EllipticCurvePrivateKey, passphrase: str | None
) -> dict[str, bytes]:
    """node.key and tls.key: sealed (`core.keyfile`) with a passphrase, else PKCS#8 PEM."""
    keys: dict[str, PrivateKeyTypes] = {KEY_FILE: signing_key, TLS_KEY_FILE: tls_key}
    if not passphrase:
        return {
            name: key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for name, key in keys.items()
        }
    return {
        name: keyfile.seal(
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            passphrase,
            name,
        )
        for name, key in keys.items()
    }


_LEGACY_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PLAIN_PEM = b"-----BEGIN PRIVATE KEY-----"


def _load_keys(
    directory: Path, candidates: list[str | None], *, strict: bool
) -> tuple[Ed25519PrivateKey, ec.EllipticCurvePrivateKey]:
    """Both private keys, each opened with the first candidate passphrase that works."""
    keys: list[PrivateKeyTypes] = []
    for fname in (KEY_FILE, TLS_KEY_FILE):
        path = directory / fname
        if not path.exists():
            if fname == KEY_FILE:
                raise IdentityError(f"no node key in {directory}; run `consortium node init` first")
            raise IdentityError(f"{path} is missing")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise IdentityError(f"{path} has permissions {oct(mode)}; run chmod 600 on it")
        try:
            with path.open("rb") as fh:
                data = fh.read(keyfile.MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise IdentityError(f"cannot read {path}: {exc}") from exc
        first: IdentityError | None = None
        for passphrase in candidates:
            try:
                keys.append(_read_key(path, data, passphrase, strict=strict))
                break
            except IdentityError as exc:
                first = first or exc
        else:
            assert first is not None
            raise first
    signing_key, tls_key = keys
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise IdentityError(f"{directory / KEY_FILE} does not hold an Ed25519 identity key")
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{directory / TLS_KEY_FILE} does not hold an ECDSA TLS key")
    return signing_key, tls_key


def _read_key(path: Path, data: bytes, passphrase: str | None, *, strict: bool) -> PrivateKeyTypes:
    """One key file: sealed (current), legacy PBKDF2-encrypted PEM, or plain PEM."""
    encrypted = keyfile.is_sealed(data) or data.startswith(_LEGACY_PEM)
    if encrypted and passphrase is None:
        raise IdentityError(f"{path} is encrypted: set {PASSPHRASE_ENV} to its passphrase")
    if not encrypted and passphrase is not None and strict:
        raise IdentityError(f"{path} is not encrypted, but a passphrase was given")
    try:
        if keyfile.is_sealed(data):
            assert passphrase is not None
            der = keyfile.unseal(data, passphrase, path.name, path)
            return serialization.load_der_private_key(der, None)
        if data.startswith(_LEGACY_PEM):
            assert passphrase is not None
            key = serialization.load_pem_private_key(data, passphrase.encode())
            log.warning(
                "%s uses the old PBKDF2 key format: run `consortium node reencrypt --dir %s`",
                path,
                path.parent,
            )
            return key
        if data.startswith(_PLAIN_PEM):
            return serialization.load_pem_private_key(data, None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        why = "wrong passphrase or corrupt key" if encrypted else "corrupt key"
        raise IdentityError(f"cannot read {path}: {why}") from exc
    raise IdentityError(f"{path} is not a key file: expected {keyfile.FORMAT} or PKCS#8 PEM")


def _self_signed_cert(
    key: ec.EllipticCurvePrivateKey, node_id: str, address: str, *, fixed: bool = False
) -> str:
    host = address.rsplit(":", 1)[0] or "127.0.0.1"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id[:64])])
    # The node id (a 59-character base32 CID, a valid DNS label) is a SAN so a client can pin the
    # exact peer it dials with ssl_target_name_override=node_id.
    alt: list[x509.GeneralName] = [x509.DNSName(node_id), x509.DNSName("localhost")]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt.append(x509.DNSName(host))
    if host != "127.0.0.1":
        alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = (
        datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        if fixed
        else datetime.datetime.now(datetime.UTC)
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1 if fixed else x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=fixed)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o600)

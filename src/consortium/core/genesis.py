"""The genesis manifest: who the members are, the quorum, and the purposes data may be used for.

The manifest body is signed by every member (domain `genesis`); it becomes entry 0 of the ledger.
On disk it is JSON (`genesis.json`) so operators can read it; what is signed is the canonical
dag-cbor encoding of the body, so JSON formatting never matters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consortium.core.encoding import Domain, digest
from consortium.core.errors import GenesisError, IdentityError, SignatureError
from consortium.core.files import atomic_write
from consortium.core.identity import NodeIdentity, PublicIdentity, verify_signature

GENESIS_FILE = "genesis.json"
MANIFEST_VERSION = 1
_SPLIT = object()  # separates members from purposes in the digest cache's key


def _field(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """`obj[key]` if `obj` is a map holding a value of `kind` there; else GenesisError."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise GenesisError(f"malformed genesis body: {key!r} is missing or of the wrong type")
    return value


def quorum_for(n: int) -> int:
    """Cosignatures needed for finality: ceil(2n/3)."""
    return math.ceil(2 * n / 3)


@dataclass(frozen=True)
class Purpose:
    """A purpose data may be used for, with its differential-privacy budget (epsilon, delta)."""

    name: str
    epsilon: float | None = None
    delta: float | None = None

    def to_body(self) -> dict[str, Any]:
        return {"name": self.name, "epsilon": self.epsilon, "delta": self.delta}


@dataclass
class Genesis:
    consortium: str
    members: list[PublicIdentity]
    quorum: int
    purposes: list[Purpose]
    created: int
    signatures: dict[str, bytes] = field(default_factory=dict)
    #: (the objects the body was built from, its digest); see `digest`.
    _digest_cache: tuple[tuple[object, ...], bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        consortium: str,
        members: list[PublicIdentity],
        purposes: list[Purpose],
        created: int,
        quorum: int | None = None,
    ) -> Genesis:
        if not members:
            raise GenesisError("a consortium needs at least one member")
        if not purposes:
            raise GenesisError("declare at least one purpose (--purpose NAME)")
        seen: set[str] = set()
        for m in members:
            m.verify_binding()
            m.verify_evm_binding()
            if m.node_id in seen:
                raise GenesisError(f"member {m.name} ({m.node_id}) is listed twice")
            seen.add(m.node_id)
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise GenesisError("member names must be unique")
        q = quorum_for(len(members)) if quorum is None else quorum
        if not 1 <= q <= len(members):
            raise GenesisError(f"quorum {q} must be between 1 and {len(members)}")
        return cls(consortium, list(members), q, list(purposes), created)

    # -- canonical body and signatures ----------------------------------------------------------

    def body(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "consortium": self.consortium,
            "created": self.created,
            "quorum": self.quorum,
            "members": [
                {
                    "name": m.name,
                    "node_id": m.node_id,
                    "public_key": m.public_key,
                    "address": m.address,
                    "tls_cert": m.tls_cert_pem,
                    "tls_binding": m.tls_binding,
                    "evm_address": m.evm_address,
                    "evm_binding": m.evm_binding,
                }
                for m in self.members
            ],
            "purposes": [p.to_body() for p in self.purposes],
        }

    def digest(self) -> bytes:
        """SHA-256 of the canonical body: the consortium's identity, which every signature over
        its state covers.

        Cached, since it is needed per message and per entry and encoding the manifest costs
        ~0.3 ms. The cache holds the very objects the body is built from (members and purposes
        are frozen, their fields immutable) and is used only while each field still *is* the same
        object, so reassigning or editing a field in place recomputes it.
        """
        state = (self.consortium, self.created, self.quorum, *self.members, _SPLIT, *self.purposes)
        cached = self._digest_cache
        if (
            cached is not None
            and len(cached[0]) == len(state)
            and all(a is b for a, b in zip(cached[0], state, strict=True))
        ):
            return cached[1]
        value = digest(self.body())
        self._digest_cache = (state, value)
        return value

    def member(self, node_id: str) -> PublicIdentity:
        for m in self.members:
            if m.node_id == node_id:
                return m
        raise GenesisError(f"{node_id} is not a member of this consortium")

    def member_by_name(self, name: str) -> PublicIdentity:
        for m in self.members:
            if m.name == name:
                return m
        raise GenesisError(f"no member named {name!r}")

    def is_member(self, node_id: str) -> bool:
        return any(m.node_id == node_id for m in self.members)

    def purpose(self, name: str) -> Purpose:
        for p in self.purposes:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.purposes)
        raise GenesisError(f"purpose {name!r} is not declared in genesis (declared: {known})")

    def sign(self, identity: NodeIdentity) -> None:
        if not self.is_member(identity.node_id):
            raise GenesisError(
                f"{identity.name} ({identity.node_id}) is not listed in this manifest"
            )
        self.signatures[identity.node_id] = identity.sign(Domain.GENESIS, self.body())

    def verify(self) -> None:
        """Raise GenesisError naming the first member whose signature is missing or invalid."""
        body = self.body()
        for sid in self.signatures:
            if not self.is_member(sid):
                raise GenesisError(f"signature from {sid}, which is not a member")
        for m in self.members:
            try:
                m.verify_binding()
                m.verify_evm_binding()
            except IdentityError as exc:
                raise GenesisError(str(exc)) from exc
            sig = self.signatures.get(m.node_id)
            if sig is None:
                raise GenesisError(f"member {m.name} ({m.node_id}) has not signed the manifest")
            try:
                verify_signature(m.public_key, Domain.GENESIS, body, sig)
            except SignatureError as exc:
                raise GenesisError(f"invalid signature from member {m.name} ({m.node_id})") from exc

    def missing_signatures(self) -> list[str]:
        return [m.name for m in self.members if m.node_id not in self.signatures]

    # -- files -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "consortium": self.consortium,
            "created": self.created,
            "quorum": self.quorum,
            "members": [m.to_json() for m in self.members],
            "purposes": [p.to_body() for p in self.purposes],
            "signatures": {k: v.hex() for k, v in sorted(self.signatures.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Genesis:
        try:
            if data["version"] != MANIFEST_VERSION:
                raise GenesisError(f"unsupported manifest version {data['version']}")
            members = [PublicIdentity.from_json(m) for m in data["members"]]
            purposes = [
                Purpose(str(p["name"]), p.get("epsilon"), p.get("delta")) for p in data["purposes"]
            ]
            raw_sigs = data.get("signatures", {})
            if not isinstance(raw_sigs, dict):
                raise GenesisError("signatures must be a map from node id to hex signature")
            sigs = {str(k): bytes.fromhex(v) for k, v in raw_sigs.items()}
            return cls(
                str(data["consortium"]),
                members,
                int(data["quorum"]),
                purposes,
                int(data["created"]),
                sigs,
            )
        except GenesisError:
            raise
        except (KeyError, TypeError, ValueError, IdentityError) as exc:
            raise GenesisError(f"malformed genesis manifest: {exc}") from exc

    @classmethod
    def from_body(cls, body: Any, signatures: dict[str, bytes]) -> Genesis:
        """Rebuild from the canonical body stored in ledger entry 0 (untrusted bytes: every field
        is type-checked before use, so a damaged body is a GenesisError, never a crash)."""
        try:
            members = [
                PublicIdentity(
                    _field(m, "name", str),
                    _field(m, "public_key", bytes),
                    _field(m, "address", str),
                    _field(m, "tls_cert", str),
                    _field(m, "tls_binding", bytes),
                    _field(m, "evm_address", str),
                    _field(m, "evm_binding", bytes),
                )
                for m in _field(body, "members", list)
            ]
            purposes = [
                Purpose(
                    _field(p, "name", str),
                    _field(p, "epsilon", (float, int, type(None))),
                    _field(p, "delta", (float, int, type(None))),
                )
                for p in _field(body, "purposes", list)
            ]
            g = cls(
                _field(body, "consortium", str),
                members,
                _field(body, "quorum", int),
                purposes,
                _field(body, "created", int),
                dict(signatures),
            )
            canonical = g.body() == body
        except IdentityError as exc:  # e.g. a public key of the wrong length
            raise GenesisError(f"malformed genesis body: {exc}") from exc
        if not canonical:
            raise GenesisError("genesis body is not in canonical form")
        return g

    def save(self, path: Path) -> None:
        atomic_write(Path(path), json.dumps(self.to_json(), indent=2).encode())

    @classmethod
    def load(cls, path: Path) -> Genesis:
        path = Path(path)
        if path.is_dir():
            path = path / GENESIS_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise GenesisError(f"genesis manifest not found: {path}") from exc
        except (OSError, ValueError) as exc:
            raise GenesisError(f"cannot read genesis manifest {path}: {exc}") from exc
        return cls.from_json(data)

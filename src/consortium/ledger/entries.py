"""Typed ledger entries: one shape for every kind, so later kinds need no schema change.

An entry is `{"kind", "author", "time", "body", "signatures"}` in canonical dag-cbor; those bytes
are the Merkle leaf. Entry 0 is the genesis manifest (signed by every member over Domain.GENESIS);
every other entry is signed by its author (a member) over Domain.RECORD, covering everything but
the signatures and bound to the consortium by its genesis digest. `kind` is an open string:
"record" today, "round", "consent", "anchor" … later.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multiformats import CID

from consortium.core.encoding import Domain, decode, encode, signing_payload
from consortium.core.errors import (
    EncodingError,
    GenesisError,
    IdentityError,
    LedgerError,
    SignatureError,
)
from consortium.core.genesis import Genesis
from consortium.core.identity import SIGNATURE_BYTES, NodeIdentity, node_id_for

GENESIS_KIND = "genesis"
RECORD_KIND = "record"
_FIELDS = frozenset({"kind", "author", "time", "body", "signatures"})


@functools.lru_cache(maxsize=1024)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    # Parsing a key costs as much as hashing an entry; members are few, so keep them parsed.
    return Ed25519PublicKey.from_public_bytes(raw)


@functools.lru_cache(maxsize=64)
def _members(
    public_keys: tuple[bytes, ...], names: tuple[str, ...]
) -> dict[str, tuple[str, bytes]]:
    return {node_id_for(k): (n, k) for k, n in zip(public_keys, names, strict=True)}


def member_keys(genesis: Genesis) -> dict[str, tuple[str, bytes]]:
    """node id -> (name, public key). Cached: deriving a node id (a CID) costs milliseconds."""
    return _members(
        tuple(m.public_key for m in genesis.members), tuple(m.name for m in genesis.members)
    )


def check_signature(
    public_key: bytes, domain: Domain, obj: Any, signature: bytes, consortium: bytes = b""
) -> bool:
    """Fast signature check with a cached parsed key (same bytes as core's verify_signature).

    `consortium` is the genesis digest a consortium-bound domain requires (ValueError if absent).
    """
    payload = signing_payload(domain, obj, consortium)  # outside the try: misuse must raise
    return check_payload(public_key, payload, signature)


def check_payload(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """`check_signature` on an already built signing payload (one statement checked against
    many signers is encoded once)."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        _public_key(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Entry:
    """One ledger entry. Treat `body` as immutable: the encoding is cached on first use."""

    kind: str
    author: str
    body: dict[str, Any]
    signatures: dict[str, bytes]
    time: int

    def signed_body(self) -> dict[str, Any]:
        """What the author signs: everything except the signatures."""
        return {"kind": self.kind, "author": self.author, "time": self.time, "body": self.body}

    def to_dict(self) -> dict[str, Any]:
        return {**self.signed_body(), "signatures": self.signatures}

    @functools.cached_property
    def data(self) -> bytes:
        """The canonical bytes: the Merkle leaf data."""
        return encode(self.to_dict())

    def to_bytes(self) -> bytes:
        return self.data

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        try:
            obj = decode(data)
        except EncodingError as exc:
            raise LedgerError(f"ledger entry is not canonical dag-cbor: {exc}") from exc
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise LedgerError(f"ledger entry must be a map with exactly the keys {sorted(_FIELDS)}")
        kind, author, time, body, sigs = (
            obj["kind"],
            obj["author"],
            obj["time"],
            obj["body"],
            obj["signatures"],
        )
        if not isinstance(kind, str) or not kind:
            raise LedgerError("ledger entry kind must be a non-empty string")
        if not isinstance(author, str):
            raise LedgerError("ledger entry author must be a string")
        if not isinstance(time, int) or isinstance(time, bool):
            raise LedgerError("ledger entry time must be an integer")
        if not isinstance(body, dict):
            raise LedgerError("ledger entry body must be a map")
        if not isinstance(sigs, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in sigs.items()
        ):
            raise LedgerError("ledger entry signatures must map node ids to bytes")
        entry = cls(kind, author, body, sigs, time)
        entry.__dict__["data"] = bytes(data)  # already canonical: skip re-encoding
        return entry

    # -- checks ------------------------------------------------------------------------------

    def verify(self, genesis: Genesis) -> None:
        """Raise SignatureError (or LedgerError) unless every signature is valid for `genesis`:
        by its members, and made for this consortium (over its genesis digest)."""
        if self.kind == GENESIS_KIND:
            self._verify_genesis(genesis)
            return
        if not self.signatures:
            raise SignatureError(f"{self.kind} entry carries no signature")
        if self.author not in self.signatures:
            raise SignatureError(f"{self.kind} entry is not signed by its author {self.author}")
        signed = self.signed_body()
        keys = member_keys(genesis)
        consortium = genesis.digest()
        for node_id, sig in self.signatures.items():
            if node_id not in keys:
                raise SignatureError(
                    f"{self.kind} entry signed by {node_id}, which is not a member"
                )
            name, key = keys[node_id]
            if not check_signature(key, Domain.RECORD, signed, sig, consortium):
                raise SignatureError(
                    f"invalid signature on {self.kind} entry from member {name} ({node_id})"
                )

    def _verify_genesis(self, genesis: Genesis) -> None:
        if self.author != "" or self.time != genesis.created:
            raise LedgerError("genesis entry has a wrong author or time")
        try:
            claimed = Genesis.from_body(self.body, dict(self.signatures))
            claimed.verify()
        except GenesisError as exc:
            raise SignatureError(f"genesis entry does not verify: {exc}") from exc
        if claimed.digest() != genesis.digest():
            raise LedgerError("genesis entry is for a different consortium manifest")

    def references(self) -> list[CID]:
        """Every CID anywhere inside the body: artifacts an auditor must be able to resolve."""
        found: list[CID] = []
        stack: list[Any] = [self.body]
        while stack:
            item = stack.pop()
            if isinstance(item, CID):
                found.append(item)
            elif isinstance(item, dict):
                stack.extend(reversed(list(item.values())))
            elif isinstance(item, list):
                stack.extend(reversed(item))
        return found


def make_record(
    identity: NodeIdentity, kind: str, body: dict[str, Any], time: int, genesis: Genesis
) -> Entry:
    """A new entry of `kind`, authored and signed by `identity` for the consortium of `genesis`."""
    if not kind or kind == GENESIS_KIND:
        raise LedgerError(f"cannot make a record of kind {kind!r}")
    unsigned = Entry(kind, identity.node_id, body, {}, time)
    sig = identity.sign(Domain.RECORD, unsigned.signed_body(), genesis.digest())
    return Entry(kind, identity.node_id, body, {identity.node_id: sig}, time)


def genesis_entry(genesis: Genesis) -> Entry:
    """Entry 0: the manifest body with every member's genesis signature."""
    return Entry(GENESIS_KIND, "", genesis.body(), dict(genesis.signatures), genesis.created)


def genesis_from_entry(entry: Entry) -> Genesis:
    """Rebuild (and verify) the manifest stored in entry 0."""
    if entry.kind != GENESIS_KIND:
        raise LedgerError(f"entry 0 must be the genesis manifest, found a {entry.kind} entry")
    try:
        genesis = Genesis.from_body(entry.body, dict(entry.signatures))
        genesis.verify()
    except (GenesisError, IdentityError) as exc:
        raise LedgerError(f"entry 0 is not a valid genesis manifest: {exc}") from exc
    return genesis


def genesis_from_bytes(data: bytes) -> Genesis:
    """The manifest from the stored bytes of entry 0; every refusal names entry 0."""
    try:
        entry = Entry.from_bytes(data)
    except LedgerError as exc:
        raise LedgerError(f"entry 0 is not a valid genesis manifest: {exc}") from exc
    return genesis_from_entry(entry)

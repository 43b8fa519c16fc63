"""Typed ledger entries: one shape for every kind, so later kinds need no schema change.

An entry is `{"kind", "author", "time", "body", "signatures"}` in canonical dag-cbor; those bytes
are the Merkle leaf. Entry 0 is the genesis manifest (signed by every member over Domain.GENESIS);
every other entry is signed by its author (a member) over Domain.RECORD, covering everything but
the signatures and bound to the consortium by its genesis digest. `kind` is an open string:
"record" today, "round", "consent", "anchor" … later.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multiformats import CID

from consortium.core.encoding import Domain, decode, domain_prefix, encode, signing_payload
from consortium.core.errors import (
    ConsortiumError,
    EncodingError,
    GenesisError,
    IdentityError,
    LedgerError,
    SignatureError,
)
from consortium.core.genesis import Genesis
from consortium.core.identity import SIGNATURE_BYTES, NodeIdentity, node_id_for
from consortium.ledger.parallel import Check, SignatureBatch

GENESIS_KIND = "genesis"
RECORD_KIND = "record"
_FIELDS = frozenset({"kind", "author", "time", "body", "signatures"})
_SIGNATURES_KEY = b"\x6asignatures"  # encode("signatures")


def _head_bytes(n: int) -> int:
    """Length of the shortest CBOR head for the argument n."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9


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

    @functools.cached_property
    def signed_bytes(self) -> bytes:
        """The canonical bytes of `signed_body()`, sliced from `data` rather than encoded again.

        `data` is the canonical map {body, kind, time, author, signatures} (dag-cbor orders keys
        by length, then bytes), so the signed map {body, kind, time, author} is the same bytes
        with a four-entry header (0xa4 for 0xa5) and without the trailing "signatures" pair,
        whose encoding (text keys, byte-string values, keys in that order) cbor2 writes exactly
        as dag-cbor does. Whatever does not have that shape is encoded again."""
        data = self.data
        sigs = self.signatures
        if data[:1] == b"\xa5" and all(
            type(k) is str and type(v) is bytes for k, v in sigs.items()
        ):
            order = sorted(sigs, key=lambda k: (len(k.encode()), k.encode()))
            tail = _SIGNATURES_KEY + cbor2.dumps({k: sigs[k] for k in order})
            if data.endswith(tail):
                return b"\xa4" + data[1 : len(data) - len(tail)]
        return encode(self.signed_body())

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
        data = bytes(data)
        entry.__dict__["data"] = data  # already canonical: skip re-encoding
        # The bytes are canonical (decode checked every head is shortest), so the trailing
        # "signatures" pair (see `signed_bytes`) has exactly this length.
        tail = len(_SIGNATURES_KEY) + _head_bytes(len(sigs))
        for k, v in sigs.items():
            n = len(k.encode())
            tail += _head_bytes(n) + n + _head_bytes(len(v)) + len(v)
        start = len(data) - tail
        if data[start : start + len(_SIGNATURES_KEY)] == _SIGNATURES_KEY:
            entry.__dict__["signed_bytes"] = b"\xa4" + data[1:start]
        return entry

    # -- checks ------------------------------------------------------------------------------

    def verify(self, genesis: Genesis) -> None:
        """Raise SignatureError (or LedgerError) unless every signature is valid for `genesis`:
        by its members, and made for this consortium (over its genesis digest)."""
        if self.kind == GENESIS_KIND:
            self._verify_genesis(genesis)
            return
        failure = first_failure([self], genesis, workers=1)
        if failure is not None:
            raise failure[1]

    def signature_checks(
        self, keys: dict[str, tuple[str, bytes]]
    ) -> tuple[list[tuple[str, Check]], ConsortiumError | None]:
        """What `verify` checks, in its order, for a non-genesis entry: the (signer, check) of
        each signature up to the first problem found without any signature check, and that
        problem (no signature, none by the author, a signer who is not a member) or None.
        `keys`: `member_keys(genesis)`; a check's message follows the record payload prefix."""
        if not self.signatures:
            return [], SignatureError(f"{self.kind} entry carries no signature")
        if self.author not in self.signatures:
            return [], SignatureError(
                f"{self.kind} entry is not signed by its author {self.author}"
            )
        checks: list[tuple[str, Check]] = []
        for node_id, sig in self.signatures.items():
            if node_id not in keys:
                return checks, SignatureError(
                    f"{self.kind} entry signed by {node_id}, which is not a member"
                )
            checks.append((node_id, (keys[node_id][1], sig, self.signed_bytes)))
        return checks, None

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


class EntryChecks:
    """`Entry.verify` over a batch of non-genesis entries, in order: every signature up to the
    first failure is submitted at construction (on every core for a large batch, see
    `parallel.SignatureBatch`), so the caller can work meanwhile; `failure()` then answers with
    the (position, error) of the first entry `Entry.verify` would refuse, and the error it would
    raise, or None. A genesis entry is refused ("can only be entry 0"). The answer is the same
    on the pool and inline."""

    def __init__(
        self,
        entries: Sequence[Entry],
        keys: dict[str, tuple[str, bytes]],
        consortium: bytes,
        workers: int | None = None,
    ) -> None:
        """`keys`: `member_keys(genesis)`; `consortium`: `genesis.digest()` (see `of`)."""
        self._entries = entries
        self._keys = keys
        flat: list[Check] = []
        self._owners: list[tuple[int, str]] = []  # (position, signer) of each check in `flat`
        self._stop: tuple[int, ConsortiumError] | None = None
        for pos, entry in enumerate(entries):
            if entry.kind == GENESIS_KIND:
                self._stop = (pos, LedgerError("a genesis entry can only be entry 0"))
                break
            checks, problem = entry.signature_checks(self._keys)
            for signer, check in checks:
                flat.append(check)
                self._owners.append((pos, signer))
            if problem is not None:
                self._stop = (pos, problem)
                break
        prefix = domain_prefix(Domain.RECORD, consortium)
        self._batch = SignatureBatch(prefix, flat, workers)

    @classmethod
    def of(
        cls, entries: Sequence[Entry], genesis: Genesis, workers: int | None = None
    ) -> EntryChecks:
        return cls(entries, member_keys(genesis), genesis.digest(), workers)

    def failure(self) -> tuple[int, ConsortiumError] | None:
        found = self._batch.first_invalid()
        if found is None:
            return self._stop
        pos, signer = self._owners[found]
        name, kind = self._keys[signer][0], self._entries[pos].kind
        return pos, SignatureError(
            f"invalid signature on {kind} entry from member {name} ({signer})"
        )


def first_failure(
    entries: Sequence[Entry], genesis: Genesis, workers: int | None = None
) -> tuple[int, ConsortiumError] | None:
    """`EntryChecks.of(entries, genesis, workers).failure()`."""
    return EntryChecks.of(entries, genesis, workers).failure()


def make_record(
    identity: NodeIdentity, kind: str, body: dict[str, Any], time: int, genesis: Genesis
) -> Entry:
    """A new entry of `kind`, authored and signed by `identity` for the consortium of `genesis`.

    Its canonical bytes are cached: the signed bytes with the signature appended, so appending
    it encodes nothing again."""
    if not kind or kind == GENESIS_KIND:
        raise LedgerError(f"cannot make a record of kind {kind!r}")
    unsigned = Entry(kind, identity.node_id, body, {}, time)
    signed = encode(unsigned.signed_body())
    sig = identity.sign(Domain.RECORD, unsigned.signed_body(), genesis.digest())
    entry = Entry(kind, identity.node_id, body, {identity.node_id: sig}, time)
    tail = _SIGNATURES_KEY + cbor2.dumps({identity.node_id: sig})
    entry.__dict__["data"] = b"\xa5" + signed[1:] + tail
    entry.__dict__["signed_bytes"] = signed
    return entry


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
    """The manifest from the stored bytes of entry 0; every refusal names entry 0. Bytes that
    verified once are neither decoded nor verified again in this process (a simulation host
    opens the same entry 0 for each of its many members: seconds each at n = 100)."""
    key = hashlib.sha256(data).digest()
    known = _VERIFIED_GENESIS.get(key)
    if known is not None:
        return known.clone()
    try:
        entry = Entry.from_bytes(data)
    except LedgerError as exc:
        raise LedgerError(f"entry 0 is not a valid genesis manifest: {exc}") from exc
    genesis = genesis_from_entry(entry)
    _VERIFIED_GENESIS[key] = genesis.clone()
    return genesis


#: SHA-256 of entry-0 bytes that verified in this process (`genesis_from_bytes`), and the
#: manifest each gave (handed out as clones: a fresh object per caller).
_VERIFIED_GENESIS: dict[bytes, Genesis] = {}

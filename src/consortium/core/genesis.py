"""The genesis manifest: who the members are, the quorum, the purposes data may be used for, and
the setup of the shared beacon.

The ceremony has three steps: one member writes the manifest (`genesis create`); every member adds
its beacon dealing (`genesis deal`: Feldman commitments and one encrypted key share per member, see
`core/threshold.py`); then every member signs (`genesis sign`), which it does only after checking
that every share dealt to it matches its dealer's commitments. So a signed manifest says that every
member received valid shares, and the beacon's key exists, held by nobody.

The manifest body is signed by every member (domain `genesis`); it becomes entry 0 of the ledger.
On disk it is JSON (`genesis.json`) so operators can read it; what is signed is the canonical
dag-cbor encoding of the body, so JSON formatting never matters.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consortium.core.encoding import Domain, digest, signing_payload
from consortium.core.errors import GenesisError, IdentityError, SignatureError
from consortium.core.files import atomic_write
from consortium.core.identity import (
    NodeIdentity,
    PublicIdentity,
    verify_payload,
    verify_signature,
)
from consortium.core.threshold import (
    Dealing,
    EncryptedShare,
    GroupKey,
    SecretShare,
    ThresholdError,
    check_dealing_shape,
    deal,
    open_share,
)

GENESIS_FILE = "genesis.json"
#: 2: `unixfs_profile` (how the store cuts files into blocks) joined the body.
MANIFEST_VERSION = 2
#: UnixFS profiles a consortium may store its files under (`store/unixfs.py` defines them); the
#: first is the default. Every member must use the same one: a file's CID depends on it, and
#: voters recompute the model's CID from its bytes.
UNIXFS_PROFILES = ("unixfs-v1-2025", "kubo-cid-v1", "unixfs-v0-2015")
DEFAULT_UNIXFS_PROFILE = UNIXFS_PROFILES[0]
_SPLIT = object()  # separates members from purposes in the digest cache's key


def _field(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """`obj[key]` if `obj` is a map holding a value of `kind` there; else GenesisError."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise GenesisError(f"malformed genesis body: {key!r} is missing or of the wrong type")
    return value


def _check_profile(name: str) -> None:
    if name not in UNIXFS_PROFILES:
        raise GenesisError(
            f"unknown UnixFS profile {name!r}; use one of {', '.join(UNIXFS_PROFILES)}"
        )


def quorum_for(n: int) -> int:
    """Cosignatures needed for finality: ceil(2n/3)."""
    return math.ceil(2 * n / 3)


#: The smallest beacon group a manifest may name: below four the threshold is one, so a single
#: member of the group could compute (and so predict) every beacon alone.
MIN_BEACON_GROUP = 4


def _beacon_group(ids: list[str], members: list[str]) -> tuple[str, ...]:
    """A named beacon group, checked: distinct members, sorted, at least MIN_BEACON_GROUP (or
    every member of a smaller consortium)."""
    if len(set(ids)) != len(ids):
        raise GenesisError("the beacon group names a member twice")
    known = set(members)
    strangers = [i for i in ids if i not in known]
    if strangers:
        raise GenesisError(f"the beacon group names {strangers[0]}, which is not a member")
    if len(ids) < min(MIN_BEACON_GROUP, len(members)):
        raise GenesisError(
            f"a beacon group of {len(ids)} is too small: at least {MIN_BEACON_GROUP} members "
            "(below that one member of it can compute every beacon alone)"
        )
    # The whole membership is the default, written as no group (so its digest is the old one).
    return tuple(sorted(ids)) if len(ids) < len(members) else ()


def beacon_threshold(n: int, quorum: int) -> int:
    """Partials that make a beacon: one more than the colluders tolerated (the largest number
    below a third), so they cannot predict it, and at most the quorum, so the members that can
    finalize a round can also make its beacon."""
    return min((n - 1) // 3 + 1, quorum)


@dataclass(frozen=True)
class SignedDealing:
    dealing: Dealing
    signature: bytes  # the dealer's, domain beacon-dealing, over `dealing_statement`


def _dealing_body(d: Dealing) -> dict[str, Any]:
    return {
        "dealer": d.dealer,
        "commitments": list(d.commitments),
        "shares": [
            {"to": s.recipient, "ephemeral": s.ephemeral, "ciphertext": s.ciphertext}
            for s in d.shares
        ],
    }


def _dealing_from_body(b: Any) -> Dealing:
    commitments = _field(b, "commitments", list)
    shares = _field(b, "shares", list)
    if not all(isinstance(c, bytes) for c in commitments):
        raise GenesisError("malformed genesis body: a beacon commitment is not bytes")
    return Dealing(
        _field(b, "dealer", str),
        tuple(commitments),
        tuple(
            EncryptedShare(
                _field(x, "to", str), _field(x, "ephemeral", bytes), _field(x, "ciphertext", bytes)
            )
            for x in shares
        ),
    )


#: A purpose's record-of-processing fields (GDPR Article 30), each omitted from the body while
#: unset, so manifests written before they existed keep their bytes and digest.
RECORD_FIELDS = ("data_categories", "recipients", "retention")
_TEXT_MAX = 1000


@dataclass(frozen=True)
class Purpose:
    """A purpose data may be used for, with its differential-privacy budget (epsilon, delta)
    and what a record of processing (GDPR Article 30) says about it: the categories of personal
    data processed, the recipients of what the processing produces, and how long data is kept.
    Unset (empty) fields are "not declared"."""

    name: str
    epsilon: float | None = None
    delta: float | None = None
    data_categories: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    retention: str = ""

    def __post_init__(self) -> None:
        for key in ("data_categories", "recipients"):
            items = getattr(self, key)
            if not isinstance(items, tuple) or not all(_declared_text(x) for x in items):
                raise GenesisError(
                    f"purpose {self.name!r}: {key} must be a list of non-empty texts of at most "
                    f"{_TEXT_MAX} characters"
                )
        if not isinstance(self.retention, str) or (
            self.retention and not _declared_text(self.retention)
        ):
            raise GenesisError(
                f"purpose {self.name!r}: retention must be a text of at most {_TEXT_MAX} "
                "characters, without surrounding whitespace"
            )

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "epsilon": self.epsilon, "delta": self.delta}
        if self.data_categories:
            body["data_categories"] = list(self.data_categories)
        if self.recipients:
            body["recipients"] = list(self.recipients)
        if self.retention:
            body["retention"] = self.retention
        return body

    @classmethod
    def from_body(cls, p: Any) -> Purpose:
        """From the canonical body or genesis.json (the same shape); untrusted: type-checked."""
        return cls(
            _field(p, "name", str),
            _field(p, "epsilon", (float, int, type(None))),
            _field(p, "delta", (float, int, type(None))),
            _texts(p, "data_categories"),
            _texts(p, "recipients"),
            _field(p, "retention", str) if "retention" in p else "",
        )


def _declared_text(x: object) -> bool:
    return isinstance(x, str) and 0 < len(x) <= _TEXT_MAX and x == x.strip()


def _texts(p: dict[str, Any], key: str) -> tuple[str, ...]:
    if key not in p:
        return ()
    items = _field(p, key, list)
    if not all(isinstance(x, str) for x in items):
        raise GenesisError(f"malformed genesis body: {key!r} must be a list of texts")
    return tuple(items)


@dataclass
class Genesis:
    consortium: str
    members: list[PublicIdentity]
    quorum: int
    purposes: list[Purpose]
    created: int
    signatures: dict[str, bytes] = field(default_factory=dict)
    #: The beacon's DKG: dealer node id -> its signed dealing.
    dealings: dict[str, SignedDealing] = field(default_factory=dict)
    #: How the store cuts files (models, transcripts) into blocks, so how their CIDs come out.
    unixfs_profile: str = DEFAULT_UNIXFS_PROFILE
    #: The beacon group: the members (node ids, sorted) who run the DKG and whose partials make
    #: the beacon. Empty: every member (left out of the body, so older manifests keep their
    #: digest). A large consortium names a smaller group so that its ceremony and each round's
    #: partials do not grow with the membership (docs/architecture.md, "The beacon group").
    beacon_members: tuple[str, ...] = ()
    #: (the objects the body was built from, its digest); see `digest`.
    _digest_cache: tuple[tuple[object, ...], bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _payload_cache: tuple[bytes, bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _index_cache: (
        tuple[list[PublicIdentity], tuple[PublicIdentity, ...], dict[str, PublicIdentity]] | None
    ) = field(default=None, init=False, repr=False, compare=False)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        consortium: str,
        members: list[PublicIdentity],
        purposes: list[Purpose],
        created: int,
        quorum: int | None = None,
        unixfs_profile: str = DEFAULT_UNIXFS_PROFILE,
        beacon_members: list[str] | None = None,
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
        declared = [p.name for p in purposes]
        if len(set(declared)) != len(declared):
            raise GenesisError("purpose names must be unique")
        q = quorum_for(len(members)) if quorum is None else quorum
        if not 1 <= q <= len(members):
            raise GenesisError(f"quorum {q} must be between 1 and {len(members)}")
        _check_profile(unixfs_profile)
        g = cls(
            consortium, list(members), q, list(purposes), created, unixfs_profile=unixfs_profile
        )
        if beacon_members:
            g.beacon_members = _beacon_group(beacon_members, g.member_ids())
        return g

    @classmethod
    def ceremony(
        cls,
        consortium: str,
        identities: list[NodeIdentity],
        purposes: list[Purpose],
        created: int,
        quorum: int | None = None,
        random: Callable[[int], bytes] = os.urandom,
        unixfs_profile: str = DEFAULT_UNIXFS_PROFILE,
        beacon_members: list[str] | None = None,
    ) -> Genesis:
        """The whole ceremony (create, the beacon group deals, every member signs) where one
        process holds every member's keys: simulations and tests only."""
        g = cls.create(
            consortium,
            [i.public() for i in identities],
            purposes,
            created,
            quorum,
            unixfs_profile=unixfs_profile,
            beacon_members=beacon_members,
        )
        for ident in identities:
            if g.in_beacon_group(ident.node_id):
                g.deal(ident, random)
        for ident in identities:
            g.sign(ident)
        return g

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
                    "box_key": m.box_key,
                    "box_binding": m.box_binding,
                }
                for m in self.members
            ],
            "purposes": [p.to_body() for p in self.purposes],
            "unixfs_profile": self.unixfs_profile,
            "beacon": {
                "threshold": self.threshold,
                **({"members": list(self.beacon_members)} if self.beacon_members else {}),
                "dealings": [
                    {**_dealing_body(sd.dealing), "signature": sd.signature}
                    for _, sd in sorted(self.dealings.items())
                ],
            },
        }

    @property
    def threshold(self) -> int:
        """Partials needed for a beacon (`beacon_threshold`, over the beacon group: with a named
        group of g members, one more than the largest number below a third of g)."""
        if not self.beacon_members:
            return beacon_threshold(len(self.members), self.quorum)
        g = len(self.beacon_members)
        return beacon_threshold(g, quorum_for(g))

    def digest(self) -> bytes:
        """SHA-256 of the canonical body: the consortium's identity, which every signature over
        its state covers.

        Cached, since it is needed per message and per entry and encoding the manifest costs
        ~0.3 ms. The cache holds the very objects the body is built from (members and purposes
        are frozen, their fields immutable) and is used only while each field still *is* the same
        object, so reassigning or editing a field in place recomputes it.
        """
        state = (
            self.consortium,
            self.created,
            self.quorum,
            self.unixfs_profile,
            self.beacon_members,
            *self.members,
            _SPLIT,
            *self.purposes,
            _SPLIT,
            *(sd for _, sd in sorted(self.dealings.items())),
        )
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
        m = self._by_id().get(node_id)
        if m is None:
            raise GenesisError(f"{node_id} is not a member of this consortium")
        return m

    def _by_id(self) -> dict[str, PublicIdentity]:
        """Members by node id, rebuilt only when `members` changed: a 1000-member consortium's
        nodes look members up for every signature they check."""
        cached = self._index_cache
        if (
            cached is not None
            and cached[0] is self.members
            and len(cached[1]) == len(self.members)
            and all(map(operator.is_, cached[1], self.members))
        ):
            return cached[2]
        index = {m.node_id: m for m in self.members}
        self._index_cache = (self.members, tuple(self.members), index)
        return index

    def member_by_name(self, name: str) -> PublicIdentity:
        for m in self.members:
            if m.name == name:
                return m
        raise GenesisError(f"no member named {name!r}")

    def is_member(self, node_id: str) -> bool:
        return node_id in self._by_id()

    def purpose(self, name: str) -> Purpose:
        for p in self.purposes:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.purposes)
        raise GenesisError(f"purpose {name!r} is not declared in genesis (declared: {known})")

    # -- the beacon's key (a DKG among the members) -------------------------------------------

    def member_ids(self) -> list[str]:
        return sorted(m.node_id for m in self.members)

    def beacon_ids(self) -> list[str]:
        """The beacon group's node ids, sorted: the dealers, share holders and partial makers."""
        return list(self.beacon_members) if self.beacon_members else self.member_ids()

    def in_beacon_group(self, node_id: str) -> bool:
        if self.beacon_members:
            return node_id in self.beacon_members
        return self.is_member(node_id)

    def dealing_statement(self, d: Dealing) -> dict[str, Any]:
        """What a dealer signs: its dealing, bound to this manifest's beacon group and
        threshold."""
        return {
            "consortium": self.consortium,
            "created": self.created,
            "members": self.beacon_ids(),
            "threshold": self.threshold,
            "dealing": _dealing_body(d),
        }

    def deal(self, identity: NodeIdentity, random: Callable[[int], bytes] = os.urandom) -> None:
        """Add `identity`'s dealing; only before anyone signs (a dealing changes the body)."""
        if not self.is_member(identity.node_id):
            raise GenesisError(
                f"{identity.name} ({identity.node_id}) is not listed in this manifest"
            )
        if self.signatures:
            raise GenesisError(
                "members have already signed this manifest: a dealing now would void their "
                "signatures; every member deals before anyone signs"
            )
        if not self.in_beacon_group(identity.node_id):
            raise GenesisError(
                f"{identity.name} is not in this manifest's beacon group: only its members deal"
            )
        if identity.node_id in self.dealings:
            raise GenesisError(f"{identity.name} has already dealt")
        group = [self.member(i) for i in self.beacon_ids()]
        no_box = [m.name for m in group if len(m.box_key) != 32]
        if no_box:
            raise GenesisError(
                f"no box key in the node.pub of {', '.join(no_box)}: they must re-export node.pub "
                "with this version (`consortium node init` writes it)"
            )
        boxes = {m.node_id: m.box_key for m in group}
        d = deal(identity.node_id, boxes, self.threshold, random)
        signature = identity.sign(Domain.BEACON_DEALING, self.dealing_statement(d))
        self.dealings[identity.node_id] = SignedDealing(d, signature)

    def missing_dealings(self) -> list[str]:
        return [
            m.name
            for m in self.members
            if self.in_beacon_group(m.node_id) and m.node_id not in self.dealings
        ]

    def _check_dealings(self) -> None:
        """Every member of the beacon group dealt once, signed its dealing, and the dealing is
        well formed. Once per digest and process (the digest covers every dealing and its
        signature): a simulation's ceremony checks them for each of its members."""
        if self.digest() in _CHECKED_DEALINGS:
            return
        self._check_dealings_now()
        _CHECKED_DEALINGS.add(self.digest())

    def _check_dealings_now(self) -> None:
        missing = self.missing_dealings()
        if missing:
            raise GenesisError(
                f"beacon dealings missing from {', '.join(missing)} (`consortium genesis deal`)"
            )
        ids = self.beacon_ids()
        for dealer, sd in self.dealings.items():
            if not self.in_beacon_group(dealer) or sd.dealing.dealer != dealer:
                raise GenesisError(
                    f"beacon dealing from {dealer}, which is not in the beacon group"
                )
            m = self.member(dealer)
            try:
                verify_signature(
                    m.public_key,
                    Domain.BEACON_DEALING,
                    self.dealing_statement(sd.dealing),
                    sd.signature,
                )
                check_dealing_shape(sd.dealing, ids, self.threshold)
            except SignatureError as exc:
                raise GenesisError(f"invalid beacon dealing signature from {m.name}") from exc
            except ThresholdError as exc:
                raise GenesisError(f"malformed beacon dealing from {m.name}: {exc}") from exc

    def secret_share(self, identity: NodeIdentity) -> SecretShare:
        """This member's share of the beacon's key: the sum of the shares dealt to it, each
        checked against its dealer's commitments (a bad one is a GenesisError naming the dealer)."""
        self._check_dealings()
        if not self.in_beacon_group(identity.node_id):
            raise GenesisError(
                f"{identity.name} is not in the beacon group: it holds no share of the beacon key"
            )
        ids = self.beacon_ids()
        box = identity.box_private_key()
        total = 0
        for dealer, sd in sorted(self.dealings.items()):
            try:
                total += open_share(sd.dealing, identity.node_id, ids, box)
            except ThresholdError as exc:
                name = self.member(dealer).name
                raise GenesisError(f"bad beacon dealing from {name}: {exc}") from exc
        return SecretShare(identity.node_id, total)

    def group_key(self) -> GroupKey:
        """Every member's public verification key for beacon partials. Computed, after checking
        every dealing, once per genesis digest (which covers every dealing): a node asks per
        round and `audit` per record."""
        digest = self.digest()
        key = _GROUP_KEYS.get(digest)
        if key is None:
            self._check_dealings()
            key = _group_key(digest, self)
        return key

    def sign(self, identity: NodeIdentity) -> None:
        """Sign the manifest, after checking every dealing and the shares dealt to `identity`."""
        if not self.is_member(identity.node_id):
            raise GenesisError(
                f"{identity.name} ({identity.node_id}) is not listed in this manifest"
            )
        if self.in_beacon_group(identity.node_id):
            self.secret_share(identity)
        else:
            self._check_dealings()
        self.signatures[identity.node_id] = identity.sign_payload(self.signing_payload())

    def clone(self) -> Genesis:
        """A copy whose lists and maps are its own (the members, purposes and dealings in them
        are immutable, so shared), keeping the cached digest: parsing a 1000-member manifest
        again for every member a simulation host runs would cost O(n) each."""
        copy = Genesis(
            self.consortium,
            list(self.members),
            self.quorum,
            list(self.purposes),
            self.created,
            dict(self.signatures),
            dict(self.dealings),
            self.unixfs_profile,
            self.beacon_members,
        )
        copy._digest_cache = self._digest_cache  # valid: its key holds these very objects
        copy._payload_cache = self._payload_cache
        return copy

    def signing_payload(self) -> bytes:
        """What every member signs: the body's signing payload, encoded once per digest (every
        member signs the same body, which holds every dealing)."""
        cached = self._payload_cache
        d = self.digest()
        if cached is None or cached[0] != d:
            cached = (d, signing_payload(Domain.GENESIS, self.body()))
            self._payload_cache = cached
        return cached[1]

    def verify(self) -> None:
        """Raise GenesisError naming the first member whose signature is missing or invalid."""
        payload = self.signing_payload()
        for sid in self.signatures:
            if not self.is_member(sid):
                raise GenesisError(f"signature from {sid}, which is not a member")
        for m in self.members:
            try:
                m.verify_binding()
                m.verify_evm_binding()
                m.verify_box_binding()
            except IdentityError as exc:
                raise GenesisError(str(exc)) from exc
            sig = self.signatures.get(m.node_id)
            if sig is None:
                raise GenesisError(f"member {m.name} ({m.node_id}) has not signed the manifest")
            try:
                verify_payload(m.public_key, Domain.GENESIS, payload, sig)
            except SignatureError as exc:
                raise GenesisError(f"invalid signature from member {m.name} ({m.node_id})") from exc
        self._check_dealings()

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
            "unixfs_profile": self.unixfs_profile,
            "beacon": {
                "threshold": self.threshold,
                **({"members": list(self.beacon_members)} if self.beacon_members else {}),
                "dealings": [
                    {
                        "dealer": d.dealing.dealer,
                        "commitments": [c.hex() for c in d.dealing.commitments],
                        "shares": [
                            {
                                "to": x.recipient,
                                "ephemeral": x.ephemeral.hex(),
                                "ciphertext": x.ciphertext.hex(),
                            }
                            for x in d.dealing.shares
                        ],
                        "signature": d.signature.hex(),
                    }
                    for _, d in sorted(self.dealings.items())
                ],
            },
            "signatures": {k: v.hex() for k, v in sorted(self.signatures.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Genesis:
        try:
            if data["version"] != MANIFEST_VERSION:
                raise GenesisError(f"unsupported manifest version {data['version']}")
            members = [PublicIdentity.from_json(m) for m in data["members"]]
            purposes = [Purpose.from_body(p) for p in data["purposes"]]
            raw_sigs = data.get("signatures", {})
            if not isinstance(raw_sigs, dict):
                raise GenesisError("signatures must be a map from node id to hex signature")
            sigs = {str(k): bytes.fromhex(v) for k, v in raw_sigs.items()}
            dealings = {}
            for d in data.get("beacon", {}).get("dealings", []):
                dealing = Dealing(
                    str(d["dealer"]),
                    tuple(bytes.fromhex(c) for c in d["commitments"]),
                    tuple(
                        EncryptedShare(
                            str(x["to"]),
                            bytes.fromhex(x["ephemeral"]),
                            bytes.fromhex(x["ciphertext"]),
                        )
                        for x in d["shares"]
                    ),
                )
                dealings[dealing.dealer] = SignedDealing(dealing, bytes.fromhex(d["signature"]))
            profile = data["unixfs_profile"]
            if not isinstance(profile, str):
                raise GenesisError("unixfs_profile must be a string")
            _check_profile(profile)
            g = cls(
                str(data["consortium"]),
                members,
                int(data["quorum"]),
                purposes,
                int(data["created"]),
                sigs,
                dealings,
                unixfs_profile=profile,
            )
            group = data.get("beacon", {}).get("members")
            if group is not None:
                if not isinstance(group, list) or not group:
                    raise GenesisError("beacon members must be a non-empty list of node ids")
                g.beacon_members = _beacon_group([str(x) for x in group], g.member_ids())
            return g
        except GenesisError:
            raise
        except (KeyError, TypeError, ValueError, IdentityError) as exc:
            raise GenesisError(f"malformed genesis manifest: {exc}") from exc

    @classmethod
    def from_body(cls, body: Any, signatures: dict[str, bytes]) -> Genesis:
        """Rebuild from the canonical body stored in ledger entry 0 (untrusted bytes: every field
        is type-checked before use, so a damaged body is a GenesisError, never a crash)."""
        version = body.get("version") if isinstance(body, dict) else None
        if version != MANIFEST_VERSION:
            raise GenesisError(f"unsupported manifest version {version!r}")
        try:
            profile = _field(body, "unixfs_profile", str)
            _check_profile(profile)
            members = [
                PublicIdentity(
                    _field(m, "name", str),
                    _field(m, "public_key", bytes),
                    _field(m, "address", str),
                    _field(m, "tls_cert", str),
                    _field(m, "tls_binding", bytes),
                    _field(m, "evm_address", str),
                    _field(m, "evm_binding", bytes),
                    _field(m, "box_key", bytes),
                    _field(m, "box_binding", bytes),
                )
                for m in _field(body, "members", list)
            ]
            purposes = [Purpose.from_body(p) for p in _field(body, "purposes", list)]
            dealings = {}
            beacon = _field(body, "beacon", dict)
            for d in _field(beacon, "dealings", list):
                dealing = _dealing_from_body(d)
                dealings[dealing.dealer] = SignedDealing(dealing, _field(d, "signature", bytes))
            g = cls(
                _field(body, "consortium", str),
                members,
                _field(body, "quorum", int),
                purposes,
                _field(body, "created", int),
                dict(signatures),
                dealings,
                unixfs_profile=profile,
            )
            if "members" in beacon:
                group = _field(beacon, "members", list)
                if not all(isinstance(x, str) for x in group):
                    raise GenesisError("malformed genesis body: beacon members must be node ids")
                g.beacon_members = _beacon_group(group, g.member_ids())
            canonical = g.body() == body
        except IdentityError as exc:  # e.g. a public key of the wrong length
            raise GenesisError(f"malformed genesis body: {exc}") from exc
        if not canonical:
            raise GenesisError("genesis body is not in canonical form")
        return g

    def file_bytes(self) -> bytes:
        """What `save` writes (genesis.json): the same bytes can go to many folders."""
        return json.dumps(self.to_json(), indent=2).encode()

    def save(self, path: Path) -> None:
        atomic_write(Path(path), self.file_bytes())

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

    @classmethod
    def load_verified(cls, path: Path) -> Genesis:
        """`load` and `verify`, verifying any given file content once per process: a
        simulation host runs many members whose manifests are the same bytes (O(n²) of them:
        checking one takes seconds at n = 100). Bytes parsed and verified before come back as
        a `clone` of that manifest (a fresh object: nothing one caller changes reaches
        another)."""
        path = Path(path)
        if path.is_dir():
            path = path / GENESIS_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise GenesisError(f"genesis manifest not found: {path}") from exc
        except OSError as exc:
            raise GenesisError(f"cannot read genesis manifest {path}: {exc}") from exc
        key = hashlib.sha256(raw).digest()
        known = _VERIFIED_FILES.get(key)
        if known is not None:
            return known.clone()
        try:
            genesis = cls.from_json(json.loads(raw))
        except ValueError as exc:
            raise GenesisError(f"cannot read genesis manifest {path}: {exc}") from exc
        genesis.verify()
        _VERIFIED_FILES[key] = genesis.clone()
        return genesis


#: SHA-256 of manifest files that verified in this process (`Genesis.load_verified`), and the
#: manifest each parsed to (handed out as `clone`s).
_VERIFIED_FILES: dict[bytes, Genesis] = {}
#: Digests of manifests whose dealings were checked in this process (`_check_dealings`).
_CHECKED_DEALINGS: set[bytes] = set()
_GROUP_KEYS: dict[bytes, GroupKey] = {}


def _group_key(digest: bytes, g: Genesis) -> GroupKey:
    """The verification keys of a manifest, computed once per genesis digest (~n·t point
    multiplications): the digest covers every dealing, so equal digests mean equal keys."""
    key = _GROUP_KEYS.get(digest)
    if key is None:
        key = GroupKey.from_dealings(
            [sd.dealing for _, sd in sorted(g.dealings.items())], g.beacon_ids(), g.threshold
        )
        _GROUP_KEYS[digest] = key
    return key

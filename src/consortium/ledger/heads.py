"""Signed tree heads, cosignatures, finality and equivocation evidence.

A tree head `{"size", "root", "time"}` is signed by members over Domain.TREE_HEAD and the genesis
digest (a head of one consortium never counts in another); it is *final*
once at least `genesis.quorum` distinct members have cosigned the very same head. A member that
signs two heads of the same size with different roots has equivocated: the two signed heads are
self-contained evidence anyone holding the genesis can check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consortium.core.encoding import Domain, decode, encode
from consortium.core.errors import EncodingError, LedgerError, SignatureError
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import check_signature, member_keys
from consortium.ledger.merkle import HASH_SIZE


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: bytes
    time: int

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.root) != HASH_SIZE:
            raise LedgerError(f"malformed tree head: size {self.size}, root {len(self.root)} bytes")

    def body(self) -> dict[str, Any]:
        return {"size": self.size, "root": self.root, "time": self.time}

    @classmethod
    def from_body(cls, body: Any) -> TreeHead:
        try:
            size, root, time = body["size"], body["root"], body["time"]
        except (KeyError, TypeError) as exc:
            raise LedgerError(f"malformed tree head: {exc}") from exc
        if not (isinstance(size, int) and isinstance(root, bytes) and isinstance(time, int)):
            raise LedgerError("malformed tree head: wrong field types")
        return cls(size, root, time)

    def sign(self, identity: NodeIdentity, genesis: Genesis) -> Cosignature:
        """`identity`'s cosignature on this head in the consortium of `genesis`."""
        sig = identity.sign(Domain.TREE_HEAD, self.body(), genesis.digest())
        return Cosignature(identity.node_id, sig)

    def is_signed_by(self, genesis: Genesis, node_id: str, signature: bytes) -> bool:
        member = member_keys(genesis).get(node_id)
        return member is not None and check_signature(
            member[1], Domain.TREE_HEAD, self.body(), signature, genesis.digest()
        )

    def check_signature(self, genesis: Genesis, node_id: str, signature: bytes) -> None:
        """Raise SignatureError naming the member unless `signature` is theirs on this head."""
        member = member_keys(genesis).get(node_id)
        if member is None:
            raise SignatureError(f"tree head cosigned by {node_id}, which is not a member")
        if not check_signature(
            member[1], Domain.TREE_HEAD, self.body(), signature, genesis.digest()
        ):
            raise SignatureError(
                f"invalid tree-head signature from member {member[0]} ({node_id}) "
                f"on size {self.size}"
            )


@dataclass(frozen=True)
class Cosignature:
    node_id: str
    signature: bytes


@dataclass
class CosignedHead:
    head: TreeHead
    cosignatures: list[Cosignature] = field(default_factory=list)

    def signatures(self) -> dict[str, bytes]:
        return {c.node_id: c.signature for c in self.cosignatures}

    def valid_signers(self, genesis: Genesis) -> set[str]:
        return {
            c.node_id
            for c in self.cosignatures
            if self.head.is_signed_by(genesis, c.node_id, c.signature)
        }

    def is_final(self, genesis: Genesis) -> bool:
        """At least `genesis.quorum` distinct members validly cosigned this exact head."""
        return len(self.valid_signers(genesis)) >= genesis.quorum

    def check(self, genesis: Genesis) -> None:
        """Raise SignatureError naming the first member whose cosignature is invalid."""
        for c in self.cosignatures:
            self.head.check_signature(genesis, c.node_id, c.signature)

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head.body(), "cosignatures": self.signatures()}

    @classmethod
    def from_dict(cls, obj: Any) -> CosignedHead:
        try:
            head, sigs = TreeHead.from_body(obj["head"]), obj["cosignatures"]
        except (KeyError, TypeError) as exc:
            raise LedgerError(f"malformed cosigned head: {exc}") from exc
        if not isinstance(sigs, dict):
            raise LedgerError("malformed cosigned head: cosignatures must be a map")
        return cls(head, [Cosignature(str(k), bytes(v)) for k, v in sorted(sigs.items())])


@dataclass(frozen=True)
class Equivocation:
    """One member signed two different roots for the same tree size."""

    node_id: str
    head_a: TreeHead
    signature_a: bytes
    head_b: TreeHead
    signature_b: bytes

    def verify(self, genesis: Genesis) -> None:
        """Raise unless this is genuine evidence: checkable by any third party with the genesis."""
        if self.head_a.size != self.head_b.size or self.head_a.root == self.head_b.root:
            raise LedgerError("not an equivocation: heads differ in size or agree on the root")
        self.head_a.check_signature(genesis, self.node_id, self.signature_a)
        self.head_b.check_signature(genesis, self.node_id, self.signature_b)

    def to_dict(self) -> dict[str, Any]:
        # Order the pair canonically so the same evidence always encodes to the same bytes.
        pair = sorted(
            [(self.head_a, self.signature_a), (self.head_b, self.signature_b)],
            key=lambda p: (p[0].root, p[0].time, p[1]),
        )
        return {
            "node_id": self.node_id,
            "heads": [{"head": h.body(), "signature": s} for h, s in pair],
        }

    def to_bytes(self) -> bytes:
        return encode(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Any) -> Equivocation:
        try:
            (a, b) = obj["heads"]
            return cls(
                str(obj["node_id"]),
                TreeHead.from_body(a["head"]),
                bytes(a["signature"]),
                TreeHead.from_body(b["head"]),
                bytes(b["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"malformed equivocation evidence: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> Equivocation:
        try:
            return cls.from_dict(decode(data))
        except EncodingError as exc:
            raise LedgerError(f"malformed equivocation evidence: {exc}") from exc


def find_equivocations(
    a: CosignedHead, b: CosignedHead, genesis: Genesis | None = None
) -> list[Equivocation]:
    """Every member that signed both `a` and `b` when they are two roots for one size.

    With `genesis`, only valid signatures count (evidence from unverified input is worthless).
    """
    if a.head.size != b.head.size or a.head.root == b.head.root:
        return []
    sa, sb = a.signatures(), b.signatures()
    found = []
    for node_id in sorted(sa.keys() & sb.keys()):
        ev = Equivocation(node_id, a.head, sa[node_id], b.head, sb[node_id])
        if genesis is not None:
            try:
                ev.verify(genesis)
            except (SignatureError, LedgerError):
                continue
        found.append(ev)
    return found


def find_equivocation(
    a: CosignedHead, b: CosignedHead, genesis: Genesis | None = None
) -> Equivocation | None:
    found = find_equivocations(a, b, genesis)
    return found[0] if found else None

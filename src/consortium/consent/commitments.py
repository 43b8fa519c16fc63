"""Salted per-round commitments to the records a node used, and the subject's receipts.

Leaf commitment (32 bytes), a fixed length-prefixed layout so no two inputs share bytes:

    c = SHA-256( 0x1a ‖ "consortium/v1/consent-leaf"            (length-prefixed domain tag)
                 ‖ salt (32 bytes)
                 ‖ record id (u64 big-endian)
                 ‖ len(purpose) (u16 big-endian) ‖ purpose (UTF-8)
                 ‖ round (u64 big-endian) )

for a numeric record id (`consent.record_ids`: the decimal text of an integer below 2^63, as
every id was before ids were text, so earlier commitments are unchanged), and for any other id

    c = SHA-256( 0x1f ‖ "consortium/v1/consent-leaf-text"
                 ‖ salt (32 bytes)
                 ‖ len(record id) (u16 big-endian) ‖ record id (UTF-8)
                 ‖ len(purpose) (u16 big-endian) ‖ purpose (UTF-8)
                 ‖ round (u64 big-endian) )

(the two tags differ in their first byte, so no text id shares hashed bytes with a numeric one).

A node's round commitment is the RFC 9162 Merkle root (`ledger.merkle`) over the commitments
sorted by value, plus their count. The salt is per record and random, so without it a
commitment cannot be linked to a record id (and the round number in it makes the commitments of
one record differ from round to round). Sorting makes absence provable too: a receipt shows the
two adjacent leaves that bracket the subject's commitment (sound as long as the node sorted its
tree, which it does by construction; a node that lies about sorting could hide a use).

Only `RoundCommitment` (root, count, purpose, head) leaves the node; `head` fixes the consent
history the round was selected from (`consent.history.round_head`), so the node's registry can
later be audited against the ledger. A receipt holds the subject's salts and proofs made of other
leaves' commitments, which reveal nothing without their salts.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from consortium.consent.record_ids import RecordIdError, numeric
from consortium.consent.record_ids import record_id as as_record_id
from consortium.consent.registry import SALT_SIZE, ConsentError, check_name
from consortium.core.encoding import sha256
from consortium.core.errors import ProofError
from consortium.ledger import merkle

LEAF_TAG = b"consortium/v1/consent-leaf"
_PREFIX = bytes([len(LEAF_TAG)]) + LEAF_TAG
TEXT_LEAF_TAG = b"consortium/v1/consent-leaf-text"
_TEXT_PREFIX = bytes([len(TEXT_LEAF_TAG)]) + TEXT_LEAF_TAG
HASH_SIZE = 32

Status = Literal["used", "not-used", "invalid", "no-proof", "missing"]
#: A subject's receipt; format 1 (record ids as integers) is still read.
RECEIPT_FORMAT = "consortium-consent-receipt/2"
RECEIPT_FORMAT_V1 = "consortium-consent-receipt/1"


def commitment(salt: bytes, record_id: str | int, purpose: str, round_no: int) -> bytes:
    """c = SHA-256(tag ‖ salt ‖ record id ‖ purpose ‖ round), see the module docstring (an
    integer record id is its decimal text)."""
    if len(salt) != SALT_SIZE:
        raise ConsentError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    p = purpose.encode("utf-8")
    text = record_id if isinstance(record_id, str) else str(record_id)
    n = numeric(text)
    if n is None:
        rid = text.encode("utf-8", "surrogateescape")  # as read from a damaged file
        head = _TEXT_PREFIX + salt + len(rid).to_bytes(2, "big") + rid
    else:
        head = _PREFIX + salt + n.to_bytes(8, "big")
    return sha256(head + len(p).to_bytes(2, "big") + p + round_no.to_bytes(8, "big"))


def round_leaves(
    salts: Mapping[str, bytes], record_ids: Iterable[str], purpose: str, round_no: int
) -> list[bytes]:
    """The sorted commitments of the records used in one round."""
    return sorted(commitment(salts[r], r, purpose, round_no) for r in record_ids)


@dataclass(frozen=True)
class RoundCommitment:
    """What a node publishes per round (in its Update and the round record): no identifiers.

    `head` is the round head of the node's consent history (`consent.history.round_head`)."""

    root: bytes
    count: int
    purpose: str
    head: bytes

    def to_body(self) -> dict[str, Any]:
        return {"root": self.root, "count": self.count, "purpose": self.purpose, "head": self.head}

    @classmethod
    def from_body(cls, body: Any) -> RoundCommitment:
        if not isinstance(body, dict) or set(body) != {"root", "count", "purpose", "head"}:
            raise ConsentError(
                "consent commitment must be a map with root, count, purpose and head"
            )
        root, count, purpose, head = body["root"], body["count"], body["purpose"], body["head"]
        if not isinstance(root, bytes) or len(root) != HASH_SIZE:
            raise ConsentError("consent commitment root must be 32 bytes")
        if not isinstance(head, bytes) or len(head) != HASH_SIZE:
            raise ConsentError("consent commitment head must be 32 bytes")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConsentError("consent commitment count must be a non-negative integer")
        if not isinstance(purpose, str):
            raise ConsentError("consent commitment purpose must be a string")
        check_name("purpose", purpose)
        return cls(root, count, purpose, head)


def leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    return [merkle.leaf_hash(c) for c in leaves]


def leaves_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root over already-sorted leaf commitments."""
    if any(a >= b for a, b in itertools.pairwise(leaves)):
        raise ConsentError("leaf commitments must be sorted and distinct")
    return merkle.root_from_leaf_hashes(leaf_hashes(leaves))


def commit(leaves: Sequence[bytes], purpose: str, head: bytes) -> RoundCommitment:
    """The round commitment over already-sorted leaf commitments, selected under `head`."""
    return RoundCommitment(leaves_root(leaves), len(leaves), purpose, head)


class _Tree:
    """Every complete aligned subtree of a small in-memory tree, for `merkle.inclusion_proof`."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.size = len(leaves)
        self.levels = [leaf_hashes(leaves)]
        while len(self.levels[-1]) > 1:
            lv = self.levels[-1]
            self.levels.append(
                [merkle.node_hash(lv[i], lv[i + 1]) for i in range(0, len(lv) - 1, 2)]
            )

    def get(self, level: int, idx: int) -> bytes:
        return self.levels[level][idx]

    def proof(self, index: int) -> list[bytes]:
        return merkle.inclusion_proof(index, self.size, self.get)


# -- receipts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    """A leaf next to where the subject's commitment would be, with its inclusion proof."""

    index: int
    leaf: bytes
    proof: list[bytes]


@dataclass(frozen=True)
class RoundProof:
    """For one round and record: an inclusion proof (used) or the bracketing neighbours (not)."""

    round: int
    purpose: str
    record_id: str
    size: int
    used: bool
    index: int = -1
    proof: list[bytes] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)


@dataclass(frozen=True)
class Receipt:
    """What a subject keeps: their salts (secret: they link the commitments) and the proofs."""

    subject: str
    node: str
    salts: dict[str, bytes]
    rounds: list[RoundProof]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "subject": self.subject,
            "node": self.node,
            "salts": {r: s.hex() for r, s in sorted(self.salts.items())},
            "rounds": [
                {
                    "round": p.round,
                    "purpose": p.purpose,
                    "record_id": p.record_id,
                    "size": p.size,
                    "used": p.used,
                    "index": p.index,
                    "proof": [h.hex() for h in p.proof],
                    "neighbours": [
                        {
                            "index": n.index,
                            "leaf": n.leaf.hex(),
                            "proof": [h.hex() for h in n.proof],
                        }
                        for n in p.neighbours
                    ],
                }
                for p in self.rounds
            ],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        try:
            if data["format"] not in (RECEIPT_FORMAT, RECEIPT_FORMAT_V1):
                raise ConsentError(f"unknown receipt format {data['format']!r}")
            # Format 1 wrote record ids as integers: each is its decimal text.
            salts = {as_record_id(r): bytes.fromhex(s) for r, s in data["salts"].items()}
            rounds = [
                RoundProof(
                    round=int(p["round"]),
                    purpose=str(p["purpose"]),
                    record_id=as_record_id(p["record_id"]),
                    size=int(p["size"]),
                    used=bool(p["used"]),
                    index=int(p["index"]),
                    proof=[bytes.fromhex(h) for h in p["proof"]],
                    neighbours=[
                        Neighbour(
                            int(n["index"]),
                            bytes.fromhex(n["leaf"]),
                            [bytes.fromhex(h) for h in n["proof"]],
                        )
                        for n in p["neighbours"]
                    ],
                )
                for p in data["rounds"]
            ]
            return cls(str(data["subject"]), str(data["node"]), salts, rounds)
        except ConsentError:
            raise
        except RecordIdError as exc:
            raise ConsentError(f"malformed receipt: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConsentError(f"malformed receipt: {exc!r}") from exc

    @classmethod
    def loads(cls, text: str) -> Receipt:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConsentError(f"receipt is not JSON: {exc}") from exc
        return cls.from_json(data)


def prove_round(
    salts: Mapping[str, bytes], record_id: str, purpose: str, round_no: int, leaves: Sequence[bytes]
) -> RoundProof:
    """The proof that `record_id` was (or was not) among the sorted `leaves` of a round."""
    mine = commitment(salts[record_id], record_id, purpose, round_no)
    tree = _Tree(leaves)
    pos = bisect.bisect_left(leaves, mine)
    n = len(leaves)
    if pos < n and leaves[pos] == mine:
        return RoundProof(round_no, purpose, record_id, n, True, pos, tree.proof(pos))
    nbrs = [Neighbour(i, leaves[i], tree.proof(i)) for i in (pos - 1, pos) if 0 <= i < n]
    return RoundProof(round_no, purpose, record_id, n, False, neighbours=nbrs)


def build_receipt(
    subject: str,
    salts: Mapping[str, bytes],
    rounds: Iterable[tuple[int, str, Sequence[bytes]]],
    node: str = "",
) -> Receipt:
    """A receipt over `rounds` = (round, purpose, sorted leaves), for every record in `salts`."""
    proofs = [
        prove_round(salts, rid, purpose, r, leaves)
        for r, purpose, leaves in rounds
        for rid in sorted(salts)
    ]
    return Receipt(subject, node, dict(salts), proofs)


@dataclass(frozen=True)
class Verdict:
    round: int
    purpose: str
    record_id: str | None
    status: Status
    reason: str = ""


def _check_absent(p: RoundProof, mine: bytes, rc: RoundCommitment) -> None:
    if p.size == 0:
        if p.neighbours or rc.root != merkle.EMPTY_ROOT:
            raise ProofError("an empty round must have the empty root and no neighbours")
        return
    if not 1 <= len(p.neighbours) <= 2:
        raise ProofError("an absence proof needs one or two neighbours")
    for n in p.neighbours:
        if len(n.leaf) != HASH_SIZE:
            raise ProofError("neighbour leaf is not 32 bytes")
        merkle.verify_inclusion(n.index, p.size, merkle.leaf_hash(n.leaf), n.proof, rc.root)
    below = [n for n in p.neighbours if n.leaf < mine]
    above = [n for n in p.neighbours if n.leaf > mine]
    if len(below) + len(above) != len(p.neighbours) or len(below) > 1 or len(above) > 1:
        raise ProofError("neighbours do not bracket the commitment")
    lo = below[0].index if below else -1
    hi = above[0].index if above else p.size
    if hi != lo + 1:
        raise ProofError("neighbours are not adjacent leaves")


def check_receipt(receipt: Receipt, roots_by_round: Mapping[int, RoundCommitment]) -> list[Verdict]:
    """Per round (and record): used / not-used if the proof matches the published root;
    invalid if it does not; missing if the round has no published root for this node;
    no-proof for a published round the receipt says nothing about."""
    out: list[Verdict] = []
    seen: set[int] = set()
    for p in receipt.rounds:
        seen.add(p.round)
        rc = roots_by_round.get(p.round)
        if rc is None:
            out.append(Verdict(p.round, p.purpose, p.record_id, "missing", "no published root"))
            continue
        salt = receipt.salts.get(p.record_id)
        try:
            if salt is None:
                raise ProofError(f"the receipt has no salt for record {p.record_id}")
            if rc.purpose != p.purpose:
                raise ProofError(f"published purpose is {rc.purpose}, receipt says {p.purpose}")
            if rc.count != p.size:
                raise ProofError(f"published count is {rc.count}, receipt says {p.size}")
            mine = commitment(salt, p.record_id, p.purpose, p.round)
            if p.used:
                merkle.verify_inclusion(p.index, p.size, merkle.leaf_hash(mine), p.proof, rc.root)
            else:
                _check_absent(p, mine, rc)
        except (ProofError, ConsentError) as exc:
            out.append(Verdict(p.round, p.purpose, p.record_id, "invalid", str(exc)))
            continue
        out.append(Verdict(p.round, p.purpose, p.record_id, "used" if p.used else "not-used"))
    for r in sorted(set(roots_by_round) - seen):
        rc = roots_by_round[r]
        out.append(Verdict(r, rc.purpose, None, "no-proof", "the receipt covers no such round"))
    return sorted(out, key=lambda v: (v.round, v.record_id is not None, v.record_id or ""))


def roots_from_records(
    records: Iterable[tuple[int, Mapping[str, Any]]], node_id: str
) -> dict[int, RoundCommitment]:
    """slot -> this node's commitment, from (ledger slot, consent section) of round records.

    A node commits with the record's ledger slot as the round number (unique across runs). The
    section maps node ids to commitments (typed, or their bodies, which are shape-checked)."""
    out: dict[int, RoundCommitment] = {}
    for slot, consent in records:
        if node_id not in consent:
            continue
        c = consent[node_id]
        out[slot] = c if isinstance(c, RoundCommitment) else RoundCommitment.from_body(c)
    return out

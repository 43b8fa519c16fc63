"""Retrievability challenges over stored artifacts: the pure pieces (sans-I/O).

An artifact's bytes are cut into 32-byte leaves (the last zero-padded; n = ceil(size / 32), none
for an empty artifact) and committed by the RFC 9162 Merkle root over them, with the ledger's own
hashing (`ledger/merkle.py`: leaf SHA-256(0x00 | leaf), node SHA-256(0x01 | left | right)). A
challenge names k leaf indices, drawn from the round's beacon so that no member can steer or
foresee them; a holder answers each with the leaf and its inclusion path; anyone holding the
committed (root, size) checks the answer. docs/architecture.md, "Replication with retrievability
challenges", says how these fit in a round and what they prove (lost or corrupted copies; not a
unique replica).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from consortium.core.encoding import Domain, digest
from consortium.core.errors import ProofError, SignatureError
from consortium.core.identity import SIGNATURE_BYTES, NodeIdentity, verify_signature
from consortium.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    inclusion_proof,
    leaf_hash,
    root_at,
    tree_levels,
    verify_inclusion,
)
from consortium.store.cid import as_cid

LEAF_SIZE = 32
#: Leaf indices challenged per artifact per holder in a challenge period (the design allows 5-10).
CHALLENGES = 8
MIN_CHALLENGES, MAX_CHALLENGES = 5, 10
#: Artifacts a challenge round challenges at most (run-config `challenge_artifacts`): drawn from
#: the round's beacon, so a challenge record stays bounded however long the run.
CHALLENGE_ARTIFACTS = 8
MAX_CHALLENGE_ARTIFACTS = 1000
#: Deepest path we accept: a tree of 2**48 leaves is 8 PiB of artifact.
MAX_PATH = 48
_TAG = b"consortium/storage-challenge/v1"


def leaf_count(size: int) -> int:
    """Leaves of an artifact of `size` bytes."""
    if size < 0:
        raise ProofError(f"an artifact cannot be {size} bytes")
    return -(-size // LEAF_SIZE)


def leaf_at(data: bytes, index: int) -> bytes:
    """Leaf `index` of `data`: its 32 bytes, the last zero-padded."""
    if not 0 <= index < leaf_count(len(data)):
        raise ProofError(f"leaf {index} is not in an artifact of {len(data)} bytes")
    return data[index * LEAF_SIZE : (index + 1) * LEAF_SIZE].ljust(LEAF_SIZE, b"\0")


@dataclass(frozen=True)
class StorageProof:
    """One challenged leaf of one artifact, with its inclusion path to the committed root."""

    index: int
    leaf: bytes
    path: tuple[bytes, ...]

    def to_body(self) -> dict[str, Any]:
        return {"index": self.index, "leaf": self.leaf, "path": list(self.path)}

    @classmethod
    def from_body(cls, body: Any) -> StorageProof:
        """Shape-check untrusted input: exactly these fields, in bounds."""
        if not isinstance(body, dict) or set(body) != {"index", "leaf", "path"}:
            raise ProofError("a storage proof is {index, leaf, path}")
        index, leaf, path = body["index"], body["leaf"], body["path"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ProofError("a storage proof's index is a non-negative integer")
        if not isinstance(leaf, bytes) or len(leaf) != LEAF_SIZE:
            raise ProofError(f"a storage proof's leaf is {LEAF_SIZE} bytes")
        if not isinstance(path, list) or len(path) > MAX_PATH:
            raise ProofError(f"a storage proof's path is a list of at most {MAX_PATH} hashes")
        if not all(isinstance(p, bytes) and len(p) == HASH_SIZE for p in path):
            raise ProofError(f"a storage proof's path holds {HASH_SIZE}-byte hashes")
        return cls(index, leaf, tuple(path))

    @property
    def size_bytes(self) -> int:
        """What the proof costs on the ledger, before encoding: index (8), leaf, path."""
        return 8 + len(self.leaf) + HASH_SIZE * len(self.path)


class ArtifactTree:
    """The Merkle tree over an artifact's leaves: its root, and proofs of any leaf."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.size = len(self.data)
        self.leaves = leaf_count(self.size)
        hashes = [leaf_hash(leaf_at(self.data, i)) for i in range(self.leaves)]
        self.levels = tree_levels(hashes) if hashes else [[]]
        self.root = root_at(self.levels, self.leaves) if hashes else EMPTY_ROOT

    def prove(self, index: int) -> StorageProof:
        leaf = leaf_at(self.data, index)
        path = inclusion_proof(index, self.leaves, lambda level, i: self.levels[level][i])
        return StorageProof(index, leaf, tuple(path))


def commit(data: bytes) -> tuple[bytes, int]:
    """(root, size) of an artifact: what a round record commits."""
    tree = ArtifactTree(data)
    return tree.root, tree.size


def challenge_indices(
    beacon: bytes, artifact: str, holder: str, leaves: int, k: int = CHALLENGES
) -> list[int]:
    """The `k` distinct leaf indices (all of them when there are fewer) `holder` must prove for
    `artifact` (its printed CID), drawn from `beacon`: the attempt beacon of the challenging
    round (`protocol.beacon.attempt_beacon`). SHA-256 in counter mode, 8 bytes per draw reduced
    mod `leaves`: a bias below leaves / 2**64, nothing a holder can use."""
    if not MIN_CHALLENGES <= k <= MAX_CHALLENGES:
        raise ProofError(f"{k} challenges per artifact; {MIN_CHALLENGES} to {MAX_CHALLENGES}")
    if len(beacon) != 32:
        raise ProofError("a challenge is drawn from a 32-byte beacon")
    if leaves <= k:
        return list(range(leaves))
    seed = hashlib.sha256(
        _TAG + b"|" + beacon + b"|" + artifact.encode() + b"|" + holder.encode()
    ).digest()
    out: list[int] = []
    counter = 0
    while len(out) < k:
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
        for j in range(0, 32, 8):
            index = int.from_bytes(block[j : j + 8], "big") % leaves
            if index not in out and len(out) < k:
                out.append(index)
    return out


def check_proof(root: bytes, size: int, proof: StorageProof, index: int) -> None:
    """ProofError (naming the leaf) unless `proof` answers the challenge of leaf `index` of the
    artifact committed as (root, size)."""
    if proof.index != index:
        raise ProofError(f"a proof of leaf {proof.index} answers the challenge of leaf {index}")
    leaves = leaf_count(size)
    if not 0 <= index < leaves:
        raise ProofError(f"leaf {index} is not in an artifact of {size} bytes")
    try:
        verify_inclusion(index, leaves, leaf_hash(proof.leaf), proof.path, root)
    except ProofError as exc:
        raise ProofError(f"leaf {index}: {exc}") from None


def check_answer(
    root: bytes, size: int, indices: Sequence[int], proofs: Sequence[StorageProof]
) -> None:
    """ProofError unless `proofs` answer exactly the challenged `indices`, in order."""
    if len(proofs) != len(indices):
        raise ProofError(f"{len(proofs)} proofs answer {len(indices)} challenged leaves")
    for index, proof in zip(indices, proofs, strict=True):
        check_proof(root, size, proof, index)


# -- who holds what, and the round record's section ----------------------------------------------


def holders_for(
    beacon: bytes, artifact: str, leader: str, members: Sequence[str], replicas: int
) -> list[str]:
    """The members that hold `artifact`: the leader that made it, then the first replicas - 1
    others in the order sha256(beacon | artifact | member), `beacon` being the attempt beacon of
    the round that made it. `replicas` 0 (the default) means every member."""
    others = _member_order(beacon, artifact, [m for m in members if m != leader])
    if leader not in members:
        raise ProofError(f"leader {leader} is not a member")
    count = len(members) if replicas == 0 else replicas
    if not min(3, len(members)) <= count <= len(members):
        raise ProofError(
            f"replicas = {replicas}: between min(3, n) = {min(3, len(members))} and "
            f"n = {len(members)}, or 0 for every member"
        )
    return [leader, *others[: count - 1]]


@dataclass(frozen=True)
class HolderAnswer:
    """One holder's proofs for one artifact, one per challenged leaf, in challenge order, and the
    holder's Ed25519 signature over them (`answer_statement`): the record shows who proved what,
    not only the leader's word. `store prove` prints an unsigned one (signature empty)."""

    artifact: str
    holder: str
    proofs: tuple[StorageProof, ...]
    signature: bytes = b""

    def to_body(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "holder": self.holder,
            "proofs": [p.to_body() for p in self.proofs],
            "signature": self.signature,
        }

    @classmethod
    def from_body(cls, body: Any) -> HolderAnswer:
        keys = {"artifact", "holder", "proofs", "signature"}
        if not isinstance(body, dict) or set(body) != keys:
            raise ProofError("a holder's answer is {artifact, holder, proofs, signature}")
        artifact, holder, proofs = body["artifact"], body["holder"], body["proofs"]
        signature = body["signature"]
        if not isinstance(artifact, str) or not isinstance(holder, str):
            raise ProofError("a holder's answer names its artifact and holder as text")
        if not isinstance(proofs, list) or len(proofs) > MAX_CHALLENGES:
            raise ProofError(f"a holder's answer holds at most {MAX_CHALLENGES} proofs")
        if not isinstance(signature, bytes) or len(signature) not in (0, SIGNATURE_BYTES):
            raise ProofError(f"a holder's answer is signed with {SIGNATURE_BYTES} bytes (or not)")
        return cls(artifact, holder, tuple(StorageProof.from_body(p) for p in proofs), signature)


@dataclass(frozen=True)
class AnswerScope:
    """What a holder's signature on its answer is bound to besides the answer itself: the
    consortium (genesis digest), the run, the round and the attempt whose beacon drew the
    challenge; and, to check signatures, the members' public keys."""

    consortium: bytes
    run: str
    round: int
    attempt: int
    keys: Mapping[str, bytes] = field(default_factory=dict)


def answer_statement(scope: AnswerScope, answer: HolderAnswer, root: bytes) -> dict[str, Any]:
    """What a holder signs (domain `storage-answer`, bound to the genesis digest): run, round,
    attempt, holder, artifact CID, the committed root and the digest of its proofs."""
    return {
        "run": scope.run,
        "round": scope.round,
        "attempt": scope.attempt,
        "holder": answer.holder,
        "artifact": answer.artifact,
        "root": root,
        "proofs": digest([p.to_body() for p in answer.proofs]),
    }


def sign_answer(
    identity: NodeIdentity, scope: AnswerScope, answer: HolderAnswer, root: bytes
) -> HolderAnswer:
    """`answer` signed by its holder (`identity`)."""
    body = answer_statement(scope, answer, root)
    return replace(answer, signature=identity.sign(Domain.STORAGE_ANSWER, body, scope.consortium))


def check_answer_signature(scope: AnswerScope, answer: HolderAnswer, root: bytes) -> None:
    """ProofError naming the holder unless `answer` carries its holder's signature over this
    consortium, run, round, attempt, artifact, root and proofs."""
    key = scope.keys.get(answer.holder)
    if key is None:
        raise ProofError(f"{answer.holder} is not a member, so it cannot answer a challenge")
    try:
        verify_signature(
            key,
            Domain.STORAGE_ANSWER,
            answer_statement(scope, answer, root),
            answer.signature,
            scope.consortium,
        )
    except SignatureError:
        raise ProofError(
            f"not signed by {answer.holder} for round {scope.round}, attempt {scope.attempt}"
        ) from None


@dataclass(frozen=True)
class Challenged:
    """What a verifier recomputes for one challenged (artifact, holder): the committed root and
    size (from the record that made the artifact) and the indices (from this round's beacon)."""

    artifact: str
    holder: str
    root: bytes
    size: int
    indices: tuple[int, ...]


def check_answers(
    challenged: Sequence[Challenged],
    answers: Sequence[HolderAnswer],
    missing: Sequence[tuple[str, str]],
    scope: AnswerScope,
) -> list[tuple[str, str]]:
    """The verifier rule `storage-proof-invalid`, pure: every challenged (artifact, holder) pair
    is answered or listed missing, exactly once, nothing else is, every answer proves every
    challenged leaf and carries its holder's signature (`scope`: this round). Returns the
    (artifact, holder) pairs listed missing: the holders to name and re-replicate from.
    ProofError naming the pair otherwise."""
    wanted = {(c.artifact, c.holder): c for c in challenged}
    seen: set[tuple[str, str]] = set()
    for pair in [*((a.artifact, a.holder) for a in answers), *missing]:
        if pair not in wanted:
            raise ProofError(f"storage-proof-invalid: {pair[1]} was not challenged on {pair[0]}")
        if pair in seen:
            raise ProofError(f"storage-proof-invalid: {pair[1]} on {pair[0]} is listed twice")
        seen.add(pair)
    for pair in wanted:
        if pair not in seen:
            raise ProofError(
                f"storage-proof-invalid: the challenge of {pair[1]} on {pair[0]} is neither "
                "answered nor listed missing"
            )
    for answer in answers:
        c = wanted[(answer.artifact, answer.holder)]
        try:
            check_answer(c.root, c.size, c.indices, answer.proofs)
            check_answer_signature(scope, answer, c.root)
        except ProofError as exc:
            raise ProofError(
                f"storage-proof-invalid: {answer.holder}'s proof of {answer.artifact}: {exc}"
            ) from None
    return list(missing)


# -- the round record's commitments, and what earlier rounds committed ---------------------------

#: Entries of a record's storage section at most (commitments, answers, missing, each).
MAX_ENTRIES = 100_000
_MAX_CID = 256


def _member_order(beacon: bytes, artifact: str, members: Sequence[str]) -> list[str]:
    """`members` in the order sha256(tag | beacon | artifact | member): the order `holders_for`
    picks holders in, and re-replication picks the next one in."""
    return sorted(
        members,
        key=lambda m: hashlib.sha256(
            _TAG + b"|holders|" + beacon + b"|" + artifact.encode() + b"|" + m.encode()
        ).digest(),
    )


@dataclass(frozen=True)
class Commitment:
    """One artifact as a round record commits it: its printed CID, its size, the Merkle root of
    its 32-byte leaves, and the members that hold it (the leader first)."""

    artifact: str
    size: int
    root: bytes
    holders: tuple[str, ...]

    def to_body(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "size": self.size,
            "root": self.root,
            "holders": list(self.holders),
        }

    @classmethod
    def from_body(cls, body: Any) -> Commitment:
        if not isinstance(body, dict) or set(body) != {"artifact", "size", "root", "holders"}:
            raise ProofError("a storage commitment is {artifact, size, root, holders}")
        artifact, size, root, holders = (
            body["artifact"],
            body["size"],
            body["root"],
            body["holders"],
        )
        if not isinstance(artifact, str) or not 0 < len(artifact) <= _MAX_CID:
            raise ProofError("a storage commitment names its artifact by CID")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**53:
            raise ProofError("a storage commitment's size is a non-negative integer")
        if not isinstance(root, bytes) or len(root) != HASH_SIZE:
            raise ProofError(f"a storage commitment's root is {HASH_SIZE} bytes")
        if (
            not isinstance(holders, list)
            or not 0 < len(holders) <= MAX_ENTRIES
            or not all(isinstance(h, str) and 0 < len(h) <= 256 for h in holders)
            or len(set(holders)) != len(holders)
        ):
            raise ProofError("a storage commitment's holders are distinct member ids")
        return cls(artifact, size, root, tuple(holders))


def artifact_name(cid: Any) -> str:
    """How the storage section names an artifact: its CID as printed everywhere else (base32
    for CIDv1), whatever base the CID object at hand would print in."""
    return str(as_cid(cid))


def commit_artifact(
    beacon: bytes, artifact: str, data: bytes, leader: str, members: Sequence[str], replicas: int
) -> Commitment:
    """The commitment a round record carries for an artifact it made: root and size over
    `data`, holders from `beacon` (the attempt beacon of the round)."""
    root, size = commit(data)
    return Commitment(
        artifact, size, root, tuple(holders_for(beacon, artifact, leader, members, replicas))
    )


def sample_artifacts(beacon: bytes, artifacts: Sequence[str], count: int) -> set[str]:
    """The at most `count` of `artifacts` a challenge round challenges: the first `count` in the
    order sha256(tag | "sample" | beacon | artifact), `beacon` being the attempt beacon of the
    challenging round (no member can steer it or know it before the round)."""
    if not 1 <= count <= MAX_CHALLENGE_ARTIFACTS:
        raise ProofError(
            f"challenge_artifacts = {count}: between 1 and {MAX_CHALLENGE_ARTIFACTS} per round"
        )
    order = sorted(
        artifacts,
        key=lambda a: hashlib.sha256(_TAG + b"|sample|" + beacon + b"|" + a.encode()).digest(),
    )
    return set(order[:count])


def challenged_pairs(
    beacon: bytes,
    holdings: Sequence[Commitment],
    k: int = CHALLENGES,
    artifacts: int = CHALLENGE_ARTIFACTS,
) -> list[Challenged]:
    """Every (artifact, holder) a challenge round challenges: at most `artifacts` of the
    artifacts earlier rounds committed (`sample_artifacts`), each at each of its holders, with
    k leaf indices drawn from `beacon` (the attempt beacon of the challenging round); in the
    order the artifacts were committed."""
    drawn = sample_artifacts(beacon, [c.artifact for c in holdings], artifacts)
    return [
        Challenged(
            c.artifact,
            holder,
            c.root,
            c.size,
            tuple(challenge_indices(beacon, c.artifact, holder, leaf_count(c.size), k)),
        )
        for c in holdings
        if c.artifact in drawn
        for holder in c.holders
    ]


def answer_challenge(data: bytes, c: Challenged) -> HolderAnswer | None:
    """A holder's answer to challenge `c` from its own copy `data`, or None when that copy is not
    the committed one (lost or corrupted: the holder cannot prove it)."""
    tree = ArtifactTree(data)
    if (tree.root, tree.size) != (c.root, c.size):
        return None
    return HolderAnswer(c.artifact, c.holder, tuple(tree.prove(i) for i in c.indices))


def rereplicate(
    beacon: bytes,
    held: Commitment,
    missing: Sequence[str],
    proved: Sequence[str],
    members: Sequence[str],
) -> Commitment | None:
    """The re-commitment the next round owes for `held` after a challenge round (attempt beacon
    `beacon`) named `missing` of its holders: each missing holder is replaced by the next member
    in the beacon order that holds nothing of it (the missing holder itself when every member
    holds it), which fetches the artifact from a holder that proved it. None when no holder
    proved it (the artifact is lost: nobody can re-replicate it)."""
    if not proved:
        return None
    holders = list(held.holders)
    for gone in missing:
        if gone not in holders:
            continue  # already replaced by a re-commitment in the same record
        taken = set(holders) | set(missing)
        spare = [m for m in _member_order(beacon, held.artifact, members) if m not in taken]
        holders[holders.index(gone)] = spare[0] if spare else gone
    return Commitment(held.artifact, held.size, held.root, tuple(holders))


@dataclass(frozen=True)
class StorageState:
    """What a run's earlier round records committed, as the next round needs it: every artifact
    with its latest commitment (re-commitments replace holders), the re-commitments the next
    round owes, and the artifacts no holder could prove (lost)."""

    holdings: Mapping[str, Commitment] = field(default_factory=dict)
    owed: tuple[Commitment, ...] = ()
    lost: tuple[str, ...] = ()

    def after(
        self,
        beacon: bytes,
        commitments: Sequence[Commitment],
        answers: Sequence[HolderAnswer],
        missing: Sequence[tuple[str, str]],
        members: Sequence[str],
    ) -> StorageState:
        """The state once a record (attempt beacon `beacon`, its storage section) is committed."""
        holdings = dict(self.holdings)
        for c in commitments:
            holdings[c.artifact] = c
        owed: list[Commitment] = []
        lost = list(self.lost)
        gone: dict[str, list[str]] = {}
        for artifact, holder in missing:
            gone.setdefault(artifact, []).append(holder)
        proved: dict[str, list[str]] = {}
        for a in answers:
            proved.setdefault(a.artifact, []).append(a.holder)
        for artifact, holders in gone.items():
            held = holdings.get(artifact)
            if held is None:
                continue
            again = rereplicate(beacon, held, holders, proved.get(artifact, []), members)
            if again is None:
                if artifact not in lost:
                    lost.append(artifact)
            else:
                owed.append(again)
        return StorageState(holdings, tuple(owed), tuple(lost))

    def challenged(self, beacon: bytes, artifacts: int) -> list[Challenged]:
        """What a challenge round (attempt beacon `beacon`) challenges: at most `artifacts`
        artifacts (the run's `challenge_artifacts`), each at every holder."""
        return challenged_pairs(beacon, list(self.holdings.values()), artifacts=artifacts)


def is_challenge_round(round_no: int, every: int) -> bool:
    return every > 0 and round_no % every == 0

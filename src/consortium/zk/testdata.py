"""Committed test data and the sample (pure; no EZKL here).

At run start a node commits to its test records: record i (in a fixed order) becomes the vector
[features | label | salt columns], its commitment c_i is the KZG commitment EZKL's `polycommit`
makes of that vector as a circuit input (`circuit.record_commitment`), and the run-start
commitment is the RFC 9162 Merkle root over leaf_hash(c_i), with the ledger's own hashing
(`ledger/merkle.py`). The salt columns (random, kept by the node) stop anyone from testing a
guessed row against a published commitment.

Later the sample of s positions comes from the beacon of a later round
(`protocol.beacon.attempt_beacon`), which the node could not foresee when it committed; each
sampled record's commitment comes with its inclusion path to the root, and the proof's
per-input commitments must equal them. A drawn position whose record's consent was withdrawn
is skipped, and the skipped positions are published (counted), so the sample stays a function
of the beacon and of what the node declares withdrawn.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from consortium.core.errors import ProofError
from consortium.ledger.merkle import (
    EMPTY_ROOT,
    inclusion_proof,
    leaf_hash,
    root_at,
    tree_levels,
    verify_inclusion,
)
from consortium.zk.errors import RECORD_NOT_COMMITTED, SAMPLE_MISMATCH, ZkError

COMMITMENT_SIZE = 32  # a compressed BN254 G1 point
_TAG = b"consortium/eval-sample/v1"


class CommittedTestData:
    """The Merkle tree over per-record commitments: its root, and inclusion paths."""

    def __init__(self, commitments: Sequence[bytes]) -> None:
        for c in commitments:
            if len(c) != COMMITMENT_SIZE:
                raise ZkError(RECORD_NOT_COMMITTED, f"a record commitment is {len(c)} bytes")
        self.commitments = [bytes(c) for c in commitments]
        self.size = len(self.commitments)
        hashes = [leaf_hash(c) for c in self.commitments]
        self.levels = tree_levels(hashes) if hashes else [[]]
        self.root = root_at(self.levels, self.size) if hashes else EMPTY_ROOT

    def path(self, index: int) -> list[bytes]:
        return inclusion_proof(index, self.size, lambda level, i: self.levels[level][i])


def check_included(
    root: bytes, size: int, index: int, commitment: bytes, path: Sequence[bytes]
) -> None:
    """Refuse (`record-not-committed`) a record commitment not at `index` under `root`."""
    try:
        verify_inclusion(index, size, leaf_hash(commitment), path, root)
    except ProofError as exc:
        raise ZkError(
            RECORD_NOT_COMMITTED,
            f"the record at position {index} is not the one committed at run start: {exc}",
        ) from exc


@dataclass(frozen=True)
class Sample:
    indices: tuple[int, ...]  # the s positions proved, in draw order
    withdrawn: tuple[int, ...]  # drawn positions skipped because consent was withdrawn


def sample_indices(beacon: bytes, size: int, s: int, withdrawn: Collection[int] = ()) -> Sample:
    """The s distinct positions of `size` committed records to prove, drawn from `beacon` (the
    attempt beacon of a round after the commitment): SHA-256 in counter mode, 8 bytes per draw
    reduced mod `size` (bias below size / 2**64), repeats dropped, positions in `withdrawn`
    skipped and listed. Refused if fewer than s records remain."""
    if len(beacon) != 32:
        raise ZkError(SAMPLE_MISMATCH, "the sample is drawn from a 32-byte beacon")
    if s < 1:
        raise ZkError(SAMPLE_MISMATCH, f"a sample of {s} records")
    out = set(withdrawn)
    bad = [i for i in out if not 0 <= i < size]
    if bad:
        raise ZkError(SAMPLE_MISMATCH, f"withdrawn positions {sorted(bad)} are not committed")
    if size - len(out) < s:
        raise ZkError(
            SAMPLE_MISMATCH,
            f"{size} committed records, {len(out)} withdrawn: fewer than the sample of {s}",
        )
    seen: set[int] = set()
    chosen: list[int] = []
    skipped: list[int] = []
    counter = 0
    while len(chosen) < s:
        block = hashlib.sha256(_TAG + beacon + counter.to_bytes(8, "big")).digest()
        counter += 1
        for k in range(0, 32, 8):
            i = int.from_bytes(block[k : k + 8], "big") % size
            if i in seen:
                continue
            seen.add(i)
            if i in out:
                skipped.append(i)
            else:
                chosen.append(i)
            if len(chosen) == s:
                break
    return Sample(tuple(chosen), tuple(skipped))


def wilson_interval(correct: int, s: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) for accuracy correct/s on s sampled records:
    what the sample says about the node's whole committed test set."""
    if s <= 0 or not 0 <= correct <= s:
        raise ValueError(f"{correct} correct of {s}")
    p = correct / s
    denom = 1 + z * z / s
    centre = (p + z * z / (2 * s)) / denom
    half = z * math.sqrt(p * (1 - p) / s + z * z / (4 * s * s)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def half_width(s: int, correct: int | None = None, z: float = 1.96) -> float:
    """Half the width of the 95% Wilson interval at s: for `correct` when given, else the
    widest over every possible count (near s/2), what s guarantees before the proof is made."""
    counts = range(s + 1) if correct is None else [correct]
    return max((hi - lo) / 2 for lo, hi in (wilson_interval(c, s, z) for c in counts))

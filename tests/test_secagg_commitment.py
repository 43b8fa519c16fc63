"""Homomorphic vector commitments to masked inputs (`protocol/secagg/commitment.py`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from py_arkworks_bls12381 import G1Point, Scalar

from consortium.protocol.secagg import commitment as vc
from consortium.protocol.secagg.errors import SecAggError

D = 64


def _words(seed: int, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32)


def test_the_sum_of_commitments_commits_to_the_integer_sum() -> None:
    inputs = [_words(s) for s in range(5)]
    total = np.sum([w.astype(np.uint64) for w in inputs], axis=0, dtype=np.uint64)
    commitments = [vc.commit_words(w) for w in inputs]
    assert all(len(c) == vc.COMMITMENT_BYTES for c in commitments)
    assert vc.sum_matches(total, commitments)
    # The sum reduced mod 2**32 (what unmasking uses) is not what the commitments bind.
    assert not vc.sum_matches(total % 2**32, commitments)
    for j in (0, D // 2, D - 1):
        wrong = total.copy()
        wrong[j] += 1
        assert not vc.sum_matches(wrong, commitments)
    # Moving one unit between two coordinates keeps every modular invariant but not the commitment.
    shifted = total.copy()
    shifted[0] += 1
    shifted[1] -= 1
    assert not vc.sum_matches(shifted, commitments)
    assert not vc.sum_matches(total, commitments[:-1])


def test_generators_are_hashed_to_the_curve_deterministically_and_independent_of_d() -> None:
    g = vc.generators(8)
    again = vc.generators(3)
    assert [p.to_compressed_bytes() for p in g[:3]] == [p.to_compressed_bytes() for p in again]
    assert g[0] == G1Point.hash_to_curve((0).to_bytes(8, "big"), vc.GENERATOR_DST)
    assert len({p.to_compressed_bytes() for p in g}) == 8
    # Not the base point nor a small multiple of the first generator (a seeded scalar
    # multiple would be; a hashed point is not, for any multiple anybody can find).
    assert G1Point() not in g
    assert all(g[j] != g[0] * Scalar(k) for j in range(1, 8) for k in range(2, 50))
    # Pinned: a change of DST, index encoding or library mapping changes every commitment.
    assert hashlib.sha256(g[0].to_compressed_bytes()).hexdigest()[:16] == PINNED_G0


PINNED_G0 = "88bfccafd618b8c0"  # sha256(G_0), first 8 bytes, as arkworks 0.5.0 hashes it


def test_commitments_that_are_not_subgroup_points_are_refused() -> None:
    good = vc.commit_words(_words(1))
    with pytest.raises(SecAggError, match="48 bytes"):
        vc.parse(good[:-1])
    with pytest.raises(SecAggError, match="not"):
        vc.parse(bytes(48))  # no flag bits: not a compressed encoding
    with pytest.raises(SecAggError, match="not"):
        vc.parse(b"\x9f" + bytes(47))
    assert vc.parse(good).to_compressed_bytes() == good


def test_the_sum_is_published_at_the_width_its_contributors_need() -> None:
    assert vc.sum_width(1) == 4
    assert vc.sum_width(2) == 5 and vc.sum_width(100) == 5 and vc.sum_width(256) == 5
    assert vc.sum_width(257) == 6
    total = np.array([0, 1, 99 * (2**32 - 1), 2**39 - 1], dtype=np.uint64)
    raw = vc.encode_sum(total, 5)
    assert len(raw) == 4 * 5
    assert np.array_equal(vc.decode_sum(raw, 4, 5), total)
    with pytest.raises(SecAggError, match="fit"):
        vc.encode_sum(np.array([2**40], dtype=np.uint64), 5)
    with pytest.raises(SecAggError, match="entries"):
        vc.decode_sum(raw[:-1], 4, 5)

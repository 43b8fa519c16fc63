"""Homomorphic vector commitments to masked inputs, so a voter checks a sum without the inputs.

Each contributor commits to its masked input y (d words, each < 2**32) as

    C = sum_j y_j * G_j        in G1 of BLS12-381 (prime order r, about 2**255),

where G_j = hash_to_curve(DST, j) (RFC 9380, `BLS12381G1_XMD:SHA-256_SSWU_RO_`): nobody knows a
discrete log between any two generators, so C is binding (opening C to two vectors would give
such a log). It is not hiding, and need not be: it is a function of y, which the leader already
sees. The map is additive, so for the integer sum S = sum_i y_i (no reduction mod 2**32)

    sum_j S_j * G_j == sum_i C_i,

which a voter checks with one multi-scalar multiplication of length d however many contributed.
Since every S_j < n * 2**32 < r, equality in the group means equality of the integers, so a
leader that publishes any other S is caught. The library is `py-arkworks-bls12381` (arkworks'
Rust implementation); nothing here does curve arithmetic by hand.

Generators cost about 0.4 ms each to derive; they do not depend on d (index j is the same point
for every length), so one process-wide list is extended on demand and reused (and
`node.generator_cache` keeps it on disk between processes).

Every voter checks the same published sum with the same multi-scalar multiplication. Several
members in one process (simulations, benchmarks) would repeat it, so `sum_matches` remembers the
last few results of `commit(total)` by the sum's SHA-256: a pure function's memo, which changes
no answer; each member still compares against the sum of its own contributors' commitments.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from py_arkworks_bls12381 import G1Point, Scalar

from consortium.protocol.secagg.errors import SecAggError

#: Domain separation of the generators: changing it changes every commitment.
GENERATOR_DST = b"consortium/secagg/v2/vector-commitment/BLS12381G1_XMD:SHA-256_SSWU_RO_"
#: Order of the BLS12-381 scalar field (and of G1).
GROUP_ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
#: Bytes of a compressed G1 point.
COMMITMENT_BYTES = 48
WORD_LIMIT = 2**32  # masked inputs are words mod 2**32

_generators: list[G1Point] = []
_lock = threading.Lock()
#: commit(total) of the last few sums checked in this process, by the sum's SHA-256.
_SUM_MEMO_SIZE = 4
_sum_memo: OrderedDict[bytes, G1Point] = OrderedDict()
_memo_lock = threading.Lock()


def derive_generator(j: int) -> G1Point:
    """G_j from scratch: hash-to-curve of the domain-separated index."""
    return G1Point.hash_to_curve(j.to_bytes(8, "big"), GENERATOR_DST)


def generators(d: int) -> list[G1Point]:
    """G_0 .. G_{d-1}: hash-to-curve of a domain-separated index, cached for the process."""
    if d < 0:
        raise SecAggError("vector length must be non-negative")
    with _lock:
        for j in range(len(_generators), d):
            _generators.append(derive_generator(j))
        return _generators[:d]


def derived() -> int:
    """How many generators this process holds already."""
    with _lock:
        return len(_generators)


def adopt_generators(points: Sequence[G1Point]) -> None:
    """Take G_0 .. G_{m-1} from a trusted cache (`node.generator_cache` checks it) if that is
    more than this process has derived."""
    with _lock:
        if len(points) > len(_generators):
            _generators[:] = points


def max_sum_entry(contributors: int) -> int:
    """The largest entry an honest integer sum of `contributors` masked inputs can hold."""
    return contributors * (WORD_LIMIT - 1)


def sum_width(contributors: int) -> int:
    """Bytes per entry of a published integer sum of `contributors` masked inputs (at least 4)."""
    return max(4, (max_sum_entry(max(contributors, 1)).bit_length() + 7) // 8)


def _scalars(values: npt.NDArray[np.uint64]) -> list[Scalar]:
    """Non-negative integers below 2**64 as field scalars (32-byte little-endian each)."""
    d = values.shape[0]
    padded = np.zeros((d, 32), dtype=np.uint8)
    padded[:, :8] = values.astype("<u8", copy=False).view(np.uint8).reshape(d, 8)
    raw = padded.tobytes()
    return [Scalar.from_le_bytes(raw[32 * j : 32 * j + 32]) for j in range(d)]


def commit(values: npt.NDArray[np.uint32] | npt.NDArray[np.uint64]) -> G1Point:
    """sum_j values_j * G_j for a vector of non-negative integers below 2**64."""
    v = np.asarray(values)
    if v.ndim != 1 or v.dtype not in (np.uint32, np.uint64):
        raise SecAggError("a commitment takes a 1-d vector of uint32 or uint64 words")
    if v.shape[0] == 0:
        return G1Point.identity()
    return G1Point.multiexp_unchecked(generators(v.shape[0]), _scalars(v.astype(np.uint64)))


def commit_words(words: npt.NDArray[np.uint32]) -> bytes:
    """The 48-byte commitment a contributor signs to its masked input."""
    return commit(words).to_compressed_bytes()


def parse(commitment: bytes) -> G1Point:
    """A commitment's point; raises SecAggError unless it is a valid point of the subgroup."""
    if len(commitment) != COMMITMENT_BYTES:
        raise SecAggError(f"a commitment is {COMMITMENT_BYTES} bytes, got {len(commitment)}")
    try:
        point = G1Point.from_compressed_bytes(commitment)
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise SecAggError(f"a commitment is not a point of G1: {exc}") from exc
    if not point.is_in_subgroup():
        raise SecAggError("a commitment is not in the prime-order subgroup of G1")
    return point


def combine(commitments: Iterable[bytes]) -> G1Point:
    """sum_i C_i (each parsed and checked)."""
    total = G1Point.identity()
    for c in commitments:
        total = total + parse(c)
    return total


def sum_matches(total: npt.NDArray[np.uint64], commitments: Iterable[bytes]) -> bool:
    """Whether the integer vector `total` is the sum of the vectors the commitments bind."""
    key = hashlib.sha256(np.ascontiguousarray(total, dtype="<u8").tobytes()).digest()
    with _memo_lock:
        expected = _sum_memo.get(key)
    if expected is None:
        expected = commit(total)
        with _memo_lock:
            _sum_memo[key] = expected
            while len(_sum_memo) > _SUM_MEMO_SIZE:
                _sum_memo.popitem(last=False)
    return expected == combine(commitments)


def encode_sum(total: npt.NDArray[np.uint64], width: int) -> bytes:
    """`total` as `width`-byte little-endian integers (width <= 8)."""
    d = total.shape[0]
    raw = total.astype("<u8", copy=False).view(np.uint8).reshape(d, 8)
    if width < 8 and np.any(raw[:, width:]):
        raise SecAggError(f"the sum does not fit in {width} bytes per entry")
    return raw[:, :width].tobytes()


def decode_sum(data: bytes, d: int, width: int) -> npt.NDArray[np.uint64]:
    """Inverse of `encode_sum`; raises SecAggError on a wrong length."""
    if not 1 <= width <= 8 or len(data) != d * width:
        raise SecAggError(f"the published sum must be {d} entries of {width} bytes")
    padded = np.zeros((d, 8), dtype=np.uint8)
    padded[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(d, width)
    return padded.view("<u8").reshape(d).astype(np.uint64)

"""Round parameters and the SecAgg+ neighbour graph every node recomputes from the round id.

The graph is a Harary-style ring over a permutation of the participants seeded by the round id:
participants are ordered by SHA-256(tag, round_id, node_id) and each is linked to the k/2 nearest
on either side (k even), or to everyone when k = n - 1. Every node derives the same graph with no
communication, and a fresh round id gives a fresh random graph (Bell et al., CCS 2020).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

from consortium.protocol.secagg.errors import SecAggParamsError
from consortium.protocol.secagg.quantize import check_no_wrap

MODULUS = 2**32
GRAPH_TAG = b"consortium/secagg/v1/graph"


def default_degree(n: int) -> int:
    """A neighbour degree of O(log n) (Bell et al.): the even number ~2*log2(n), capped at n - 1."""
    if n <= 1:
        return 0
    k = 2 * math.ceil(math.log2(n))
    return n - 1 if k >= n - 1 else k


def default_threshold(k: int) -> int:
    """Smallest threshold with 2t > k + 1, so no two disjoint share sets both reach t."""
    return (k + 1) // 2 + 1


@dataclass(frozen=True)
class SecAggParams:
    """Public parameters of one aggregation round; every node must hold identical values."""

    round_id: bytes
    participants: tuple[str, ...]
    k: int
    threshold: int
    vector_length: int
    clip: float
    scale: float
    modulus: int = MODULUS
    max_input_bytes: int = 0  # 0 means exactly 4 * vector_length
    #: Signatures of distinct participants a survivor set needs before anyone unmasks (the
    #: consortium's quorum in a round: two certified sets would need an honest member to sign
    #: both). 0 means ⌈2n/3⌉ of the participants.
    quorum: int = 0
    #: The fewest survivors a participant agrees to unmask for (f + min_honest in a round).
    #: 0 means the threshold.
    min_survivors: int = 0
    _neighbours: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = tuple(self.participants)
        object.__setattr__(self, "participants", parts)
        n = len(parts)
        if not isinstance(self.round_id, bytes) or not 1 <= len(self.round_id) <= 64:
            raise SecAggParamsError("round_id must be 1..64 bytes")
        if list(parts) != sorted(set(parts)) or not all(isinstance(p, str) and p for p in parts):
            raise SecAggParamsError("participants must be a sorted list of distinct node ids")
        if n < 2:
            raise SecAggParamsError("secure aggregation needs at least 2 participants")
        if not 1 <= self.k <= n - 1 or (self.k % 2 and self.k != n - 1):
            raise SecAggParamsError(
                f"neighbour degree k={self.k} must be even and <= n-1={n - 1} (or exactly n-1)"
            )
        # No lower bound relative to k: t = f + 1 on the complete graph is what a dishonest third
        # needs, and two disjoint groups revealing both secrets of one node is prevented by the
        # quorum-certified survivor set every participant checks before it reveals anything.
        if not 1 <= self.threshold <= self.k + 1:
            raise SecAggParamsError(
                f"threshold t={self.threshold} must satisfy 1 <= t <= k+1 with k={self.k}"
            )
        if self.quorum == 0:
            object.__setattr__(self, "quorum", -(-2 * n // 3))
        if self.min_survivors == 0:
            object.__setattr__(self, "min_survivors", self.threshold)
        if not 1 <= self.quorum <= n or not 1 <= self.min_survivors <= n:
            raise SecAggParamsError(
                f"quorum {self.quorum} and min_survivors {self.min_survivors} must be in 1..{n}"
            )
        if self.modulus != MODULUS:
            raise SecAggParamsError("only the modulus 2**32 is supported")
        if self.vector_length < 1:
            raise SecAggParamsError("vector_length must be positive")
        if self.max_input_bytes == 0:
            object.__setattr__(self, "max_input_bytes", 4 * self.vector_length)
        if self.max_input_bytes < 4 * self.vector_length:
            raise SecAggParamsError(
                f"max_input_bytes={self.max_input_bytes} is below the {4 * self.vector_length} "
                "bytes of one masked vector"
            )
        check_no_wrap(n, self.clip, self.scale)
        object.__setattr__(self, "_neighbours", self._build_graph())

    @classmethod
    def create(
        cls,
        round_id: bytes,
        participants: list[str] | tuple[str, ...],
        vector_length: int,
        *,
        clip: float = 1.0,
        scale: float | None = None,
        k: int | None = None,
        threshold: int | None = None,
        quorum: int = 0,
        min_survivors: int = 0,
    ) -> SecAggParams:
        """Parameters with defaults: k ~ 2 log2 n, t just above (k+1)/2, the largest safe scale;
        a certified survivor set needs `quorum` signatures and at least `min_survivors`."""
        parts = tuple(sorted(participants))
        n = len(parts)
        kk = default_degree(n) if k is None else k
        if scale is None:
            scale = ((2**31 - 1) / n - 1) / clip * 0.5  # half the no-wrap bound, for headroom
        t = default_threshold(kk) if threshold is None else threshold
        return cls(
            round_id,
            parts,
            kk,
            t,
            vector_length,
            clip,
            scale,
            quorum=quorum,
            min_survivors=min_survivors,
        )

    def _build_graph(self) -> dict[str, frozenset[str]]:
        parts = self.participants
        n = len(parts)
        if self.k == n - 1:
            return {p: frozenset(q for q in parts if q != p) for p in parts}
        order = sorted(
            parts,
            key=lambda p: hashlib.sha256(
                GRAPH_TAG + len(self.round_id).to_bytes(1, "big") + self.round_id + p.encode()
            ).digest(),
        )
        half = self.k // 2
        return {
            p: frozenset(order[(i + j) % n] for j in range(-half, half + 1) if j != 0)
            for i, p in enumerate(order)
        }

    def neighbours(self, node: str) -> frozenset[str]:
        """The k neighbours of `node` in this round's graph."""
        return self._neighbours[node]

    def x_of(self, node: str) -> int:
        """Shamir x-coordinate of the shares `node` holds: 1 + its index among participants."""
        return self._index[node] + 1

    @cached_property
    def _index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.participants)}

    def is_participant(self, node: str) -> bool:
        return node in self._index

    @property
    def n(self) -> int:
        return len(self.participants)

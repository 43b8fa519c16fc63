"""The right edge of a Merkle log: enough to compute the next root without reading the ledger.

The protocol must check that a proposed tree head is the ledger plus one entry, without touching
disk: a node hands its state machine the frontier (hashes of the maximal complete subtrees, largest
first, i.e. `merkle.subtrees(0, size)`), and the machine folds new leaves in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.ledger.merkle import fold, leaf_hash, node_hash


@dataclass(frozen=True)
class Frontier:
    size: int
    hashes: tuple[bytes, ...]

    def root(self) -> bytes:
        return fold(self.hashes)

    def append(self, entry_bytes: bytes) -> Frontier:
        """The frontier after appending one entry (RFC 9162 leaf hashing)."""
        return self.append_hash(leaf_hash(entry_bytes))

    def append_hash(self, leaf: bytes) -> Frontier:
        """The frontier after appending a leaf whose hash is `leaf`."""
        hashes = [*self.hashes, leaf]
        size = self.size + 1
        # A subtree of width 2^k closes when the low k bits of the new size are zero: merge the
        # two right-most hashes once for every trailing zero bit of the new size.
        n = size
        while n % 2 == 0 and len(hashes) >= 2:
            right = hashes.pop()
            left = hashes.pop()
            hashes.append(node_hash(left, right))
            n //= 2
        return Frontier(size, tuple(hashes))

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, ())

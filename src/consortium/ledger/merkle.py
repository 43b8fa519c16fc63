"""RFC 9162 Merkle tree hashing and proofs (modelled on Go's golang.org/x/mod/sumdb/tlog).

We write our own rather than use pymerkle because the ledger's entries, tree nodes and heads must
commit in one SQLite transaction of our own schema; pymerkle owns its storage.

Addressing: the node (level, idx) is the complete, aligned subtree over leaves
[idx * 2**level, (idx + 1) * 2**level). Proof *generation* only ever needs such nodes, supplied by a
callable, so the same code serves an in-memory list and a database. Proof *verification* follows
RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from consortium.core.errors import ProofError

HASH_SIZE = 32

#: Hash of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: Returns the stored hash of the complete aligned subtree (level, idx).
SubtreeGetter = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_power_below(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """The complete aligned subtrees, largest first, whose fold is MTH(D[lo:hi]).

    Valid for the ranges RFC 9162's recursion produces (lo aligned to the size of the range rounded
    up to a power of two), which are the only ones proofs ask for.
    """
    out: list[tuple[int, int]] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        while lo % (1 << level):
            level -= 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine subtree hashes (largest first) right to left, as MTH's recursion does."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def range_hash(lo: int, hi: int, get: SubtreeGetter) -> bytes:
    return fold([get(level, idx) for level, idx in subtrees(lo, hi)])


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes, level by level (independent of any stored tree)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Carry the odd right-most node up unchanged: RFC 9162's unbalanced split gives the same root.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def tree_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every complete aligned subtree over `leaves`: levels[k][i] is node (k, i), the hash of
    leaves [i * 2**k, (i + 1) * 2**k); each node hashed once."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def root_at(levels: Sequence[Sequence[bytes]], size: int) -> bytes:
    """MTH of the first `size` leaves, from `tree_levels` of at least that many leaves."""
    return fold([levels[level][idx] for level, idx in subtrees(0, size)])


# -- proof shapes (which ranges each proof element covers) -----------------------------------------


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs make up PATH(index, D[size]) (RFC 9162 §2.1.3.1), in order."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_below(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()  # the recursion appends on the way back up
    return out


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs make up PROOF(old, D[new]) (RFC 9162 §2.1.4.1), in order."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old in (0, new):
        return []
    out: list[tuple[int, int]] = []
    lo, hi, complete = 0, new, True
    while True:
        m = old - lo
        if m == hi - lo:
            if not complete:
                out.append((lo, hi))
            break
        k = _largest_power_below(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, complete = lo + k, False
    out.reverse()
    return out


def needed_subtrees(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every stored node a set of ranges needs: lets a database fetch them in one query."""
    return [node for lo, hi in ranges for node in subtrees(lo, hi)]


def inclusion_proof(index: int, size: int, get: SubtreeGetter) -> list[bytes]:
    return [range_hash(lo, hi, get) for lo, hi in inclusion_ranges(index, size)]


def consistency_proof(old: int, new: int, get: SubtreeGetter) -> list[bytes]:
    return [range_hash(lo, hi, get) for lo, hi in consistency_ranges(old, new)]


# -- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------------------


def _check_hashes(proof: Sequence[bytes]) -> None:
    for p in proof:
        if len(p) != HASH_SIZE:
            raise ProofError(f"proof element is {len(p)} bytes, expected {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Recompute the root an inclusion proof implies (raises ProofError if it is malformed)."""
    _check_hashes([leaf, *proof])
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the tree `root`."""
    if root_from_inclusion_proof(index, size, leaf, proof) != root:
        raise ProofError(f"inclusion proof for leaf {index} does not match the root of size {size}")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless `proof` shows tree (new, new_root) extends (old, old_root)."""
    if not 0 <= old <= new:
        raise ProofError(f"size {new} cannot extend size {old}")
    _check_hashes(proof)
    if old == new:
        if proof or old_root != new_root:
            raise ProofError(f"two different roots for the same size {old}")
        return
    if old == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old & (old - 1) == 0:  # old is an exact power of two: its root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError(f"consistency proof does not match the root of size {old}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not match the root of size {new}")

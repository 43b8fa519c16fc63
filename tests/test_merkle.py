"""RFC 9162 hashing and proofs: published RFC 6962 vectors, a naive oracle, property tests."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.core.errors import ProofError
from consortium.ledger import merkle

# Test vectors from the certificate-transparency / transparency-dev merkle tests (RFC 6962).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index, tree size, proof)
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

# (old size, new size, proof)
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]


# -- an independent, naive oracle: RFC 9162's recursive definitions, word for word ----------------


def naive_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_mth(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [naive_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, leaves[:k], b), naive_mth(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_mth(leaves[:k])]


class MemTree:
    """Complete aligned subtrees of a list of leaves, as the ledger stores them."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        level = [merkle.leaf_hash(d) for d in leaves]
        lv = 0
        while level:
            for i, h in enumerate(level):
                self.nodes[(lv, i)] = h
            level = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            lv += 1

    def get(self, level: int, idx: int) -> bytes:
        return self.nodes[(level, idx)]


FULL = MemTree(LEAVES)


def test_hashing_primitives() -> None:
    assert merkle.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.root_from_leaf_hashes([]) == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"") == ROOTS[0]


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_match_published_vectors(n: int) -> None:
    hashes = [merkle.leaf_hash(d) for d in LEAVES[:n]]
    assert merkle.root_from_leaf_hashes(hashes) == ROOTS[n - 1]
    assert merkle.range_hash(0, n, FULL.get) == ROOTS[n - 1]
    assert naive_mth(LEAVES[:n]) == ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(index, size, FULL.get) == proof
    leaf = merkle.leaf_hash(LEAVES[index])
    merkle.verify_inclusion(index, size, leaf, proof, ROOTS[size - 1])
    # Corruptions from the reference suite must all fail.
    bad = [
        (index + 1, size, leaf, proof, ROOTS[size - 1]),
        (index, size * 2, leaf, proof, ROOTS[size - 1]),
        (index, size, merkle.leaf_hash(b"wrong"), proof, ROOTS[size - 1]),
        (index, size, leaf, proof, merkle.EMPTY_ROOT),
        (index, size, leaf, [*proof, ROOTS[size - 1]], ROOTS[size - 1]),
        (index, size, leaf, [ROOTS[size - 1], *proof], ROOTS[size - 1]),
        (index, size, leaf, [*proof, b""], ROOTS[size - 1]),
    ]
    if index > 0:
        bad.append((index - 1, size, leaf, proof, ROOTS[size - 1]))
    if size > 1:
        bad.append((index, size // 2, leaf, proof, ROOTS[size - 1]))
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        bad.append((index, size, leaf, flipped, ROOTS[size - 1]))
    if proof:
        bad.append((index, size, leaf, proof[:-1], ROOTS[size - 1]))
    for args in bad:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(old, new, FULL.get) == proof
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    merkle.verify_consistency(old, new, r1, r2, proof)
    if not proof:
        return
    bad = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        bad.append((old, new, r1, r2, flipped))
    for args in bad:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)


def test_edge_cases() -> None:
    with pytest.raises(ProofError):
        merkle.inclusion_ranges(0, 0)
    with pytest.raises(ProofError):
        merkle.inclusion_ranges(7, 7)
    with pytest.raises(ProofError):
        merkle.consistency_ranges(9, 8)
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, ROOTS[4], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [ROOTS[0]])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(0, 1, b"short", [], ROOTS[0])


def _leaves(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def _shape(index: int, size: int) -> list[bool]:
    return [lo < index for lo, _ in merkle.inclusion_ranges(index, size)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_property(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 300), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    leaves = _leaves(size)
    tree = MemTree(leaves)
    root = merkle.range_hash(0, size, tree.get)
    assert root == naive_mth(leaves)
    proof = merkle.inclusion_proof(index, size, tree.get)
    assert proof == naive_path(index, leaves)
    leaf = merkle.leaf_hash(leaves[index])
    merkle.verify_inclusion(index, size, leaf, proof, root)
    other = data.draw(st.integers(0, size - 1), label="other index")
    if other != index:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(other, size, leaf, proof, root)
    # A wrong size fails whenever it changes the proof's shape (a size with the same left/right
    # pattern, e.g. 257 vs 258 for leaf 0, describes the same path and legitimately verifies).
    wrong_size = data.draw(st.integers(1, 400), label="wrong size")
    if index < wrong_size and _shape(index, wrong_size) != _shape(index, size):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(index, wrong_size, leaf, proof, root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_property(data: st.DataObject) -> None:
    new = data.draw(st.integers(1, 300), label="new")
    old = data.draw(st.integers(1, new), label="old")
    leaves = _leaves(new)
    tree = MemTree(leaves)
    r_old, r_new = naive_mth(leaves[:old]), naive_mth(leaves)
    proof = merkle.consistency_proof(old, new, tree.get)
    assert proof == (naive_subproof(old, leaves, True) if old < new else [])
    merkle.verify_consistency(old, new, r_old, r_new, proof)
    wrong_old = data.draw(st.integers(1, new), label="wrong old")
    if wrong_old != old and proof:
        with pytest.raises(ProofError):
            merkle.verify_consistency(wrong_old, new, r_old, r_new, proof)
    # A forked history (one leaf changed below `old`) must not verify against the old root.
    if old < new:
        forked = list(leaves)
        forked[data.draw(st.integers(0, old - 1), label="fork at")] = b"forged"
        with pytest.raises(ProofError):
            merkle.verify_consistency(
                old,
                new,
                r_old,
                naive_mth(forked),
                merkle.consistency_proof(old, new, MemTree(forked).get),
            )

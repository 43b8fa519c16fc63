"""UnixFS files: kubo's CIDs under each profile (published fixtures, aleph-cid, and in the slow
tests kubo itself and the IPFS project's JavaScript importer on random files of 0 B to 50 MB), and
a strict reader of dag-pb and UnixFS that refuses every malformed or inconsistent node."""

from __future__ import annotations

import io
from pathlib import Path

import aleph_cid
import numpy as np
import pytest

from consortium.core.encoding import encode
from consortium.core.errors import GenesisError, IntegrityError, StoreError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.store import (
    PROFILES,
    BlockStore,
    Profile,
    cid_for,
    file_cid,
    file_size,
    get_bytes,
    matching_profile,
    put_bytes,
    put_file,
    put_verified,
)
from consortium.store import unixfs as unixfs_module
from consortium.store.dagpb import (
    _bytes_field,
    _uint_field,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs_file,
)
from tests.ipfs_support import have_js, have_kubo, kubo_cids, needs_js, needs_kubo, run_js

KiB, MiB = 1024, 1024 * 1024

#: kubo's published CIDs: "hello world" and the empty file.
HELLO_V1 = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
EMPTY_V1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
FIXTURES = {
    ("unixfs-v0-2015", b"hello world"): "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD",
    ("unixfs-v0-2015", b""): "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
    ("kubo-cid-v1", b"hello world"): HELLO_V1,
    ("kubo-cid-v1", b""): EMPTY_V1,
    ("unixfs-v1-2025", b"hello world"): HELLO_V1,
    ("unixfs-v1-2025", b""): EMPTY_V1,
}


def rand(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store")


@pytest.mark.parametrize(("name", "data"), list(FIXTURES))
def test_kubos_published_cids(store: BlockStore, name: str, data: bytes) -> None:
    expected = FIXTURES[(name, data)]
    assert str(file_cid(data, name)) == expected
    cid = put_bytes(store, data, name)
    assert str(cid) == expected
    assert get_bytes(store, expected) == data and file_size(store, expected) == len(data)


#: Sizes around every chunk and node boundary of the 256 KiB profiles, and past one node.
SIZES = [0, 1, 1000, 256 * KiB - 1, 256 * KiB, 256 * KiB + 1, 3 * 256 * KiB + 5, MiB + 1, 2_500_000]


def test_cids_equal_aleph_cid_for_kubos_default_and_cid_version_1(tmp_path: Path) -> None:
    """aleph-cid (Rust, pinned against kubo) computes `ipfs add` and `--cid-version 1` CIDs."""
    for size in SIZES:
        data = rand(size, seed=size)
        for name, hasher in (
            ("unixfs-v0-2015", aleph_cid.CidHasher.for_ipfs()),
            ("kubo-cid-v1", aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()),
        ):
            hasher.update(data)
            assert str(file_cid(data, name)) == hasher.finalize(), (name, size)


@pytest.mark.parametrize("name", list(PROFILES))
def test_stored_files_round_trip_and_stream_like_bytes(
    tmp_path: Path, store: BlockStore, name: str
) -> None:
    for size in (0, 256 * KiB + 1, MiB + 1):
        data = rand(size, seed=size + 1)
        src = tmp_path / "in.bin"
        src.write_bytes(data)
        cid = put_file(store, src, prof=name)
        assert cid == file_cid(data, name) == put_bytes(store, data, name)
        assert get_bytes(store, cid) == data and file_size(store, cid) == size
        assert matching_profile(data, cid).cid_version == PROFILES[name].cid_version


def test_put_file_fills_chunks_from_short_reads(store: BlockStore) -> None:
    class Trickle(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(min(n if n is not None and n >= 0 else 1 << 30, 1000))

    data = rand(3 * 256 * KiB + 7, seed=3)
    prof = PROFILES["kubo-cid-v1"]
    assert unixfs_module.import_stream(store, Trickle(data), prof) == file_cid(data, prof)


def test_balanced_tree_is_full_but_the_last_node_of_each_level(store: BlockStore) -> None:
    tiny = Profile("tiny", 1, True, 10, 3)
    data = rand(10 * 10, seed=5)  # 10 leaves: nodes of 3, 3, 3, 1; then 3, 1; then the root
    cid = put_bytes(store, data, tiny)
    root = decode_node(store.get_block(cid))
    assert len(root.links) == 2
    children = [decode_node(store.get_block(link.cid)) for link in root.links]
    assert [len(c.links) for c in children] == [3, 1]
    assert get_bytes(store, cid) == data


def test_put_verified_stores_bytes_under_the_profile_that_made_the_cid(store: BlockStore) -> None:
    data = rand(300 * KiB, seed=8)
    for name in PROFILES:
        cid = file_cid(data, name)
        put_verified(store, data, cid)
        assert get_bytes(store, cid) == data
    with pytest.raises(IntegrityError, match="not the file"):
        put_verified(store, data[:-1] + b"!", file_cid(data, "unixfs-v0-2015"))
    with pytest.raises(IntegrityError, match="not the file"):
        put_verified(store, rand(2 * MiB), cid_for(rand(2 * MiB)))  # raw, but over any chunk


# -- hostile blocks --------------------------------------------------------------------------------

LINK = _bytes_field(1, bytes(cid_for(b"leaf")))


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"\x12", "truncated varint"),
        (b"\x12" + b"\xff" * 10 + b"\x01", "longer than 64 bits"),
        (b"\x12\x05ab", "runs past the end"),
        (b"\x08\x01", "not length-delimited"),
        (b"\x1a\x00", "unexpected field 3"),
        (_bytes_field(1, b"") + _bytes_field(2, LINK), "a link after the Data"),
        (_bytes_field(1, b"") + _bytes_field(1, b""), "two Data fields"),
        (_bytes_field(2, _bytes_field(2, b"x")), "a link without a Hash"),
        (_bytes_field(2, _bytes_field(2, b"") + LINK), "in order"),
        (_bytes_field(2, LINK + LINK), "in order"),
        (_bytes_field(2, LINK + _bytes_field(4, b"")), "unexpected field 4"),
        (_bytes_field(2, LINK + _bytes_field(3, b"")), "Tsize is not a varint"),
        (_bytes_field(2, _bytes_field(1, b"\x01\x55")), "Hash is not a CID"),
        (_bytes_field(2, LINK + _bytes_field(2, b"\xff")), "Name is not UTF-8"),
        (_bytes_field(2, _uint_field(1, 5)), "field 1 is not length-delimited"),
    ],
)
def test_malformed_dag_pb_is_refused(store: BlockStore, block: bytes, reason: str) -> None:
    with pytest.raises(StoreError, match=reason):
        decode_node(block)
    with pytest.raises(StoreError, match="refusing to store a dag-pb block"):
        store.put_block(block, "dag-pb")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_uint_field(3, 5), "no Type"),
        (_bytes_field(1, b""), "field 1 has the wrong wire type"),
        (_uint_field(1, 2) + b"\x4b", "unsupported wire type 3"),  # field 9, a group
        (_uint_field(1, 2) + b"\x4d\x00", "runs past the end"),  # field 9, fixed32
    ],
)
def test_malformed_unixfs_data_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(StoreError, match=reason):
        decode_unixfs(data)


def test_unixfs_reader_accepts_packed_sizes_and_skips_other_fields() -> None:
    packed = _bytes_field(4, bytes([3, 4]))
    mtime = _bytes_field(8, _uint_field(1, 1_700_000_000))
    fs = decode_unixfs(_uint_field(1, 2) + _uint_field(7, 0o644) + mtime + packed + b"\x2d1234")
    assert (fs.type, fs.blocksizes, fs.filesize) == (2, (3, 4), None)


def _node(store: BlockStore, links: list[tuple[object, int]], data: bytes) -> object:
    """Store a well-formed dag-pb node whose UnixFS content may lie."""
    return store.put_block(encode_node(links, data), "dag-pb")  # type: ignore[arg-type]


def test_inconsistent_file_nodes_are_refused_before_their_bytes(store: BlockStore) -> None:
    a, b = store.put_block(b"a" * 10), store.put_block(b"b" * 20)
    good = _node(store, [(a, 10), (b, 20)], encode_unixfs_file(b"", 30, [10, 20]))
    assert get_bytes(store, good) == b"a" * 10 + b"b" * 20  # type: ignore[arg-type]
    cases = {
        "declares 31 bytes but its parts hold 30": encode_unixfs_file(b"", 31, [10, 20]),
        "2 links but 1 block sizes": encode_unixfs_file(b"", 30, [30]),
        "holds 20 bytes, its parent says 19": encode_unixfs_file(b"", 29, [10, 19]),
        "is a UnixFS directory, not a file": _uint_field(1, 1),
    }
    for reason, data in cases.items():
        bad = _node(store, [(a, 10), (b, 20)], data)
        with pytest.raises(StoreError, match=reason):
            get_bytes(store, bad)  # type: ignore[arg-type]
    # A child node whose size is not what its parent declares.
    inner = _node(store, [(a, 10)], encode_unixfs_file(b"", 10, [10]))
    outer = _node(store, [(inner, 100)], encode_unixfs_file(b"", 11, [11]))
    with pytest.raises(StoreError, match=r"file node \S+ holds 10 bytes, its parent says 11"):
        get_bytes(store, outer)  # type: ignore[arg-type]
    no_data = store.put_block(_bytes_field(2, LINK), "dag-pb")  # a link, no Data
    with pytest.raises(StoreError, match="no UnixFS data"):
        get_bytes(store, no_data)
    obj = store.put_block(encode({"a": 1}), "dag-cbor")
    with pytest.raises(StoreError, match="dag-cbor object, not a file"):
        get_bytes(store, obj)
    linked = _node(store, [(obj, 9)], encode_unixfs_file(b"", 9, [9]))
    with pytest.raises(StoreError, match="links to a dag-cbor block"):
        get_bytes(store, linked)  # type: ignore[arg-type]


def test_a_node_holding_bytes_and_children_reads_its_own_bytes_first(store: BlockStore) -> None:
    a = store.put_block(b"tail")
    node = _node(store, [(a, 4)], encode_unixfs_file(b"head-", 9, [4]))
    assert get_bytes(store, node) == b"head-tail"  # type: ignore[arg-type]
    assert file_size(store, node) == 9  # type: ignore[arg-type]


def test_a_tree_deeper_than_the_limit_is_refused(
    store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = put_bytes(store, rand(16), Profile("thin", 1, True, 1, 2))  # 16 leaves: 4 levels
    assert get_bytes(store, cid) == rand(16)
    monkeypatch.setattr(unixfs_module, "MAX_DEPTH", 2)
    with pytest.raises(StoreError, match="deeper than 2 levels"):
        get_bytes(store, cid)


# -- the profile in genesis ------------------------------------------------------------------------


def test_genesis_records_the_profile_and_refuses_unknown_ones(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("m0", "127.0.0.1:7400")
    a = Genesis.ceremony("c", [ident], [Purpose("p")], 1)
    b = Genesis.ceremony("c", [ident], [Purpose("p")], 1, unixfs_profile="unixfs-v0-2015")
    assert a.unixfs_profile == "unixfs-v1-2025" and a.body()["unixfs_profile"] == "unixfs-v1-2025"
    assert b.body()["unixfs_profile"] == "unixfs-v0-2015"
    b.save(tmp_path / "g.json")
    assert Genesis.load(tmp_path / "g.json").unixfs_profile == "unixfs-v0-2015"
    assert Genesis.from_body(b.body(), b.signatures).unixfs_profile == "unixfs-v0-2015"
    with pytest.raises(GenesisError, match="unknown UnixFS profile 'v3'"):
        Genesis.create("c", [ident.public()], [Purpose("p")], 1, unixfs_profile="v3")
    with pytest.raises(GenesisError, match="unknown UnixFS profile 'v3'"):
        Genesis.from_body({**b.body(), "unixfs_profile": "v3"}, b.signatures)
    with pytest.raises(GenesisError, match="unsupported manifest version 1"):
        Genesis.from_body({**b.body(), "version": 1}, b.signatures)
    data = b.to_json()
    with pytest.raises(GenesisError, match="unknown UnixFS profile 'v3'"):
        Genesis.from_json({**data, "unixfs_profile": "v3"})
    with pytest.raises(GenesisError, match="unsupported manifest version 1"):
        Genesis.from_json({**data, "version": 1})


# -- against kubo and the JavaScript importer (slow: up to 50 MB per file) -------------------------

#: Random files of 0 B to 50 MB, around the 256 KiB and 1 MiB chunk edges and past one full node of
#: 174 links (43.5 MiB), so the 256 KiB profiles build trees of two levels.
SLOW_SIZES = [0, 1, 256 * KiB, 256 * KiB + 1, MiB, MiB + 1, 174 * 256 * KiB, 174 * 256 * KiB + 1]
SLOW_SIZES += [50_000_000]


@pytest.fixture(scope="module")
def random_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if not (have_js() or have_kubo()):
        return []
    folder = tmp_path_factory.mktemp("unixfs-random")
    files = []
    for i, size in enumerate(SLOW_SIZES):
        path = folder / f"f{i}.bin"
        path.write_bytes(rand(size, seed=1000 + i))
        files.append(path)
    return files


def _ours(files: list[Path], name: str) -> list[str]:
    return [str(file_cid(path.read_bytes(), name)) for path in files]


@pytest.mark.slow
@needs_kubo
def test_cids_equal_kubos_ipfs_add(random_files: list[Path]) -> None:
    """kubo 0.22 itself, `ipfs add --only-hash` (its default: CIDv0, 256 KiB, 174 links)."""
    assert kubo_cids(random_files) == _ours(random_files, "unixfs-v0-2015")


@pytest.mark.slow
@needs_js
@pytest.mark.parametrize("name", list(PROFILES))
def test_cids_equal_the_javascript_importer(random_files: list[Path], name: str) -> None:
    cids = run_js("unixfs_cid.mjs", name, *map(str, random_files)).split()
    assert cids == _ours(random_files, name)


def test_random_damage_to_dag_pb_and_unixfs_is_refused_cleanly() -> None:
    """Bit flips, truncations and random bytes: the decoders answer with a node or a StoreError,
    never another exception (a hostile peer or CAR must not crash a reader)."""
    import random

    rng = random.Random(16)
    a, b = cid_for(b"a"), cid_for(b"b")
    seeds = [
        encode_node([(a, 1), (b, 1)], encode_unixfs_file(b"", 2, [1, 1])),
        encode_node([], encode_unixfs_file(b"hello world", 11, [])),
    ]
    for _ in range(3000):
        block = bytearray(rng.choice(seeds))
        action = rng.randrange(3)
        if action == 0:
            block[rng.randrange(len(block))] ^= 1 << rng.randrange(8)
        elif action == 1:
            del block[rng.randrange(len(block)) :]
        else:
            block = bytearray(rng.randbytes(rng.randrange(1, 40)))
        try:
            node = decode_node(bytes(block))
            if node.data is not None:
                decode_unixfs(node.data)
        except StoreError:
            pass

"""CIDs, the block store, UnixFS files and dag-cbor objects (kubo compatibility: test_unixfs.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from multiformats import CID, multihash

from consortium.core.encoding import encode
from consortium.core.errors import IntegrityError, NotFoundError, StoreError
from consortium.store import (
    CHUNK_SIZE,
    MAX_BLOCK_SIZE,
    BlockStore,
    Profile,
    check,
    cid_for,
    cid_key,
    file_cid,
    file_size,
    get_bytes,
    get_file,
    get_object,
    is_complete,
    parse_cid,
    put_bytes,
    put_file,
    put_object,
    walk,
)
from consortium.store.dagpb import FILE, decode_node, decode_unixfs

MiB = 1024 * 1024


def rand(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store")


def tamper(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- CIDs ----------------------------------------------------------------------------------------


def test_cid_matches_multiformats_raw_leaf() -> None:
    data = b"hello consortium"
    expected = CID("base32", 1, "raw", multihash.digest(data, "sha2-256"))
    assert cid_for(data) == expected
    assert str(cid_for(data)) == str(expected)
    assert str(cid_for(data)).startswith("bafkrei")
    assert str(cid_for(encode({"a": 1}), "dag-cbor")).startswith("bafyrei")


@pytest.mark.parametrize("codec", ["raw", "dag-pb", "dag-cbor"])
def test_cid_key_equals_str(codec: str) -> None:
    for n in range(20):
        cid = CID("base32", 1, codec, multihash.digest(bytes(n), "sha2-256"))
        assert cid_key(cid) == str(cid)


def test_parse_cid_round_trip_and_normalises_base() -> None:
    cid = cid_for(b"x")
    assert parse_cid(str(cid)) == cid
    other_base = str(cid.set(base="base58btc"))
    assert str(parse_cid(other_base)) == str(cid)


@pytest.mark.parametrize("text", ["", "garbage", "bafkreiZZZ", "Qm" + "1" * 44, "b" + "a" * 60])
def test_parse_cid_rejects_garbage(text: str) -> None:
    with pytest.raises(StoreError):
        parse_cid(text)


def test_parse_cid_rejects_unsupported_kinds() -> None:
    ident = CID("base32", 1, "raw", multihash.digest(b"x", "identity"))
    blake = CID("base32", 1, "raw", multihash.digest(b"x", "blake2b-256"))
    json = CID("base32", 1, "dag-json", multihash.digest(b"x", "sha2-256"))
    for bad, why in ((ident, "identity"), (blake, "blake2b-256"), (json, "dag-json")):
        with pytest.raises(StoreError, match=why):
            parse_cid(str(bad))
    with pytest.raises(StoreError, match="codec"):
        cid_for(b"x", "dag-json")
    with pytest.raises(StoreError, match="CIDv0 is always dag-pb"):
        cid_for(b"x", "raw", version=0)


def test_a_cidv0_prints_as_itself_and_shares_its_block_with_its_cidv1(store: BlockStore) -> None:
    block = bytes.fromhex("0a0408021800")  # the empty file's dag-pb node (kubo's default)
    v0 = parse_cid("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH")
    assert v0 == cid_for(block, "dag-pb", version=0) and str(v0).startswith("Qm")
    v1 = store.put_block(block, "dag-pb")
    assert v1.version == 1 and str(v1).startswith("bafybei")
    assert cid_key(v0) == cid_key(v1) == str(v1)
    assert store.has(v0) and store.get_block(v0) == block
    assert list(store.iter_cids()) == [v1]


def test_check_detects_mismatch() -> None:
    check(cid_for(b"abc"), b"abc")
    with pytest.raises(IntegrityError, match=str(cid_for(b"abc"))):
        check(cid_for(b"abc"), b"abd")


# -- block store -------------------------------------------------------------------------------


def test_put_get_block_layout_and_idempotence(store: BlockStore) -> None:
    cid = store.put_block(b"block")
    key = str(cid)
    path = store.root / "blocks" / key[-3:-1] / key
    assert path.is_file()
    assert store.get_block(cid) == b"block"
    assert store.get_block(key) == b"block"
    assert store.has(cid)
    mtime = path.stat().st_mtime_ns
    assert store.put_block(b"block") == cid
    assert path.stat().st_mtime_ns == mtime
    assert list(store.iter_cids()) == [cid]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_missing_and_deleted_blocks(store: BlockStore) -> None:
    cid = store.put_block(b"gone soon")
    store.delete(cid)
    assert not store.has(cid)
    with pytest.raises(NotFoundError, match=str(cid)):
        store.get_block(cid)
    with pytest.raises(NotFoundError):
        store.delete(cid)


def test_block_size_limit(store: BlockStore) -> None:
    store.put_block(b"\0" * MAX_BLOCK_SIZE)
    with pytest.raises(StoreError, match="limit"):
        store.put_block(b"\0" * (MAX_BLOCK_SIZE + 1))


def test_dag_cbor_block_must_be_canonical(store: BlockStore) -> None:
    with pytest.raises(StoreError):
        store.put_block(b"\xff\x00garbage", "dag-cbor")
    with pytest.raises(StoreError):
        store.put_block(b"\xa2\x61b\x01\x61a\x02", "dag-cbor")  # keys out of order


def test_tampered_block_is_detected_and_reported(store: BlockStore) -> None:
    good = store.put_block(b"good block")
    bad = store.put_block(b"to be damaged")
    tamper(store.path_for(bad), 3)
    with pytest.raises(IntegrityError, match=str(bad)):
        store.get_block(bad)
    assert store.get_block(good) == b"good block"
    assert store.verify() == [str(bad)]
    report = store.verify_report()
    assert report.checked == 2 and report.corrupt == [str(bad)] and not report.ok
    # Putting the original bytes again repairs the damaged copy.
    store.put_block(b"to be damaged")
    assert store.verify() == []
    assert store.get_block(bad) == b"to be damaged"


def test_verify_reports_stray_files(store: BlockStore) -> None:
    cid = store.put_block(b"x")
    (store.blocks_dir / "zz").mkdir()
    (store.blocks_dir / "zz" / "notacid").write_bytes(b"?")
    misplaced = store.blocks_dir / "aa" / str(cid)
    misplaced.parent.mkdir(exist_ok=True)
    misplaced.write_bytes(b"x")
    problems = store.verify()
    assert len(problems) == 2 and all(p.startswith("stray file:") for p in problems)
    assert list(store.iter_cids()) == [cid]


def test_opening_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        BlockStore(tmp_path / "nope", create=False)


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + CHUNK_SIZE // 2]
)
def test_bytes_and_file_round_trip(store: BlockStore, tmp_path: Path, size: int) -> None:
    data = rand(size, seed=size)
    cid = put_bytes(store, data)
    assert get_bytes(store, cid) == data
    assert file_size(store, cid) == size
    src, out = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(data)
    assert put_file(store, src) == cid
    get_file(store, cid, out)
    assert out.read_bytes() == data
    expect_raw = size <= CHUNK_SIZE
    assert (cid.codec.name == "raw") is expect_raw
    if expect_raw:
        assert cid == cid_for(data)


@pytest.mark.parametrize("size", [0, 10, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 10])
def test_file_cid_is_the_stored_cid_and_writes_nothing(store: BlockStore, size: int) -> None:
    data = rand(size, seed=size)
    cid = file_cid(data)
    assert list(store.iter_cids()) == []
    assert put_bytes(store, data) == cid
    assert file_cid(data[:-1] + b"?") != cid


def test_is_complete_needs_every_block(store: BlockStore) -> None:
    data = rand(2 * CHUNK_SIZE + 10)
    cid = put_bytes(store, data)
    small = put_bytes(store, b"small")
    assert is_complete(store, cid) and is_complete(store, small)
    assert not is_complete(store, cid_for(b"never stored"))
    leaf = cid_for(data[CHUNK_SIZE : 2 * CHUNK_SIZE])
    store.delete(leaf)
    assert not is_complete(store, cid)
    store.put_block(data[CHUNK_SIZE : 2 * CHUNK_SIZE])
    assert is_complete(store, cid)
    store.delete(cid)  # the root, written last by put_bytes: what a killed write lacks
    assert not is_complete(store, cid)


def test_remove_temp_files_of_unfinished_writes(store: BlockStore) -> None:
    cid = store.put_block(b"kept")
    tmp = store.path_for(cid).parent / ".tmp-abc123"
    tmp.write_bytes(b"half a bl")
    assert store.verify() == [f"stray file: {tmp.relative_to(store.root)}"]
    assert store.remove_temp_files() == [str(tmp.relative_to(store.root))]
    assert store.verify() == [] and list(store.iter_cids()) == [cid]


def test_large_files_are_unixfs_nodes_over_raw_leaves(store: BlockStore) -> None:
    data = rand(2 * CHUNK_SIZE + 10)
    cid = put_bytes(store, data)
    assert cid.codec.name == "dag-pb" and str(cid).startswith("bafybei")
    node = decode_node(store.get_block(cid))
    leaves = [cid_for(data[i : i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]
    assert [link.cid for link in node.links] == leaves
    assert [link.tsize for link in node.links] == [CHUNK_SIZE, CHUNK_SIZE, 10]
    assert node.data is not None
    fs = decode_unixfs(node.data)
    assert (fs.type, fs.filesize, fs.blocksizes) == (FILE, len(data), (CHUNK_SIZE, CHUNK_SIZE, 10))


def test_determinism_across_stores(tmp_path: Path) -> None:
    data = rand(2 * CHUNK_SIZE + 5, seed=7)
    a = put_bytes(BlockStore(tmp_path / "a"), data)
    b = put_bytes(BlockStore(tmp_path / "b"), data)
    assert a == b and str(a) == str(b)
    assert put_bytes(BlockStore(tmp_path / "c"), data[:-1] + b"\0") != a


def test_deep_tree_and_walk(store: BlockStore) -> None:
    tiny = Profile("tiny", 1, True, 1000, 2)
    data = rand(5 * 1000, seed=3)
    cid = put_bytes(store, data, tiny)
    assert get_bytes(store, cid) == data
    reached = list(walk(store, cid))
    assert reached[0] == cid
    leaves = {str(cid_for(data[i : i + 1000])) for i in range(0, len(data), 1000)}
    assert leaves <= {str(c) for c in reached}
    assert len({str(c) for c in reached}) == len(reached)
    nodes = [c for c in reached if c.codec.name == "dag-pb"]
    assert len(nodes) == 6  # 5 leaves, 2 links a node: levels of 3, 2 and 1 nodes
    # Every reachable block is in the store and re-hashes.
    for c in reached:
        store.get_block(c)


def test_walk_follows_links_inside_objects(store: BlockStore) -> None:
    model = put_bytes(store, rand(CHUNK_SIZE + 1, seed=9))
    small = store.put_block(b"consent root")
    inner = put_object(store, {"consent": [small, small]})
    record = put_object(store, {"round": 1, "model": model, "nested": {"x": [inner]}})
    assert get_object(store, record)["model"] == model
    seen = [str(c) for c in walk(store, record)]
    assert seen[0] == str(record)
    assert {str(model), str(inner), str(small)} <= set(seen)
    assert len(seen) == len(set(seen)) == 1 + 1 + 2 + 1 + 1  # record, model+2 leaves, inner, small


def test_walk_raises_on_missing_node(store: BlockStore) -> None:
    inner = put_object(store, {"v": 1})
    outer = put_object(store, {"link": inner})
    store.delete(inner)
    with pytest.raises(NotFoundError):
        list(walk(store, outer))


def test_get_object_rejects_raw(store: BlockStore) -> None:
    with pytest.raises(StoreError, match="not a dag-cbor"):
        get_object(store, store.put_block(b"raw"))


def test_missing_leaf_raises_not_found(store: BlockStore) -> None:
    data = rand(2 * CHUNK_SIZE, seed=4)
    cid = put_bytes(store, data)
    store.delete(cid_for(data[CHUNK_SIZE:]))
    with pytest.raises(NotFoundError):
        get_bytes(store, cid)


def test_get_bytes_max_bytes(store: BlockStore) -> None:
    cid = put_bytes(store, rand(CHUNK_SIZE + 1))
    with pytest.raises(StoreError, match="limit"):
        get_bytes(store, cid, max_bytes=CHUNK_SIZE)


def test_get_file_is_atomic_on_corruption(store: BlockStore, tmp_path: Path) -> None:
    data = rand(3 * CHUNK_SIZE, seed=5)
    cid = put_bytes(store, data)
    tamper(store.path_for(cid_for(data[2 * CHUNK_SIZE :])), 100)  # the last chunk
    out = tmp_path / "out" / "model.bin"
    out.parent.mkdir()
    out.write_bytes(b"previous contents")
    with pytest.raises(IntegrityError):
        get_file(store, cid, out)
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.bin"]
    fresh = tmp_path / "out" / "fresh.bin"
    with pytest.raises(IntegrityError):
        get_file(store, cid, fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.bin"]

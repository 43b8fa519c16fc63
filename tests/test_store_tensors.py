"""Tensors through safetensors: round trips, determinism, refusal of garbage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from consortium.core.errors import StoreError
from consortium.store import BlockStore, decode_tensors, encode_tensors, get_tensors, put_tensors
from consortium.store.tensors import tensor_metadata


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "w": rng.standard_normal((7, 5)).astype(np.float32),
        "b": rng.standard_normal(5),
        "h": rng.standard_normal((2, 3, 4)).astype(np.float16),
        "idx": rng.integers(-(2**40), 2**40, size=9, dtype=np.int64),
        "u8": rng.integers(0, 255, size=(3, 3), dtype=np.uint8),
        "mask": rng.random(6) > 0.5,
        "c": (rng.standard_normal(3) + 1j).astype(np.complex64),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.int32),
    }


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert b[k].dtype == a[k].dtype, k
        assert b[k].shape == a[k].shape, k
        np.testing.assert_array_equal(b[k], a[k])


def test_round_trip_dtypes_and_shapes() -> None:
    tensors = sample()
    out = decode_tensors(encode_tensors(tensors, {"round": "3"}))
    assert_same(tensors, out)
    assert all(arr.flags.writeable for arr in out.values())


def test_non_contiguous_and_big_endian_inputs() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    tensors = {"t": base.T, "s": base[:, ::2], "be": np.arange(5, dtype=">i4")}
    out = decode_tensors(encode_tensors(tensors))
    np.testing.assert_array_equal(out["t"], base.T)
    np.testing.assert_array_equal(out["s"], base[:, ::2])
    np.testing.assert_array_equal(out["be"], np.arange(5))


def test_encoding_is_deterministic() -> None:
    tensors = sample()
    reordered = dict(reversed(list(tensors.items())))
    meta = {f"k{i}": str(i) for i in range(12)}
    meta_rev = dict(reversed(list(meta.items())))
    first = encode_tensors(tensors, meta)
    assert all(encode_tensors(reordered, meta_rev) == first for _ in range(5))
    n = int.from_bytes(first[:8], "little")
    assert (8 + n) % 8 == 0
    header = json.loads(first[8 : 8 + n])
    assert list(header["__metadata__"]) == sorted(meta)
    assert tensor_metadata(first) == meta


def test_encoding_is_deterministic_across_processes() -> None:
    code = (
        "import hashlib, numpy as np\n"
        "from consortium.store import encode_tensors\n"
        "t = {'w': np.arange(6, dtype=np.float32), 'b': np.ones(2)}\n"
        "m = {c: c * 2 for c in 'qwertyuiop'}\n"
        "print(hashlib.sha256(encode_tensors(t, m)).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(3)
    }
    assert len(digests) == 1


def test_store_round_trip_large_and_cid_stable(tmp_path: Path) -> None:
    tensors = {"big": np.random.default_rng(2).standard_normal((600, 600)).astype(np.float32)}
    store = BlockStore(tmp_path / "s")
    cid = put_tensors(store, tensors, {"model": "mlp"})  # about 1.4 MiB: chunked
    assert cid.codec.name == "dag-pb"  # a UnixFS file node over two chunks
    assert put_tensors(BlockStore(tmp_path / "t"), tensors, {"model": "mlp"}) == cid
    assert_same(tensors, get_tensors(store, cid))
    with pytest.raises(StoreError, match="limit"):
        get_tensors(store, cid, max_bytes=1024)


def test_rejects_unsupported_inputs() -> None:
    with pytest.raises(StoreError):
        encode_tensors({"o": np.array([object()], dtype=object)})
    with pytest.raises(StoreError):
        encode_tensors({"s": np.array(["a"])})
    with pytest.raises(StoreError):
        encode_tensors({"__metadata__": np.zeros(1)})
    with pytest.raises(StoreError):
        encode_tensors({"x": np.zeros(1)}, {"k": 1})  # type: ignore[dict-item]


def _with_header(header: object, body: bytes) -> bytes:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob + body


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

GARBAGE = {
    "empty": b"",
    "short": b"\x01\x02",
    "random": np.random.default_rng(0).bytes(256),
    "huge_header_len": (2**60).to_bytes(8, "little") + b"{}",
    "not_json": (4).to_bytes(8, "little") + b"{{{{",
    "not_object": _with_header([1, 2], b""),
    "bad_dtype": _with_header({"x": {**GOOD["x"], "dtype": "BF16"}}, b"\0" * 8),
    "unknown_dtype": _with_header({"x": {**GOOD["x"], "dtype": "PICKLE"}}, b"\0" * 8),
    "bad_shape": _with_header({"x": {**GOOD["x"], "shape": [-2]}}, b"\0" * 8),
    "size_mismatch": _with_header({"x": {**GOOD["x"], "shape": [3]}}, b"\0" * 8),
    "offsets_past_end": _with_header({"x": {**GOOD["x"], "data_offsets": [0, 16]}}, b"\0" * 8),
    "trailing": _with_header(GOOD, b"\0" * 12),
    "overlap": _with_header(
        {**GOOD, "y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
    ),
    "bad_bool": _with_header(
        {"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\2\0"
    ),
    "bad_metadata": _with_header({**GOOD, "__metadata__": {"k": 1}}, b"\0" * 8),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_is_rejected(name: str) -> None:
    with pytest.raises(StoreError):
        decode_tensors(GARBAGE[name])


def test_handmade_valid_header_is_accepted() -> None:
    out = decode_tensors(_with_header(GOOD, np.array([1.5, 2.5], dtype="<f4").tobytes()))
    np.testing.assert_array_equal(out["x"], [1.5, 2.5])


def test_library_output_is_readable() -> None:
    data = save({"a": np.arange(3, dtype=np.int16)})
    np.testing.assert_array_equal(decode_tensors(data)["a"], [0, 1, 2])


def test_max_bytes_is_enforced() -> None:
    data = encode_tensors({"a": np.zeros(100)})
    with pytest.raises(StoreError, match="limit"):
        decode_tensors(data, max_bytes=len(data) - 1)

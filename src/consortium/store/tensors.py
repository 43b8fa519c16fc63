"""Tensors as safetensors bytes: no code runs on load, unlike pickle.

The safetensors library writes its `__metadata__` map in hash-map order, which changes from one
process to the next (measured with safetensors 0.8.0), so `encode_tensors` rewrites the JSON
header with sorted keys: equal tensor dicts then give equal bytes, and so equal CIDs.
`decode_tensors` checks the header itself before handing the bytes to the library.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from consortium.core.errors import StoreError
from consortium.store.blockstore import BlockStore
from consortium.store.cid import CID, as_cid
from consortium.store.objects import get_bytes, put_bytes
from consortium.store.unixfs import Profile

#: safetensors dtype tag -> little-endian NumPy dtype (the ones NumPy can represent).
DTYPES: dict[str, np.dtype[Any]] = {
    tag: np.dtype(name).newbyteorder("<")
    for tag, name in {
        "F64": "float64", "F32": "float32", "F16": "float16",
        "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
        "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
        "BOOL": "bool", "C64": "complex64",
    }.items()
}  # fmt: skip
_ACCEPTED = {dt.newbyteorder("="): tag for tag, dt in DTYPES.items()}

#: Default largest encoding `decode_tensors` accepts (bytes).
MAX_TENSOR_BYTES = 4 * 1024**3
#: Largest JSON header we parse; the library itself stops at 100 MB.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_ALIGN = 8


def _canonical_header(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    blob = raw.encode("utf-8")
    return blob + b" " * (-len(blob) % _ALIGN)


def encode_tensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes for `tensors` (and optional string metadata)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise StoreError(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        if arr.dtype.newbyteorder("=") not in _ACCEPTED:
            raise StoreError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
        # The library reads raw memory: it must be C-contiguous or the bytes come out scrambled.
        # (Not np.ascontiguousarray: it turns a 0-d scalar into shape (1,).)
        arrays[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise StoreError("tensor metadata must map strings to strings")
    try:
        data = save(dict(sorted(arrays.items())), metadata=metadata or None)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise StoreError(f"cannot encode tensors: {exc}") from exc
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    blob = _canonical_header(header)
    return len(blob).to_bytes(8, "little") + blob + data[8 + n :]


def _check_header(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse and check the header, so garbage is refused with a clear reason."""
    if len(data) > max_bytes:
        raise StoreError(f"tensor data is {len(data)} bytes, limit is {max_bytes}")
    if len(data) < 8:
        raise StoreError("not safetensors data: shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_HEADER_BYTES):
        raise StoreError(f"not safetensors data: header length {n} is out of range")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"not safetensors data: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise StoreError("not safetensors data: header is not a JSON object")
    body = len(data) - 8 - n
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise StoreError("safetensors metadata must map strings to strings")
            continue
        if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
            raise StoreError(f"tensor {name!r} has a missing or unsupported dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise StoreError(f"tensor {name!r} has an invalid shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise StoreError(f"tensor {name!r} has invalid data offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[info["dtype"]].itemsize:
            raise StoreError(f"tensor {name!r}: data length does not match shape and dtype")
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    end = 0
    for start, stop in spans:
        if start != end:
            raise StoreError("safetensors data has overlapping tensors or gaps")
        end = stop
    if end != body:
        raise StoreError("safetensors data has trailing bytes after the last tensor")
    return header


def decode_tensors(data: bytes, *, max_bytes: int = MAX_TENSOR_BYTES) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into writable little-endian arrays; refuse anything malformed."""
    data = bytes(data)
    header = _check_header(data, max_bytes)
    try:
        loaded = load(data)
    except (SafetensorError, ValueError, KeyError) as exc:
        raise StoreError(f"not valid safetensors data: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for name, arr in loaded.items():
        dtype = DTYPES[header[name]["dtype"]]
        if dtype == np.bool_ and np.any(arr.view(np.uint8) > 1):
            raise StoreError(f"tensor {name!r} holds booleans other than 0 and 1")
        out[name] = np.array(arr.view(dtype) if arr.dtype != dtype else arr, dtype=dtype)
    return out


def tensor_metadata(data: bytes, *, max_bytes: int = MAX_TENSOR_BYTES) -> dict[str, str]:
    """The string metadata stored with a tensor encoding."""
    meta = _check_header(bytes(data), max_bytes).get("__metadata__", {})
    return dict(meta)


def put_tensors(
    store: BlockStore,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    prof: Profile | str | None = None,
) -> CID:
    """Store tensors as safetensors bytes (a UnixFS file under `prof`) and return the CID."""
    return put_bytes(store, encode_tensors(tensors, metadata), prof)


def get_tensors(
    store: BlockStore, cid: CID | str, *, max_bytes: int = MAX_TENSOR_BYTES
) -> dict[str, np.ndarray]:
    """Fetch (re-hashing every block) and decode the tensors at `cid`."""
    return decode_tensors(get_bytes(store, as_cid(cid), max_bytes=max_bytes), max_bytes=max_bytes)

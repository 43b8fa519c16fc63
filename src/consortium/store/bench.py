"""Store throughput: how fast a file goes into and comes back out of a block store."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_file, put_file


def measure_throughput(
    store_dir: Path | str, size_mb: int = 64, *, seed: int = 0
) -> dict[str, Any]:
    """Put then get a `size_mb` MiB random file through a fresh store under `store_dir`.

    Returns sizes, wall times and MB/s (MiB per second) for `put_file` (chunk, hash, fsync) and
    `get_file` (read, re-hash every block, atomic write). The input file is written first and
    not timed. Every byte is compared afterwards, so a fast but wrong store is caught.
    """
    base = Path(store_dir)
    base.mkdir(parents=True, exist_ok=True)
    size = int(size_mb) * 1024 * 1024
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-") as tmp:
        work = Path(tmp)
        src, dst = work / "input.bin", work / "output.bin"
        src.write_bytes(np.random.default_rng(seed).bytes(size))
        store = BlockStore(work / "store")

        t0 = time.perf_counter()
        cid = put_file(store, src)
        put_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        get_file(store, cid, dst)
        get_s = time.perf_counter() - t0

        if os.path.getsize(dst) != size or dst.read_bytes() != src.read_bytes():
            raise RuntimeError("store round trip changed the data")
        blocks = sum(1 for _ in store.iter_cids())
    mib = size / (1024 * 1024)
    return {
        "size_mb": mib,
        "blocks": blocks,
        "cid": str(cid),
        "put_s": put_s,
        "get_s": get_s,
        "put_mb_s": mib / put_s if put_s > 0 else float("inf"),
        "get_mb_s": mib / get_s if get_s > 0 else float("inf"),
    }

"""Anchoring cost: latency (median, p95) and gas per anchor, on the embedded chain and on anvil.

    consortium bench anchor [--anchors 100] [--anvil PATH] [--json]

Also times reopening the embedded chain (replaying its recorded transactions) and reading every
anchored head back. anvil is used when found (CONSORTIUM_ANVIL, PATH, or the npm install under
.tmp/anvil of the current folder, where `make anvil` puts it:
`npm install --prefix .tmp/anvil @foundry-rs/anvil@1.7.1`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from consortium.chain.accounts import derive_account
from consortium.chain.client import AnchorChain
from consortium.core.identity import NodeIdentity

ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
GENESIS = hashlib.sha256(b"bench genesis").digest()


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run_anchors(chain: AnchorChain, members: list[LocalAccount], n: int) -> dict[str, Any]:
    latencies, gas = [], []
    for i in range(1, n + 1):
        t = time.perf_counter()
        info = chain.anchor(members[i % len(members)], i * 4, hashlib.sha256(b"%d" % i).digest())
        latencies.append(time.perf_counter() - t)
        gas.append(info.gas_used)
    t = time.perf_counter()
    heads = chain.anchored_heads()
    read_s = time.perf_counter() - t
    assert len(heads) == n
    return {
        "anchors": n,
        "latency_median_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * percentile(latencies, 0.95),
        "gas_first": gas[0],
        "gas_median": int(statistics.median(gas)),
        "read_all_heads_ms": 1000 * read_s,
    }


def bench_embedded(members: list[LocalAccount], n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "chain"
        t = time.perf_counter()
        chain = AnchorChain.embedded(state)
        open_s = time.perf_counter() - t
        chain.deploy([m.address for m in members], GENESIS)
        out = run_anchors(chain, members, n)
        chain.close()
        t = time.perf_counter()
        AnchorChain.embedded(state, readonly=True).close()
        out["open_empty_ms"] = 1000 * open_s
        out["reopen_replay_ms"] = 1000 * (time.perf_counter() - t)
    return out


def find_anvil(explicit: str | None) -> str | None:
    if explicit or (explicit := os.environ.get("CONSORTIUM_ANVIL")):
        return explicit
    if on_path := shutil.which("anvil"):
        return on_path
    native = sorted((Path.cwd() / ".tmp/anvil/node_modules/@foundry-rs").glob("anvil-*/bin/anvil"))
    return str(native[0]) if native else None


def bench_anvil(binary: str, members: list[LocalAccount], n: int) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("anvil did not start") from None
                time.sleep(0.05)
        chain = AnchorChain.connect(f"http://127.0.0.1:{port}")
        dev = Account.from_key(ANVIL_DEV_KEY)
        for m in members:
            chain.fund(m.address, 10**18, funder=dev)
        chain.deploy([m.address for m in members], GENESIS, deployer=dev)
        return run_anchors(chain, members, n)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchors", type=int, default=100)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--anvil", help="path to the anvil binary (default: search)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    members = [derive_account(NodeIdentity.generate(f"n{i}")) for i in range(args.members)]
    benches: dict[str, Callable[[], dict[str, Any]]] = {
        "embedded (py-evm)": lambda: bench_embedded(members, args.anchors)
    }
    binary = find_anvil(args.anvil)
    if binary:
        benches["anvil 127.0.0.1"] = lambda: bench_anvil(binary, members, args.anchors)
    results = {name: fn() for name, fn in benches.items()}
    if not binary:
        results["anvil 127.0.0.1"] = {"skipped": "anvil not found"}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, r in results.items():
        print(f"{name}:")
        for k, v in r.items():
            print(f"  {k:>20}: {v:.1f}" if isinstance(v, float) else f"  {k:>20}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

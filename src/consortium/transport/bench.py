"""Measure the gRPC mTLS transport on 127.0.0.1: small-request latency and bulk throughput.

Both nodes run in one process and one event loop (so the numbers include both ends' Python work).
Run: `python -m consortium.transport.bench [--small N] [--mib M] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass

from consortium.core.identity import NodeIdentity
from consortium.transport.grpc_transport import GrpcTransport


@dataclass(frozen=True)
class BenchResult:
    small_median_ms: float
    small_p95_ms: float
    bulk_mib: int
    bulk_median_s: float

    @property
    def bulk_mib_per_s(self) -> float:
        return self.bulk_mib / self.bulk_median_s

    def __str__(self) -> str:
        return (
            f"small request round trip: median {self.small_median_ms:.3f} ms, "
            f"p95 {self.small_p95_ms:.3f} ms\n"
            f"{self.bulk_mib} MiB request (2-byte reply): median {self.bulk_median_s:.3f} s, "
            f"{self.bulk_mib_per_s:.0f} MiB/s one way"
        )


async def measure(small: int = 500, mib: int = 16, repeats: int = 5) -> BenchResult:
    a = NodeIdentity.generate("bench-a", "127.0.0.1:0")
    b = NodeIdentity.generate("bench-b", "127.0.0.1:0")
    members = [a.public(), b.public()]

    async def echo(sender: str, method: str, payload: bytes) -> bytes:
        return payload if method == "echo" else b"ok"

    server = GrpcTransport(b, members, "127.0.0.1:0")
    await server.start(echo)
    client = GrpcTransport(a, members, addresses={b.node_id: server.address})
    try:
        await client.request(b.node_id, "ping", b"warm-up")
        latencies = []
        for _ in range(small):
            start = time.perf_counter()
            await client.request(b.node_id, "ping", b"x" * 64)
            latencies.append(time.perf_counter() - start)
        blob = os.urandom(mib * 1024 * 1024)
        bulk = []
        for _ in range(repeats):
            start = time.perf_counter()
            await client.request(b.node_id, "sink", blob, timeout=120)
            bulk.append(time.perf_counter() - start)
    finally:
        await client.stop()
        await server.stop()
    latencies.sort()
    return BenchResult(
        small_median_ms=statistics.median(latencies) * 1e3,
        small_p95_ms=latencies[int(0.95 * (len(latencies) - 1))] * 1e3,
        bulk_mib=mib,
        bulk_median_s=statistics.median(bulk),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=500, help="number of small requests")
    parser.add_argument("--mib", type=int, default=16, help="bulk payload size in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="bulk repetitions")
    args = parser.parse_args()
    print(asyncio.run(measure(args.small, args.mib, args.repeats)))


if __name__ == "__main__":
    main()

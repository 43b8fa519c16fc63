"""The shared beacon's cost: the genesis DKG, and per round a partial, its checks, the combination.

    consortium bench beacon [--members 5 20 100] [--repeat 20] [--json]

Per consortium size n (threshold t = min(f + 1, quorum)): one member's dealing, what `genesis
sign` checks for one member (every share dealt to it, against its dealer's commitments), the
verification keys every node derives once (`GroupKey`), and per round one partial with its proof,
checking one partial, and combining t partials; plus the bytes a member sends per round (one
partial to each other member) and the genesis manifest's size. Keys and randomness come from a
seeded PRG, so every run does the same work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from consortium.core import threshold as th
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.protocol.beacon import BeaconCollector, beacon_message, make_partial


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def measure(n: int, repeat: int) -> dict[str, Any]:
    ids = [NodeIdentity.generate(f"m{i}", seed=b"bench-beacon/%d" % i) for i in range(n)]
    g = Genesis.create("bench", [i.public() for i in ids], [Purpose("research")], 1)
    random = th.seeded_bytes(b"bench-beacon")
    t = time.perf_counter()
    g.deal(ids[0], random)
    deal_ms = 1000 * (time.perf_counter() - t)
    for ident in ids[1:]:
        g.deal(ident, random)
    t = time.perf_counter()
    share = g.secret_share(ids[-1])  # what `genesis sign` and a starting node check
    open_ms = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    group = g.group_key()
    group_ms = 1000 * (time.perf_counter() - t)
    message = beacon_message(g.digest(), "bench-run", 1)
    partial_ms = _median_ms(lambda: make_partial(share, message), repeat)
    shares = [g.secret_share(i) for i in ids[: group.threshold]]
    partials = [make_partial(s, message) for s in shares]

    def check_one() -> None:
        BeaconCollector(group, message).add(partials[0])

    def combine_all() -> None:
        c = BeaconCollector(group, message)
        for p in partials:
            c.add(p)
        assert c.value is not None

    check_ms = _median_ms(check_one, repeat)
    combine_ms = _median_ms(combine_all, max(1, repeat // 4))
    manifest = len(json.dumps(g.to_json()))
    return {
        "members": n,
        "threshold": group.threshold,
        "deal_ms": deal_ms,
        "sign_check_ms": open_ms,
        "group_key_ms": group_ms,
        "partial_ms": partial_ms,
        "check_partial_ms": check_ms,
        "make_beacon_ms": combine_ms,  # t partials checked and combined
        "bytes_sent_per_member_round": (n - 1) * (th.POINT_BYTES + th.PROOF_BYTES),
        "genesis_json_bytes": manifest,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| n | t | deal (ms) | sign check (ms) | verification keys (ms) | partial (ms) "
        "| check a partial (ms) | beacon from t partials (ms) | partial bytes sent per member "
        "and round | genesis.json |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['members']} | {r['threshold']} | {r['deal_ms']:.1f} | {r['sign_check_ms']:.1f} "
        f"| {r['group_key_ms']:.1f} | {r['partial_ms']:.2f} | {r['check_partial_ms']:.2f} "
        f"| {r['make_beacon_ms']:.1f} | {r['bytes_sent_per_member_round']:,} "
        f"| {r['genesis_json_bytes'] / 1024:.0f} KiB |\n"
        for r in rows
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="consortium bench beacon", description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, nargs="+", default=[5, 20, 100])
    p.add_argument("--repeat", type=int, default=20, help="timings are medians of this many")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.members) or args.repeat < 1:
        print("error: --members and --repeat must be positive", file=sys.stderr)
        return 2
    rows = []
    for n in args.members:
        print(f"measuring n = {n} …", file=sys.stderr)
        rows.append(measure(n, args.repeat))
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SecAgg+ benchmark: time of each protocol phase for clients and the aggregator.

    consortium bench secagg [--n 10,100,1000] [--d 10000,1000000] [--dropout 0,0.1]
                                [--max-words 2e9] [--out FILE.md]

All clients run in this one process, one after another; client columns are the mean time per
client, aggregator columns the total of its receive_* calls plus finish_*(). Dropouts happen
after the share phase (the costly case: the aggregator reconstructs each dropped node's mask key
and regenerates its pairwise masks). "keystream floor" is the time one client needs just to
generate its (k+1)*d mask words with AES-256-CTR into a reused buffer; "c:mask" is the client's
whole masking step, which since transcript v2 includes its signed commitment to the masked input
("c:commit": one multi-scalar multiplication of length d, timed again on one client; the
generators are derived before any timing), and "mask / floor" is c:mask less c:commit over that
floor. "plain sum" is summing the survivors' uint32
vectors with no masks. Combinations with n*d above --max-words are skipped (said in the output);
n=1000, d=10**6 holds ~4 GB of masked inputs and takes ~2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from consortium.protocol.secagg import SecAggAggregator, SecAggClient, SecAggParams, commitment
from consortium.protocol.secagg.auth import SimulatedKeys

T = TypeVar("T")

COLUMNS = (
    "n",
    "d",
    "drop",
    "k",
    "t",
    "c:keys",
    "c:shares",
    "c:recv",
    "c:mask",
    "c:commit",
    "c:agree",
    "c:unmask",
    "a:keys",
    "a:shares",
    "a:inputs",
    "a:agree",
    "a:unmask",
    "round total",
    "plain sum",
    "keystream floor",
    "mask / floor",
)


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def keystream_floor(words: int, streams: int, reps: int = 3) -> float:
    """Best time to produce `streams` AES-256-CTR keystreams of `words` uint32 words."""
    zeros, out = bytes(4 * words), bytearray(4 * words + 15)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for i in range(streams):
            enc = Cipher(algorithms.AES(i.to_bytes(32, "big")), modes.CTR(bytes(16))).encryptor()
            enc.update_into(zeros, out)
        best = min(best, time.perf_counter() - start)
    return best


def run_case(
    n: int, d: int, dropout: float, seed: int = 0, graph: str = "round"
) -> dict[str, float | int | str]:
    """One simulated round. `graph`: "round" uses the parameters a training round of n members
    derives (complete graph, t = f + 1, quorum-certified survivors: `make_params`); "sparse" the
    package's defaults (k ≈ 2 log2 n), for comparison with sparse SecAgg+ such as Flower's."""
    participants = [f"node-{i:04d}" for i in range(n)]
    rid = seed.to_bytes(8, "big") + b"bench"
    if graph == "round":
        from consortium.core.genesis import quorum_for
        from consortium.protocol.secure_round import Consortium, make_params

        members = Consortium(n, quorum_for(n))
        p0 = make_params(rid, participants, d - 1, 1.0, members)
        # The floor stays the round's, dropouts permitting; the bench varies dropouts freely.
        params = SecAggParams.create(
            rid, participants, d, k=p0.k, threshold=p0.threshold, quorum=p0.quorum
        )
    else:
        params = SecAggParams.create(rid, participants, d)
    rng = np.random.default_rng(seed)
    auth = SimulatedKeys.for_participants(params.participants, seed)
    clients = {
        p: SecAggClient(params, p, signer=auth.signer(p), verify=auth.verify, rng=rng)
        for p in params.participants
    }
    words = {p: rng.integers(0, 1000, d, dtype=np.uint32) for p in params.participants}
    dropped = set(rng.choice(participants, size=round(dropout * n), replace=False).tolist())
    agg = SecAggAggregator(params, auth.verify)
    c = dict.fromkeys(("keys", "shares", "recv", "mask", "agree", "unmask"), 0.0)
    a = dict.fromkeys(("keys", "shares", "inputs", "agree", "unmask"), 0.0)

    for cl in clients.values():
        msg, dt = _timed(cl.advertise_keys)
        c["keys"] += dt
        a["keys"] += _timed(partial(agg.receive_keys, msg))[1]
    keys, dt = _timed(agg.finish_keys)
    a["keys"] += dt
    for km in keys:
        out, dt = _timed(partial(clients[km.recipient].receive_neighbour_keys, km))
        c["shares"] += dt
        a["shares"] += _timed(partial(agg.receive_shares, out))[1]
    deliveries, dt = _timed(agg.finish_shares)
    a["shares"] += dt
    live = [dv for dv in deliveries if dv.recipient not in dropped]
    commitment.generators(d)  # once per process: not part of any phase
    commit_time = 0.0
    for dv in live:
        cl = clients[dv.recipient]
        c["recv"] += _timed(partial(cl.receive_shares, dv))[1]
        masked, dt = _timed(partial(cl.masked_input, words[dv.recipient]))
        c["mask"] += dt
        if not commit_time:
            vector = np.frombuffer(masked.vector, dtype="<u4").astype(np.uint32)
            commit_time = _timed(partial(commitment.commit_words, vector))[1]
        a["inputs"] += _timed(partial(agg.receive_masked_input, masked))[1]
    sets, dt = _timed(agg.finish_inputs)
    a["inputs"] += dt
    for st in sets:
        vote, dt = _timed(partial(clients[st.recipient].receive_survivor_set, st))
        c["agree"] += dt
        a["agree"] += _timed(partial(agg.receive_survivor_vote, vote))[1]
    requests, dt = _timed(agg.finish_agreement)
    a["agree"] += dt
    for rq in requests:
        resp, dt = _timed(partial(clients[rq.recipient].receive_unmask_request, rq))
        c["unmask"] += dt
        a["unmask"] += _timed(partial(agg.receive_unmask, resp))[1]
    result, dt = _timed(agg.finish)
    a["unmask"] += dt

    survivors = sorted(result.contributors)
    expected = np.zeros(d, dtype=np.uint32)

    def plain() -> None:
        for p in survivors:
            np.add(expected, words[p], out=expected)

    plain_time = _timed(plain)[1]
    if not np.array_equal(expected, result.words):
        raise SystemExit(f"BUG: unmasked sum differs from the plaintext sum (n={n}, d={d})")
    floor = keystream_floor(d, params.k + 1)
    n_live = len(live)
    mask_per_client = c["mask"] / n_live
    row: dict[str, float | int | str] = {
        "n": n,
        "d": d,
        "drop": f"{dropout:.0%}",
        "k": params.k,
        "t": params.threshold,
    }
    row |= {
        "c:keys": c["keys"] / n,
        "c:shares": c["shares"] / len(keys),
        "c:recv": c["recv"] / n_live,
        "c:mask": mask_per_client,
        "c:commit": commit_time,
        "c:agree": c["agree"] / max(1, len(sets)),
        "c:unmask": c["unmask"] / max(1, len(requests)),
    }
    row |= {f"a:{k}": v for k, v in a.items()}
    # The whole protocol's compute, every client and the aggregator one after another.
    row["round total"] = sum(c.values()) + sum(a.values())
    row |= {
        "plain sum": plain_time,
        "keystream floor": floor,
        "mask / floor": f"{max(mask_per_client - commit_time, 0.0) / floor:.2f}x",
    }
    return row


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"
    return str(value)


def table(rows: Sequence[dict[str, float | int | str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def sizing_table(
    sizes: Sequence[int], min_honest: int = 3, corrupt_fraction: float | None = None
) -> str:
    """What a round of n members uses: the parameters every node derives (`make_params`)."""
    from consortium.core.errors import ConfigError
    from consortium.core.genesis import quorum_for
    from consortium.protocol.secure_round import Consortium, make_params, max_faulty

    lines = [
        "| members n | f | quorum | floor | k | t | crashed or withholding tolerated |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        c = Consortium(n, quorum_for(n), min_honest, corrupt_fraction)
        try:
            p = make_params(b"sizing", [f"m{i:04d}" for i in range(n)], 10, 1.0, c)
            k, t, tolerated = str(p.k), str(p.threshold), str(n - c.floor)
        except ConfigError:
            k = t = tolerated = "- (needs a sparse graph: not offered yet)"
        lines.append(
            f"| {n} | {max_faulty(n)} | {c.quorum} | {c.floor} | {k} | {t} | {tolerated} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10,100,1000", help="client counts, comma-separated")
    parser.add_argument("--d", default="10000,1000000", help="vector lengths, comma-separated")
    parser.add_argument("--dropout", default="0,0.1", help="dropout fractions, comma-separated")
    parser.add_argument("--max-words", type=float, default=2e9, help="skip n*d above this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--graph",
        choices=("round", "sparse"),
        default="round",
        help="round: the parameters a training round uses (complete graph, t = f + 1); "
        "sparse: k ~ 2 log2 n",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument(
        "--corrupt-fraction",
        type=float,
        help="with --sizing: a stated corrupt fraction (sparse graph sized for it)",
    )
    parser.add_argument(
        "--sizing",
        metavar="N,N,...",
        help="only print the parameters a round of N members uses (k, t, floor, tolerated)",
    )
    args = parser.parse_args(argv)
    if args.sizing:
        print(sizing_table(_ints(args.sizing), corrupt_fraction=args.corrupt_fraction))
        return 0
    rows, skipped = [], []
    for n in _ints(args.n):
        for d in _ints(args.d):
            for drop in [float(x) for x in args.dropout.split(",") if x]:
                if n * d > args.max_words:
                    skipped.append(f"n={n} d={d} dropout={drop:.0%}")
                    continue
                print(f"running n={n} d={d} dropout={drop:.0%} ...", file=sys.stderr, flush=True)
                rows.append(run_case(n, d, drop, args.seed, args.graph))
    text = table(rows)
    notes = ["", "c: mean per client; a: aggregator total. Dropouts after the share phase."]
    if skipped:
        notes.append(
            f"skipped (n*d > {args.max_words:.0e}, raise --max-words): " + "; ".join(skipped)
        )
    out = text + "\n" + "\n".join(notes)
    print(out)
    if args.out:
        args.out.write_text(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

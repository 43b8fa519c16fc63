"""Bytes per member per SecAgg+ round, and what verifying a round costs a voter.

    consortium bench traffic [--members 5,20,50,100] [--d 100000] [--out FILE.md]

For each n: n real `RoundMachine`s (the same machine a node runs: beacon, SecAgg+ with signed
commitments, proposal, votes, commit) wired in one process with no network and a virtual clock;
training is replaced by a fixed vector of d parameters per member (as Flower's benchmark does).
Every message a machine sends to another is encoded as a node encodes it (`encode_message`) and
its length is counted for the sender and the recipient; a leader's messages to itself are local
and not counted. One round per n (its beacon included).

- Floor: send one masked vector (4·(d+1) bytes: d parameters and the weight word) and receive
  one model (4·d bytes), about 8·d. The issue's target: a non-leader's bytes at most 3x that.
- Verify per voter: wall time of the voter's handling of the `Propose` (the shared verifier
  `verify_round_record`: signatures, one multi-scalar multiplication of length d, the masks
  recomputed, the model rebuilt), median over voters.
- Commit per member: wall time of the step where a member quantizes, masks and commits to its
  input (one multi-scalar multiplication of length d), median over members.
- Generators: the one-time hash-to-curve of d commitment generators (cached per process).
- v1 transcript: what a voter downloaded before transcript v2 (every contributor's masked
  input), computed as contributors x 4·(d+1) bytes for comparison; not measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import numpy.typing as npt

from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.core.threshold import seeded_bytes
from consortium.ledger.entries import genesis_entry
from consortium.ledger.frontier import Frontier
from consortium.protocol.messages import Message, Propose, SecAgg, encode_message
from consortium.protocol.randomness import Randomness
from consortium.protocol.round import (
    Action,
    Broadcast,
    Committed,
    RoundMachine,
    RoundSettings,
    Send,
    Train,
)
from consortium.protocol.secagg import commitment
from consortium.store.cid import cid_for

COLUMNS = (
    "members",
    "d",
    "non-leader sent (MB)",
    "non-leader received (MB)",
    "non-leader total / floor",
    "leader sent (MB)",
    "leader received (MB)",
    "transcript (MB)",
    "v1 transcript (MB, computed)",
    "verify per voter (s)",
    "commit per member (s)",
    "generators, once (s)",
    "round wall (s)",
)


class _VectorOps:
    """Model arithmetic over float32 vectors (the machine's SecureOps)."""

    def delta(self, global_model: bytes, local_model: bytes) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = np.frombuffer(local_model, np.float32) - np.frombuffer(
            global_model, np.float32
        )
        return out

    def apply(self, global_model: bytes, delta: npt.NDArray[np.float64]) -> bytes:
        g = np.frombuffer(global_model, np.float32).astype(np.float64)
        return (g + delta).astype(np.float32).tobytes()


def _no_plaintext(updates: object) -> bytes:
    raise AssertionError("a secure round never averages plaintext updates")


def _members(n: int) -> tuple[list[NodeIdentity], Genesis]:
    ids = [NodeIdentity.generate(f"m{i}", seed=b"traffic/%d" % i) for i in range(n)]
    genesis = Genesis.ceremony(
        "traffic", ids, [Purpose("research")], 1, random=seeded_bytes(b"traffic/%d" % n)
    )
    return ids, genesis


def run_case(n: int, d: int, seed: int = 0) -> dict[str, float | int | str]:
    """One secure round of n members over a model of d parameters; bytes and times."""
    print(f"n={n} d={d}: genesis ...", file=sys.stderr, flush=True)
    ids, genesis = _members(n)
    t0 = time.perf_counter()
    commitment.generators(d + 1)
    gen_s = time.perf_counter() - t0
    settings = RoundSettings(
        run_id="traffic",
        config={"run": "traffic"},
        min_updates=1,
        collect_timeout=600.0,
        round_timeout=3600.0,
        secure=True,
        clip=10.0,
        model_size=d,
    )
    ops = _VectorOps()
    machines = {
        ident.node_id: RoundMachine(
            ident,
            genesis,
            settings,
            _no_plaintext,
            cid_for,
            ops,
            randomness=Randomness.seeded(seed * 1000 + k),
        )
        for k, ident in enumerate(ids)
    }
    order = sorted(machines)
    sent = dict.fromkeys(machines, 0)
    received = dict.fromkeys(machines, 0)
    # Keyed by id(): the message is kept with its size, so no id is reused while cached.
    sizes: dict[int, tuple[Message, int]] = {}
    queue: deque[tuple[str, str, Message]] = deque()
    committed: set[str] = set()
    verify_s: list[float] = []
    commit_s: list[float] = []
    transcript_bytes = 0
    start = np.zeros(d, dtype=np.float32).tobytes()
    frontier = Frontier.empty().append(genesis_entry(genesis).data)
    now = 0.0

    def size(msg: Message) -> int:
        key = id(msg)
        if key not in sizes:  # a broadcast is one object sent to every other member
            sizes[key] = (msg, len(encode_message(msg)))
        return sizes[key][1]

    def do(nid: str, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                queue.append((nid, a.to, a.message))
            elif isinstance(a, Broadcast):
                queue.extend((nid, other, a.message) for other in order if other != nid)
            elif isinstance(a, Train):
                k = order.index(nid)
                local = np.frombuffer(machines[nid].s.model, np.float32) + np.float32(
                    0.001 * (k + 1)
                )
                do(nid, machines[nid].on_trained(10 + k, local.tobytes(), {}, now))
            elif isinstance(a, Committed):
                committed.add(nid)

    print(f"n={n} d={d}: round ...", file=sys.stderr, flush=True)
    wall = time.perf_counter()
    for nid, m in machines.items():
        do(nid, m.begin(1, frontier, now, model=start))
    while len(committed) < n:
        if not queue:
            now += 1.0
            for nid, m in machines.items():
                do(nid, m.tick(now))
            if now > 10_000:
                raise RuntimeError(f"no commit at n={n}: the round stalled")
            continue
        sender, to, msg = queue.popleft()
        nbytes = size(msg)
        sent[sender] += nbytes
        received[to] += nbytes
        t = time.perf_counter()
        out = machines[to].on_message(sender, msg, now)
        spent = time.perf_counter() - t
        if isinstance(msg, Propose):
            verify_s.append(spent)
            transcript_bytes = len(msg.proposal.transcript)
        elif isinstance(msg, SecAgg) and msg.body.get("type") == "secagg/share-delivery":
            commit_s.append(spent)
        do(to, out)
    wall_s = time.perf_counter() - wall
    leader = next(iter(machines.values())).leader(0)
    others = [x for x in order if x != leader]
    floor = 4 * (d + 1) + 4 * d
    mean_sent = statistics.fmean(sent[x] for x in others)
    mean_received = statistics.fmean(received[x] for x in others)
    mb = 1e6
    return {
        "members": n,
        "d": d,
        "non-leader sent (MB)": mean_sent / mb,
        "non-leader received (MB)": mean_received / mb,
        "non-leader total / floor": (mean_sent + mean_received) / floor,
        "leader sent (MB)": sent[leader] / mb,
        "leader received (MB)": received[leader] / mb,
        "transcript (MB)": transcript_bytes / mb,
        "v1 transcript (MB, computed)": n * 4 * (d + 1) / mb,
        "verify per voter (s)": statistics.median(verify_s) if verify_s else float("nan"),
        "commit per member (s)": statistics.median(commit_s) if commit_s else float("nan"),
        "generators, once (s)": gen_s,
        "round wall (s)": wall_s,
    }


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def table(rows: list[dict[str, float | int | str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Each n runs one full secure round in this process; n = 100 takes minutes "
        "(its genesis ceremony alone about a minute on 2 cores).",
    )
    parser.add_argument("--members", default="5,20,50,100", help="member counts, comma-separated")
    parser.add_argument("--d", type=int, default=100_000, help="model parameters (default 10^5)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the members' randomness")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    try:
        members = [int(x) for x in args.members.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--members must be integers separated by commas, got {args.members!r}")
    if any(n < 4 for n in members) or args.d < 1:
        parser.error("each member count must be at least 4 (a secure sum needs 3 and a leader)")
    rows = []
    for n in members:
        rows.append(run_case(n, args.d, args.seed))
        print(table(rows[-1:]), file=sys.stderr, flush=True)
    text = table(rows)
    notes = (
        "\nFloor: send one masked vector, receive one model (4(d+1) + 4d bytes). Non-leader: "
        "mean over members other than the round's leader. Verify: median time a voter spends "
        "on the proposal (the shared verifier). v1 transcript: every masked input, as voters "
        "downloaded before transcript v2 (computed, not measured)."
    )
    print(text + notes)
    if args.out:
        args.out.write_text(text + notes + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

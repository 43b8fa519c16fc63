"""Accuracy against rounds with many members (issue 15, item 5).

    consortium bench accuracy [--members 5,20,50] [--rounds 30] [--epochs 10] [--lr 0.05]
        [--dp none,record] [--epsilon 8] [--out FILE.md]

Each configuration is a real run of `consortium bench rounds`' kind (N real `Node`s on one
asyncio loop, SecAgg+, the agreed run, consent registries, the ledger), digits split IID; after
the run, every committed round's global model is read back from node 0's store and scored on the
test split. The centralized reference is the same MLP trained on the pooled training set for
`--central-epochs` passes with the same optimizer. The table gives accuracy at a few rounds and
the first round within `--within` of the centralized accuracy.

Record-level DP (`--dp record`) calibrates DP-SGD's noise so that the whole run spends
`--epsilon` (δ = 1e-5) at each node; every node holds about 1437 / N training records, so the
sampling rate, and with it the noise, grows with N: the curve shows that price.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from consortium.bench.rounds import MODEL, SEED, run_federated
from consortium.learning import TrainConfig, load_dataset
from consortium.learning.central import train_centralized
from consortium.node.config import RunConfig
from consortium.privacy.config import PrivacyConfig

#: Rounds whose accuracy the table shows (those the run has).
SHOWN = (1, 5, 10, 20, 30, 50)


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="consortium bench accuracy",
        description="Accuracy against rounds for 5, 20, 50 members (digits, IID, SecAgg+), "
        "with and without record-level DP, against centralized training.",
    )
    p.add_argument("--members", default="5,20,50", help="comma-separated member counts")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--epochs", type=int, default=10, help="local epochs per round")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dp", default="none,record", help="none and/or record (record-level DP)")
    p.add_argument("--epsilon", type=float, default=8.0, help="record-level ε of the whole run")
    p.add_argument("--clip-norm", type=float, default=1.0, help="DP-SGD per-sample clip")
    p.add_argument("--central-epochs", type=int, default=20)
    p.add_argument("--within", type=float, default=0.02, help="gap to centralized that counts")
    p.add_argument("--collect-timeout", type=float, default=120.0)
    p.add_argument("--round-timeout", type=float, default=300.0)
    p.add_argument("--run-timeout", type=float, default=3600.0)
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    args.secure_aggregation = "secagg+"  # as every run (bench rounds' runner reads it)
    args.member_counts = [int(x) for x in _csv(args.members)]
    args.dp_modes = _csv(args.dp)
    bad = [m for m in args.dp_modes if m not in ("none", "record")]
    if bad:
        p.error(f"--dp: unknown mode(s) {bad}; use none and/or record")
    if args.rounds < 1 or args.epochs < 1 or any(n < 2 for n in args.member_counts):
        p.error("--rounds and --epochs must be at least 1, and --members at least 2")
    return args


def run_config(args: argparse.Namespace, n: int, dp: str) -> RunConfig:
    privacy = (
        PrivacyConfig(unit="record", target_epsilon=args.epsilon, clip_norm=args.clip_norm)
        if dp == "record"
        else PrivacyConfig()
    )
    return RunConfig(
        rounds=args.rounds,
        dataset="digits",
        model=MODEL,
        seed=SEED,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        min_updates=n,
        collect_timeout=args.collect_timeout,
        round_timeout=args.round_timeout,
        privacy=privacy,
        started=int(time.time() * 1000),
    )


def first_within(curve: list[float], target: float) -> int | None:
    """The first round (1-based) whose accuracy is at least `target`."""
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target), None)


def markdown(
    rows: list[tuple[int, str, list[float]]], central: float, args: argparse.Namespace
) -> str:
    shown = [r for r in SHOWN if r <= args.rounds]
    if args.rounds not in shown:
        shown.append(args.rounds)
    cols = [
        "members",
        "DP",
        *[f"round {r}" for r in shown],
        "best",
        f"first round ≥ {central - args.within:.3f}",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for n, dp, curve in rows:
        cells = [f"{curve[r - 1]:.3f}" if r <= len(curve) else "-" for r in shown]
        first = first_within(curve, central - args.within)
        dp_cell = f"record ε {args.epsilon:g}" if dp == "record" else "off"
        best = f"{max(curve):.3f}" if curve else "-"
        lines.append(
            "| "
            + " | ".join([str(n), dp_cell, *cells, best, str(first) if first else "not reached"])
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # many nodes share few cores: one thread each
    dataset = load_dataset("digits", None, seed=SEED)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, seed=SEED)
    t = time.perf_counter()
    central = train_centralized(dataset, MODEL, args.central_epochs, cfg, seed=SEED)
    print(f"centralized {central:.3f} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    rows: list[tuple[int, str, list[float]]] = []
    notes: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmpname:
        for dp in args.dp_modes:
            for n in args.member_counts:
                t = time.perf_counter()
                root = Path(tmpname) / f"{dp}-{n}"
                curve: list[float] = []
                _, _, _, run_notes = asyncio.run(
                    run_federated(
                        root, args, dataset, None, "iid", n, run_config(args, n, dp), curve
                    )
                )
                shutil.rmtree(root, ignore_errors=True)
                rows.append((n, dp, curve))
                notes += [f"{n} members, DP {dp}: {note}" for note in run_notes]
                print(
                    f"{n} members, DP {dp}: {' '.join(f'{a:.3f}' for a in curve)} "
                    f"({time.perf_counter() - t:.0f} s)",
                    file=sys.stderr,
                )
    table = markdown(rows, central, args)
    table += (
        f"\nCentralized: {central:.3f} ({args.central_epochs} epochs, SGD lr 0.05 momentum 0.9, "
        f"batch {args.batch_size}). Federated: digits IID, SecAgg+, MLP, {args.epochs} local "
        f"epoch(s) per round, SGD lr {args.lr:g} momentum 0.9, batch {args.batch_size}; "
        f"wall time {time.perf_counter() - started:.0f} s.\n"
    )
    if notes:
        table += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

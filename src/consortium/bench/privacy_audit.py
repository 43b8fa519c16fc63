"""Privacy audit benchmark: accuracy and attack success side by side.

    consortium bench privacy-audit [--dataset digits] [--nodes 3] [--rounds 10] [--epochs 2]
                                   [--eps 1,3,8] [--reference-models 8]
                                   [--inversion-iterations 300] [--canaries 300] [--out FILE]

Settings, each a real run of in-process nodes (`canaries.run_in_process`: real `Node`s,
rounds, SecAgg+ and DP-SGD over the in-process transport) on `--nodes` members with Dirichlet
(alpha = 0.5) shards of the dataset, then `consortium audit privacy`'s three measurements on node0's
folder, exactly as the command makes them:

- plaintext FedAvg (no secure aggregation, no DP);
- SecAgg+ (no DP);
- SecAgg+ with record-level DP-SGD calibrated to ε = 1, 3, 8 over the run (δ = 1e-5, clip 1);
- centralized: one model trained on the whole training split for rounds x epochs epochs.

Columns: test accuracy of the final model (the task's test split); the accountant's ε (node0's
records, as the ledger records it); membership inference against the final model (the best AUC
of loss/LiRA/RMIA, the best TPR at 1% FPR; `--reference-models` reference models); gradient
inversion of node0's records (`--inversion-batch` of them) from the view that
setting gives its leader (plaintext: the node's own update; SecAgg+: the sum; DP: the noisy
sum), best PSNR and SSIM; the one-run ε lower bound at 95% from `--canaries` canaries in a
separate canary run (and the most they can show). Centralized training has no updates and no
accountant: those cells are empty.

The defaults are `consortium audit privacy`'s (8 reference models, 300 inversion iterations
with 2 restarts) with 300 canaries (digits' test split, where canaries come from, holds 359),
and fit the issue's time target (≤ 30 minutes on 2 cores for digits) many times over: the wall
time is printed with the table (Markdown; with --out, written there with the command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from consortium.audit.privacy.canaries import CanarySettings, audit_canaries, run_in_process
from consortium.audit.privacy.inversion import InversionSettings, audit_inversion
from consortium.audit.privacy.membership import (
    MIN_NON_MEMBERS,
    Recipe,
    Settings,
    Targets,
    _model,
    _read,
    audit_membership,
    run_attacks,
)
from consortium.core.genesis import Purpose
from consortium.core.layout import STORE_DIR
from consortium.learning.adapter import check_weights, get_weights, set_weights
from consortium.learning.builtin import builtin_task
from consortium.learning.task import build_model, evaluate_task, load_data, train_task
from consortium.learning.train import TrainConfig
from consortium.node.config import DataConfig, RunConfig, load_node_config
from consortium.node.learner import Learner
from consortium.node.sim import create_consortium
from consortium.privacy.config import PrivacyConfig
from consortium.store.blockstore import BlockStore

DELTA = 1e-5


@dataclass(frozen=True)
class Row:
    setting: str
    accuracy: float
    epsilon: float | None  # the accountant's; None: none claimed
    auc: float
    tpr1: float | None
    view: str  # the inversion view measured ("" for centralized)
    psnr: float | None
    ssim: float | None
    bound: float | None
    cap: float | None
    seconds: float

    def cells(self) -> list[str]:
        def f(x: float | None, fmt: str) -> str:
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt % x

        return [
            self.setting,
            f(self.accuracy, "%.3f"),
            "∞ (none)" if self.epsilon is None else f"{self.epsilon:.2f}",
            f(self.auc, "%.3f"),
            f(None if self.tpr1 is None else self.tpr1 * 100, "%.1f%%"),
            "-" if self.psnr is None else f"{self.psnr:.1f} dB / {self.ssim:.2f} ({self.view})",
            "-" if self.bound is None else f"{self.bound:.2f} (≤ {self.cap:.2f} showable)",
        ]


HEADER = [
    "setting",
    "test accuracy",
    "accountant ε",
    "MIA best AUC",
    "MIA TPR at 1% FPR",
    "inversion best PSNR / SSIM (view)",
    "one-run ε lower bound (95%)",
]


def _config(args: argparse.Namespace, secure: str, eps: float | None) -> RunConfig:
    privacy = (
        PrivacyConfig(unit="record", target_epsilon=eps, clip_norm=1.0, delta=DELTA)
        if eps is not None
        else PrivacyConfig()
    )
    return RunConfig(
        dataset=args.dataset,
        model=args.model,
        rounds=args.rounds,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        secure_aggregation=secure,
        privacy=privacy,
        min_updates=args.nodes,
        collect_timeout=30.0,
        round_timeout=120.0,
        started=1,
    ).pinned()


def federated(args: argparse.Namespace, name: str, secure: str, eps: float | None) -> Row:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="consortium-bench-") as tmp:
        dirs = create_consortium(
            Path(tmp),
            args.nodes,
            dataset=args.dataset,
            seed=args.seed,
            purpose=Purpose("research", eps * 1.001, DELTA) if eps else Purpose("research"),
            consent=False,
            allow_plaintext=secure == "none",
        )
        run = _config(args, secure, eps)
        asyncio.run(run_in_process(dirs, run, args.run_timeout))
        folder = dirs[0]
        membership = audit_membership(
            folder, settings=Settings(reference_models=args.reference_models, seed=args.seed)
        )
        inversion = audit_inversion(
            folder,
            settings=InversionSettings(
                iterations=args.inversion_iterations,
                restarts=args.inversion_restarts,
                batch=args.inversion_batch,
                seed=args.seed,
            ),
        )
        canary = (
            audit_canaries(folder, CanarySettings(canaries=args.canaries, seed=args.seed))
            if args.canaries
            else None
        )
        data = _read(folder, None)
        task = run.load_task()
        learner = Learner(load_node_config(folder).data, run, task=task, name=data.node_name)
        _, like = build_model(task, run.seed)
        model, _ = build_model(task, run.seed)
        store = BlockStore(folder / STORE_DIR, create=False)
        set_weights(
            model, check_weights(_model(store, folder, data.run_records[-1][1], like), like)
        )
        accuracy = evaluate_task(task, model, learner.test).get("accuracy", math.nan)
    final = membership.final
    view = {"none": "plaintext"}.get(secure, "secagg+dp" if eps else "secagg")
    inv = next(r for r in inversion.results if r.scenario == view)
    return Row(
        setting=name,
        accuracy=accuracy,
        epsilon=None if final.claim is None else final.claim.epsilon,
        auc=max(a.auc for a in final.attacks.values()),
        tpr1=max((a.tpr(0.01) or 0.0) for a in final.attacks.values()),
        view=view,
        psnr=inv.best_psnr,
        ssim=inv.best_ssim,
        bound=None if canary is None else canary.epsilon_lower,
        cap=None if canary is None else canary.cap,
        seconds=time.perf_counter() - start,
    )


def centralized(args: argparse.Namespace) -> Row:
    """One model on the whole training split; membership inference against it (members: a
    seeded sample of the training split as large as the test split)."""
    start = time.perf_counter()
    task = builtin_task(args.dataset, args.model)
    train, test = load_data(
        task, DataConfig(dataset=args.dataset, seed=args.seed).context("central")
    )
    model, _ = build_model(task, args.seed)
    cfg = TrainConfig(
        epochs=args.rounds * args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    train_task(task, model, train, cfg, None)
    weights = get_weights(model)
    accuracy = evaluate_task(task, model, test).get("accuracy", math.nan)
    rng = np.random.default_rng(args.seed)
    members = train.take(
        np.sort(rng.choice(len(train), size=min(len(train), len(test)), replace=False)).astype(
            np.int64
        )
    )
    if len(test) < MIN_NON_MEMBERS:
        raise SystemExit("the test split is too small")
    results = run_attacks(
        task,
        Recipe(args.epochs * args.rounds, args.batch_size, args.lr),
        {1: lambda: weights},
        Targets(members, test, {1: np.ones(len(members), dtype=bool)}),
        reference_models=args.reference_models,
        seed=args.seed,
    )[1]
    return Row(
        setting="centralized (no federation, no DP)",
        accuracy=accuracy,
        epsilon=None,
        auc=max(a.auc for a in results.values()),
        tpr1=max((a.tpr(0.01) or 0.0) for a in results.values()),
        view="",
        psnr=None,
        ssim=None,
        bound=None,
        cap=None,
        seconds=time.perf_counter() - start,
    )


def table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="consortium bench privacy-audit",
        description="Accuracy and attack success side by side: plaintext FedAvg, SecAgg+, "
        "SecAgg+ with record-level DP at each --eps, centralized; real in-process runs, then "
        "`consortium audit privacy`'s membership inference, gradient inversion and one-run ε "
        "bound on node0's folder. Digits with the defaults: about 2 minutes on 2 cores.",
    )
    parser.add_argument("--dataset", default="digits", help="digits or fashion-mnist")
    parser.add_argument("--model", default="mlp", help="mlp, cnn or logreg")
    parser.add_argument("--nodes", type=int, default=3, help="members of each run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", default="1,3,8", help="record-level DP targets (SecAgg+ runs)")
    parser.add_argument("--reference-models", type=int, default=8, help="LiRA/RMIA (even)")
    parser.add_argument("--inversion-iterations", type=int, default=300)
    parser.add_argument("--inversion-restarts", type=int, default=2)
    parser.add_argument("--inversion-batch", type=int, default=4, help="node0's records attacked")
    parser.add_argument(
        "--canaries", type=int, default=300, help="0: no one-run audit (digits: at most 359)"
    )
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the table here (Markdown)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    settings: list[tuple[str, str, float | None]] = [
        ("plaintext FedAvg", "none", None),
        ("SecAgg+", "secagg+", None),
        *[
            (f"SecAgg+ with record-level DP, ε = {e:g}", "secagg+", e)
            for e in (float(x) for x in args.eps.split(",") if x)
        ],
    ]
    rows: list[Row] = []
    for name, secure, eps in settings:
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.append(federated(args, name, secure, eps))
        print(f"  {rows[-1].seconds:.0f} s", file=sys.stderr, flush=True)
    print("centralized ...", file=sys.stderr, flush=True)
    rows.append(centralized(args))
    wall = time.perf_counter() - began
    command = shlex.join(["consortium", "bench", "privacy-audit", *(argv or sys.argv[1:])])
    text = (
        f"{table(rows)}\n\n{args.dataset}, {args.model}, {args.nodes} nodes "
        "(Dirichlet alpha = 0.5), "
        f"{args.rounds} rounds x {args.epochs} epochs, lr {args.lr:g}, batch {args.batch_size}; "
        f"{args.reference_models} reference models, inversion {args.inversion_iterations} "
        f"iterations on {args.inversion_batch} records, {args.canaries} canaries; "
        f"{wall / 60:.1f} min wall time.\n`{command}`\n"
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"command": command, "wall_s": wall, "rows": [r.__dict__ for r in rows]},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Privacy benchmark: test accuracy of in-memory FedAvg against epsilon, for both units of privacy.

    consortium bench privacy [--datasets digits,fashion-mnist] [--eps 1,3,8,inf]
                                 [--nodes 10] [--rounds 20] [--out-dir DIR]

For each dataset, unit (record, client) and target epsilon (at delta 1e-5), the noise multiplier
is calibrated with the run's accountant (RDP) so that the whole run (all rounds) spends exactly
the target; eps = inf means no noise (record: plain training; client: clipping and quantization
only). Record level: every node trains with Opacus DP-SGD (per-sample clip 1.0, Poisson rate
batch/n). Client level: every node clips its delta to L2 norm --client-clip, weights it 1/n,
quantizes it on the SecAgg+ grid with a headroom scale and adds its discrete Gaussian share
(dropout tolerance 0); the shares are summed mod 2**32 as SecAgg+ would (the masks, which
cancel, are left out). Fashion-MNIST (if /usr/share/datasets/fashion-mnist exists) is subsampled
to --fashion-train training images. Writes privacy.csv (one row per round), privacy.png and
privacy.md (final accuracy) to --out-dir.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from consortium.learning.adapter import flatten, get_weights, set_weights, unflatten
from consortium.learning.datasets import FASHION_MNIST_DIR, Dataset, load_dataset
from consortium.learning.models import build_model
from consortium.learning.partition import partition_iid
from consortium.learning.train import TrainConfig, evaluate
from consortium.privacy import accounting, client_dp, noise
from consortium.privacy.config import PrivacyConfig
from consortium.privacy.dpsgd import train_local_dp
from consortium.protocol.secagg.quantize import clip_l2, dequantize, quantize

DELTA = 1e-5


@dataclass(frozen=True)
class Case:
    dataset: str
    unit: str
    target: float  # inf: no noise


@dataclass(frozen=True)
class Options:
    nodes: int
    rounds: int
    model: str
    cfg: TrainConfig
    client_clip: float
    seed: int


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def _subsample(ds: Dataset, n_train: int, n_test: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(ds.y_train))[:n_train]
    te = rng.permutation(len(ds.y_test))[:n_test]
    return replace(
        ds,
        x_train=ds.x_train[tr],
        y_train=ds.y_train[tr],
        x_test=ds.x_test[te],
        y_test=ds.y_test[te],
    )


def run_case(ds: Dataset, case: Case, opt: Options) -> tuple[float, list[tuple[float, float]]]:
    """(noise multiplier, [(accuracy, epsilon spent so far) per round])."""
    rng = np.random.default_rng(opt.seed)
    parts = partition_iid(ds.y_train, opt.nodes, rng)
    global_model = build_model(opt.model, ds.input_shape, ds.num_classes, seed=opt.seed)
    local = build_model(opt.model, ds.input_shape, ds.num_classes, seed=opt.seed)
    weights = get_weights(global_model)
    b, e = opt.cfg.batch_size, opt.cfg.epochs
    # Record level: the smallest shard has the largest q, hence the largest epsilon; calibrate
    # one z for every node on it, so every node's epsilon is <= the target.
    n_min = min(len(p) for p in parts)
    q_rec = accounting.record_sample_rate(n_min, b)
    steps = accounting.record_steps_per_round(n_min, b, e)
    if math.isinf(case.target):
        z = 0.0
    elif case.unit == "record":
        z = accounting.noise_multiplier_for(case.target, q_rec, steps * opt.rounds, DELTA)
    else:
        z = accounting.noise_multiplier_for(case.target, 1.0, opt.rounds, DELTA)
    privacy = PrivacyConfig(
        unit=case.unit,
        noise_multiplier=z,
        client_clip=opt.client_clip,
    )
    noise_rng = np.random.default_rng(_seed(opt.seed, 99))
    out = []
    for rnd in range(opt.rounds):
        g = flatten(weights).astype(np.float64)
        deltas = []
        for node, idx in enumerate(parts):
            set_weights(local, weights)
            cfg = opt.cfg.model_copy(update={"seed": _seed(opt.seed, rnd, node)})
            z_rec = z if case.unit == "record" else 0.0
            train_local_dp(
                local,
                ds.x_train[idx],
                ds.y_train[idx],
                cfg,
                privacy,
                z_rec,
                seed=_seed(opt.seed, rnd, node, 1),
            )
            deltas.append(flatten(get_weights(local)).astype(np.float64) - g)
        if case.unit == "record":
            mean = np.mean(deltas, axis=0)  # FedAvg, IID parts of (almost) equal size
            eps = accounting.record_epsilon(z, q_rec, steps * (rnd + 1), DELTA)
        else:
            mean = _client_level_mean(deltas, z, opt.client_clip, noise_rng)
            eps = accounting.client_epsilon(z, 1.0, rnd + 1, DELTA)
        weights = unflatten((g + mean).astype(np.float32), weights)
        set_weights(global_model, weights)
        out.append((evaluate(global_model, ds.x_test, ds.y_test)[1], eps))
    return z, out


def _client_level_mean(
    deltas: list[np.ndarray], z: float, clip: float, rng: np.random.Generator
) -> np.ndarray:
    """What the leader decodes from SecAgg+ with every node adding its discrete Gaussian share."""
    n, d = len(deltas), deltas[0].size
    w = 1.0 / n
    vclip = clip + 1.0  # secure_round.make_params: |[w·Δ ‖ w]| <= C + 1
    scale = client_dp.scale_with_headroom(n, vclip, z, clip, w, d, max_dropouts=0)
    plan = client_dp.plan(z, clip, w, scale, d, n, 0)
    acc = np.zeros(d + 1, dtype=np.uint32)
    for delta in deltas:
        vec = np.concatenate([clip_l2(delta, clip) * w, [w]])
        words = quantize(vec, vclip, scale, rng)
        if z > 0:
            words = noise.add_to_words(
                words, noise.node_noise_share(d, plan.sigma_total, n, 0, rng)
            )
        acc += words  # wraps mod 2**32 like the SecAgg+ sum
    total = dequantize(acc, scale)
    out: np.ndarray = total[:-1] / total[-1]
    return out


def _fmt_eps(e: float) -> str:
    return "∞" if math.isinf(e) else f"{e:g}"


def write_outputs(rows: list[dict[str, object]], final: list[dict[str, object]], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "privacy.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| dataset | unit | target ε | noise multiplier | ε spent | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in final:
        lines.append(
            f"| {r['dataset']} | {r['unit']} | {_fmt_eps(float(r['target']))} | "  # type: ignore[arg-type]
            f"{float(r['z']):.3f} | {_fmt_eps(float(r['eps']))} | {float(r['acc']):.3f} |"  # type: ignore[arg-type]
        )
    text = "\n".join(lines)
    (out / "privacy.md").write_text(text + "\n")
    _plot(final, out / "privacy.png")
    return text


def _plot(final: list[dict[str, object]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # an optional dependency: `pip install 'consortium[bench]'`
        print(
            f"{path.name} not drawn: matplotlib is not installed "
            "(pip install 'consortium[bench]'); the CSV and the table are complete",
            file=sys.stderr,
        )
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({float(r["target"]) for r in final})  # type: ignore[arg-type]
    xs = {t: i for i, t in enumerate(targets)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(str(r["dataset"]), str(r["unit"])) for r in final}):
        pts = [r for r in final if (r["dataset"], r["unit"]) == key]
        ax.plot(
            [xs[float(r["target"])] for r in pts],  # type: ignore[arg-type]
            [float(r["acc"]) for r in pts],  # type: ignore[arg-type]
            marker="o",
            label=f"{key[0]}, {key[1]} level",
        )
    ax.set_xticks(range(len(targets)), [_fmt_eps(t) for t in targets])
    ax.set_xlabel(f"ε (δ = {DELTA:g}) for the whole run")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    parser.add_argument("--units", default="record,client")
    parser.add_argument("--eps", default="1,3,8,inf", help="target epsilons, comma-separated")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--client-clip", type=float, default=1.0)
    parser.add_argument("--fashion-train", type=int, default=10_000)
    parser.add_argument("--fashion-test", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-out/privacy"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    opt = Options(
        nodes=args.nodes,
        rounds=args.rounds,
        model=args.model,
        cfg=TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
        client_clip=args.client_clip,
        seed=args.seed,
    )
    targets = [float(x) for x in args.eps.split(",") if x]
    rows: list[dict[str, object]] = []
    final: list[dict[str, object]] = []
    for name in [s for s in args.datasets.split(",") if s]:
        if name == "fashion-mnist" and not FASHION_MNIST_DIR.exists():
            print(f"skipping fashion-mnist: {FASHION_MNIST_DIR} not found", file=sys.stderr)
            continue
        ds = load_dataset(name, seed=args.seed)
        if name == "fashion-mnist":
            ds = _subsample(ds, args.fashion_train, args.fashion_test, args.seed)
        for unit in [s for s in args.units.split(",") if s]:
            for target in targets:
                start = time.perf_counter()
                z, per_round = run_case(ds, Case(name, unit, target), opt)
                for rnd, (acc, eps) in enumerate(per_round, start=1):
                    rows.append(
                        {
                            "dataset": name,
                            "unit": unit,
                            "target_epsilon": target,
                            "noise_multiplier": z,
                            "round": rnd,
                            "epsilon": eps,
                            "accuracy": acc,
                        }
                    )
                acc, eps = per_round[-1]
                final.append(
                    {
                        "dataset": name,
                        "unit": unit,
                        "target": target,
                        "z": z,
                        "eps": eps,
                        "acc": acc,
                    }
                )
                print(
                    f"{name} {unit} ε={_fmt_eps(target)} z={z:.3f} acc={acc:.3f} "
                    f"({time.perf_counter() - start:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    if not rows:
        print("no dataset to run", file=sys.stderr)
        return 1
    print(write_outputs(rows, final, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

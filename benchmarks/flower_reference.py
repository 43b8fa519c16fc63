"""Reference measurements of Flower (flwr 1.41) for comparison with Consortium's own benchmarks.

Flower is NOT a dependency of Consortium: run this script with a separate virtual environment
(see benchmarks/README.md), never with the project's .venv. It imports nothing from `consortium`.

    FLWR=/work/main/.tmp/flwr-venv/bin/python
    $FLWR benchmarks/flower_reference.py secagg --n 100 --d 100000 [--dropout 0.1]
    $FLWR benchmarks/flower_reference.py fedavg --partition iid|0.5 [--nodes 5 --rounds 10]
    $FLWR benchmarks/flower_reference.py primitives [--d 10000,100000,1000000]
    $FLWR benchmarks/flower_reference.py all [--out FILE.json]  # everything, one process each

secagg: one round of Flower's SecAgg+ (SecAggPlusWorkflow on the server, secaggplus_mod on the
clients, legacy FedAvg strategy inside DefaultWorkflow) in the Ray simulation runtime. Each client
returns a fixed random float32 vector of length d (num_examples 1); the server checks the unmasked
mean against the plain mean of the survivors' vectors. Two rounds by default: round 1 also pays
for Ray starting its client actors (~5 s here), so round 2 is the per-round figure. Dropped
clients raise inside `fit`, i.e. after the share-keys stage, so the server must reconstruct their
masks (the costly case).

fedavg: Flower's Message-API FedAvg on scikit-learn digits (80/20 split with seed 0), N clients,
IID or Dirichlet(alpha) label-skew partitions of the training set (seed 0, same algorithms as
consortium.learning.partition), a 64-64-10 ReLU MLP in NumPy trained with SGD (lr 0.05,
momentum 0.9, batch 32) for E local epochs per round; accuracy is the global model's on the test
split, evaluated centrally after the last round.

Printed times: "round" is measured inside the ServerApp (Ray and its actors already up); "total"
is the whole `run_simulation` call, which includes starting Ray (several seconds here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

# Offline, quiet: no telemetry ping, no Ray dashboard/usage stats.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np

SEED = 0
RESULT_TAG = "RESULT "


def backend_config(cpus_per_client: float) -> dict[str, Any]:
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "logging_level": "error", "log_to_driver": True},
    }


# --------------------------------------------------------------------------- SecAgg+


def client_vector(pid: int, d: int) -> np.ndarray:
    return np.random.default_rng(1000 + pid).uniform(-1.0, 1.0, d).astype(np.float32)


def run_secagg(args: argparse.Namespace) -> dict[str, Any]:
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    n, d = args.n, args.d
    n_drop = round(args.dropout * n)
    dropped = set(range(n - n_drop, n))  # partition ids that fail in fit
    out: dict[str, Any] = {"n": n, "d": d, "dropout": args.dropout, "dropped": n_drop}

    class VecClient(NumPyClient):  # type: ignore[misc, untyped-decorator, unused-ignore]
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: Any, config: Any) -> Any:
            if self.pid in dropped:
                raise RuntimeError(f"simulated dropout of client {self.pid}")
            return [client_vector(self.pid, d)], 1, {}

    def client_fn(context: Context) -> Any:
        return VecClient(int(context.node_config["partition-id"])).to_client()

    stage_times: list[dict[str, float]] = []  # one dict per round

    class TimedSecAggPlus(SecAggPlusWorkflow):  # type: ignore[misc, untyped-decorator, unused-ignore]
        """Times each of the four stages (server side, waiting for all clients included)."""

        def _timed(self, name: str, fn: Any, *a: Any) -> Any:
            if name == "setup":
                stage_times.append({})
            t0 = time.perf_counter()
            ok = fn(*a)
            stage_times[-1][name] = time.perf_counter() - t0
            return ok

        def setup_stage(self, *a: Any) -> Any:
            return self._timed("setup", super().setup_stage, *a)

        def share_keys_stage(self, *a: Any) -> Any:
            return self._timed("share_keys", super().share_keys_stage, *a)

        def collect_masked_vectors_stage(self, *a: Any) -> Any:
            return self._timed("collect_masked", super().collect_masked_vectors_stage, *a)

        def unmask_stage(self, *a: Any) -> Any:
            return self._timed("unmask", super().unmask_stage, *a)

    captured: list[np.ndarray] = []

    class CapturingFedAvg(FedAvg):  # type: ignore[misc, untyped-decorator, unused-ignore]
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is not None:
                captured.extend(parameters_to_ndarrays(params))
            return params, metrics

    server_app = ServerApp()

    @server_app.main()  # type: ignore[misc, untyped-decorator, unused-ignore]
    def main(grid: Grid, context: Context) -> None:
        strategy = CapturingFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.zeros(d, dtype=np.float32)]),
        )
        ctx = LegacyContext(
            context=context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy
        )
        workflow = DefaultWorkflow(
            fit_workflow=TimedSecAggPlus(
                num_shares=args.num_shares,
                reconstruction_threshold=args.threshold,
                clipping_range=args.clip,
                quantization_range=args.qrange,
            )
        )
        t0 = time.perf_counter()
        workflow(grid, ctx)
        out["workflow_s"] = time.perf_counter() - t0

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend_config(args.cpus_per_client),
    )
    out["total_s"] = time.perf_counter() - t0
    out["stages_s"] = stage_times
    # Round 1 also pays for Ray starting its client actors; later rounds are warm.
    out["round_s"] = [sum(st.values()) for st in stage_times]
    survivors = [p for p in range(n) if p not in dropped]
    expected = np.mean([client_vector(p, d) for p in survivors], axis=0)
    out["rounds_aggregated"] = len(captured)
    if captured:
        out["max_abs_err"] = float(np.max(np.abs(captured[-1] - expected)))
    else:
        out["max_abs_err"] = None  # the round failed: no aggregate reached the strategy
    out.update(
        num_shares=args.num_shares,
        threshold=args.threshold,
        clip=args.clip,
        qrange=args.qrange,
        cpus_per_client=args.cpus_per_client,
    )
    return out


def run_primitives(args: argparse.Namespace) -> dict[str, Any]:
    """Best-of-5 time of Flower's mask generator for one vector of d words (masking's floor).

    `pseudo_rand_gen` XOR-folds the 32-byte key into a 32-bit seed for NumPy's MT19937."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    out: dict[str, Any] = {}
    for d in args.d:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            pseudo_rand_gen(os.urandom(32), 2**32, [(d,)])
            best = min(best, time.perf_counter() - t0)
        out[str(d)] = best
    return out


# --------------------------------------------------------------------------- FedAvg on digits


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(len(bunch.target), -1)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    n_test = max(1, round(len(y) * 0.2))
    train, test = order[n_test:], order[:n_test]
    return x[train], y[train], x[test], y[test]


def partition(y: np.ndarray, parts: int, spec: str) -> list[np.ndarray]:
    """IID or Dirichlet(alpha) label skew, redrawn until no part is empty (seed 0)."""
    rng = np.random.default_rng(SEED)
    if spec == "iid":
        order = rng.permutation(len(y))
        return [np.sort(p) for p in np.array_split(order, parts)]
    alpha = float(spec)
    for _ in range(100):
        pieces: list[list[np.ndarray]] = [[] for _ in range(parts)]
        for label in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == label))
            shares = rng.dirichlet(np.full(parts, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for piece, chunk in zip(pieces, np.split(idx, cuts), strict=True):
                piece.append(chunk)
        result = [np.sort(np.concatenate(p)) for p in pieces]
        if min(len(p) for p in result) >= 1:
            return result
    raise RuntimeError("could not draw non-empty Dirichlet parts")


HIDDEN = 64


def init_mlp(n_in: int, n_out: int) -> list[np.ndarray]:
    """PyTorch-style uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) init, seed 0."""
    rng = np.random.default_rng(SEED)
    b1, b2 = 1 / np.sqrt(n_in), 1 / np.sqrt(HIDDEN)
    return [
        rng.uniform(-b1, b1, (n_in, HIDDEN)).astype(np.float32),
        rng.uniform(-b1, b1, HIDDEN).astype(np.float32),
        rng.uniform(-b2, b2, (HIDDEN, n_out)).astype(np.float32),
        rng.uniform(-b2, b2, n_out).astype(np.float32),
    ]


def mlp_logits(w: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(x @ w[0] + w[1], 0.0) @ w[2] + w[3]
    return out


def train_mlp(
    w: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int,
    lr: float = 0.05,
    momentum: float = 0.9,
    batch: int = 32,
) -> tuple[list[np.ndarray], float]:
    """Minibatch SGD with (PyTorch-style) momentum on softmax cross-entropy."""
    w = [a.copy() for a in w]
    vel = [np.zeros_like(a) for a in w]
    rng = np.random.default_rng(seed)
    loss = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for s in range(0, len(y), batch):
            idx = order[s : s + batch]
            xb, yb = x[idx], y[idx]
            h_pre = xb @ w[0] + w[1]
            h = np.maximum(h_pre, 0.0)
            z = h @ w[2] + w[3]
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            total += float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).sum())
            g = p
            g[np.arange(len(yb)), yb] -= 1.0
            g /= len(yb)
            gh = (g @ w[2].T) * (h_pre > 0)
            grads = [xb.T @ gh, gh.sum(axis=0), h.T @ g, g.sum(axis=0)]
            for i, gi in enumerate(grads):
                vel[i] = momentum * vel[i] + gi
                w[i] = w[i] - lr * vel[i]
        loss = total / len(y)
    return w, loss


def run_fedavg(args: argparse.Namespace) -> dict[str, Any]:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    x_tr, y_tr, x_te, y_te = load_digits_split()
    parts = partition(y_tr, args.nodes, args.partition)
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "partition": args.partition,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "part_sizes": [len(p) for p in parts],
    }

    client_app = ClientApp()

    @client_app.train()  # type: ignore[misc, untyped-decorator, unused-ignore]
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        idx = parts[pid]
        w = msg.content["arrays"].to_numpy_ndarrays()
        rnd = int(msg.content["config"]["server-round"])
        w, loss = train_mlp(
            w, x_tr[idx], y_tr[idx], args.epochs, seed=SEED + 7919 * (pid + 1) + rnd
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord(w),
                "metrics": MetricRecord({"train_loss": loss, "num-examples": len(idx)}),
            }
        )
        return Message(content=content, reply_to=msg)

    accs: list[float] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        w = arrays.to_numpy_ndarrays()
        acc = float(np.mean(mlp_logits(w, x_te).argmax(axis=1) == y_te))
        accs.append(acc)
        return MetricRecord({"accuracy": acc})

    server_app = ServerApp()

    @server_app.main()  # type: ignore[misc, untyped-decorator, unused-ignore]
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=args.nodes,
            min_available_nodes=args.nodes,
        )
        t0 = time.perf_counter()
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(init_mlp(x_tr.shape[1], 10)),
            num_rounds=args.rounds,
            evaluate_fn=evaluate_fn,
        )
        out["rounds_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.nodes,
        backend_config=backend_config(args.cpus_per_client),
    )
    out["total_s"] = time.perf_counter() - t0
    out["accuracy_per_round"] = accs  # index 0: the initial model
    out["final_accuracy"] = accs[-1] if accs else None
    # Centralized reference: same model and optimizer, rounds x epochs passes over the pooled set.
    t0 = time.perf_counter()
    w, _ = train_mlp(init_mlp(x_tr.shape[1], 10), x_tr, y_tr, args.rounds * args.epochs, SEED)
    out["central_accuracy"] = float(np.mean(mlp_logits(w, x_te).argmax(axis=1) == y_te))
    out["central_s"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- driver


ALL_RUNS: list[list[str]] = [
    ["primitives"],
    ["secagg", "--n", "100", "--d", "100000"],
    ["secagg", "--n", "100", "--d", "100000", "--dropout", "0.1"],
    ["secagg", "--n", "10", "--d", "10000"],
    ["secagg", "--n", "10", "--d", "1000000"],
    ["fedavg", "--partition", "iid"],
    ["fedavg", "--partition", "0.5"],
]


def run_all(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    for argv in ALL_RUNS:
        cmd = [sys.executable, os.path.abspath(__file__), *argv]
        print("$", " ".join(argv), flush=True)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            rows.append({"argv": argv, "error": f"timed out after {args.timeout} s"})
            continue
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not found:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            rows.append({"argv": argv, "error": f"rc={proc.returncode}: " + " | ".join(tail)})
        else:
            rows.append({"argv": argv, **json.loads(found[-1][len(RESULT_TAG) :])})
        print("  ", json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("secagg", help="one SecAgg+ round")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--d", type=int, default=100_000)
    s.add_argument("--dropout", type=float, default=0.0)
    # 15 share holders (self + 14 neighbours) and t = 8 match Consortium's k = 14, t = 8 at n = 100.
    s.add_argument("--num-shares", type=int, default=None, help="default: min(15, n) (odd)")
    s.add_argument("--threshold", type=int, default=None, help="default: num_shares // 2 + 1")
    s.add_argument("--clip", type=float, default=8.0, help="Flower default clipping_range")
    s.add_argument("--qrange", type=int, default=2**22, help="Flower default quantization_range")
    s.add_argument("--cpus-per-client", type=float, default=1.0)
    s.add_argument("--rounds", type=int, default=2, help="round 1 is cold (actor start-up)")
    f = sub.add_parser("fedavg", help="FedAvg on digits")
    f.add_argument("--nodes", type=int, default=5)
    f.add_argument("--partition", default="iid", help="'iid' or a Dirichlet alpha")
    f.add_argument("--rounds", type=int, default=10)
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--cpus-per-client", type=float, default=1.0)
    m = sub.add_parser("primitives", help="time Flower's mask PRG alone")
    m.add_argument(
        "--d", type=lambda v: [int(x) for x in v.split(",")], default=[10**4, 10**5, 10**6]
    )
    a = sub.add_parser("all", help="every configuration, each in its own process")
    a.add_argument("--timeout", type=int, default=300)
    a.add_argument("--out", default="")
    args = p.parse_args()
    if args.cmd == "all":
        run_all(args)
        return
    if args.cmd == "secagg":
        if args.num_shares is None:
            args.num_shares = min(15, args.n) if args.n > 15 else args.n
        if args.threshold is None:
            args.threshold = args.num_shares // 2 + 1
        result = run_secagg(args)
    elif args.cmd == "primitives":
        result = run_primitives(args)
    else:
        result = run_fedavg(args)
    print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

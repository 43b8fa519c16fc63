"""Round benchmark: latency, bytes on the wire and accuracy of real nodes in one process.

    consortium bench rounds [--nodes 5,20] [--datasets digits,fashion-mnist]
        [--partitions iid,0.1,0.5] [--rounds 10] [--fashion-train 12000] [--out FILE.md]

Each configuration starts N real `Node`s (SQLite ledgers, content-addressed stores, Ed25519
signatures, PyTorch training in worker threads) on one asyncio loop, talking over an
`InProcessNetwork` with a real clock. Every transport is wrapped in `CountingTransport`, which adds
the request and reply payload sizes of every request any node makes to one counter. Deadlines are
generous (collect 60 s, round 120 s, min_updates = N), so a healthy run never fails over; a run
that did is flagged in the notes.

- Round latency: on node 0, from the start of round r (its `_begin`) to its commit of round r;
  round 1 is left out when there is more than one round, because it also covers every node
  loading its data.
- Federated accuracy: the model of the last committed round, read from node 0's store, on the
  dataset's test split. Centralized accuracy: the same model trained on the pooled training set
  for rounds x epochs epochs (the same number of passes over each sample), same optimizer.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from consortium.core.identity import NodeIdentity
from consortium.learning import TrainConfig, build_model, evaluate, load_dataset, set_weights
from consortium.learning.central import train_centralized
from consortium.learning.datasets import FASHION_MNIST_DIR, Dataset, read_idx
from consortium.learning.serialize import weights_from_bytes
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.node.simulate import TimedNode as TimedNode  # also bench.round_e2e's
from consortium.protocol.record import run_records
from consortium.store.objects import get_bytes
from consortium.transport.base import DEFAULT_TIMEOUT, Handler
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

SEED = 0
MODEL = "mlp"
COLUMNS = (
    "dataset",
    "partition",
    "nodes",
    "rounds",
    "round latency median (s)",
    "p95 (s)",
    "MB sent per round",
    "federated acc",
    "centralized acc",
)


class ByteCounter:
    """Payload bytes of requests and replies: in all (`bytes`), and per member (`by_node`: what
    it sent and received, so each byte counts for both ends)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.by_node: dict[str, int] = defaultdict(int)

    def add(self, node: str, peer: str, size: int) -> None:
        self.bytes += size
        self.by_node[node] += size
        self.by_node[peer] += size

    def reset(self) -> None:
        self.bytes = 0
        self.by_node.clear()


class CountingTransport:
    """An InProcessTransport that adds every request's and reply's payload size to a counter."""

    def __init__(self, inner: InProcessTransport, counter: ByteCounter) -> None:
        self.inner = inner
        self.counter = counter
        self.node_id = inner.node_id

    async def start(self, handler: Handler) -> None:
        await self.inner.start(handler)

    async def stop(self) -> None:
        await self.inner.stop()

    async def request(
        self, peer: str, method: str, payload: bytes, timeout: float = DEFAULT_TIMEOUT
    ) -> bytes:
        self.counter.add(self.node_id, peer, len(payload))  # sent even if no reply comes back
        reply = await self.inner.request(peer, method, payload, timeout)
        self.counter.add(self.node_id, peer, len(reply))
        return reply


@dataclass
class Result:
    dataset: str
    partition: str
    nodes: int
    rounds: int
    latencies: list[float]
    bytes_per_round: float
    federated_acc: float
    centralized_acc: float
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        lat = self.latencies
        med = statistics.median(lat) if lat else float("nan")
        p95 = float(np.percentile(lat, 95)) if lat else float("nan")
        return [
            self.dataset,
            self.partition,
            str(self.nodes),
            str(self.rounds),
            f"{med:.2f}",
            f"{p95:.2f}",
            f"{self.bytes_per_round / 1e6:.2f}",
            f"{self.federated_acc:.3f}",
            f"{self.centralized_acc:.3f}",
        ]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzip), the format read_idx reads."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fashion_subset(src: Path, dst: Path, n_train: int, seed: int) -> Path:
    """A Fashion-MNIST folder with a seeded random n_train-sample training set, full test set."""
    dst.mkdir(parents=True, exist_ok=True)
    images = read_idx(src / "train-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(src / "train-labels-idx1-ubyte.gz", ndim=1)
    pick = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n_train])
    _write_idx(dst / "train-images-idx3-ubyte.gz", images[pick])
    _write_idx(dst / "train-labels-idx1-ubyte.gz", labels[pick])
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(src / name, dst / name)
    return dst


def _run_config(args: argparse.Namespace, dataset: str, n: int) -> RunConfig:
    return RunConfig(
        rounds=args.rounds,
        dataset=dataset,
        model=MODEL,
        seed=SEED,
        min_updates=n,
        collect_timeout=args.collect_timeout,
        round_timeout=args.round_timeout,
        secure_aggregation=args.secure_aggregation,
        started=int(time.time() * 1000),
    )


def _final_accuracy(node: Node, dataset: Dataset) -> float:
    records = run_records(node.ledger)
    weights = weights_from_bytes(get_bytes(node.store, records[-1].model))
    model = build_model(MODEL, dataset.input_shape, dataset.num_classes, seed=SEED)
    set_weights(model, weights)
    return evaluate(model, dataset.x_test, dataset.y_test)[1]


def accuracy_curve(node: Node, dataset: Dataset) -> list[float]:
    """Test accuracy of every committed round's global model, read from the node's store."""
    model = build_model(MODEL, dataset.input_shape, dataset.num_classes, seed=SEED)
    out = []
    for record in run_records(node.ledger):
        set_weights(model, weights_from_bytes(get_bytes(node.store, record.model)))
        out.append(evaluate(model, dataset.x_test, dataset.y_test)[1])
    return out


async def run_federated(
    root: Path,
    args: argparse.Namespace,
    dataset: Dataset,
    data_dir: Path | None,
    partition: str,
    n: int,
    run: RunConfig | None = None,
    curve: list[float] | None = None,
) -> tuple[list[float], float, float, list[str]]:
    """One run of `run` (default: from `args`): (round latencies on node 0, bytes per round,
    federated accuracy, notes); with `curve`, every round's accuracy is appended to it."""
    iid = partition == "iid"
    dirs = create_consortium(
        root,
        n,
        dataset=dataset.name,
        partition="iid" if iid else "dirichlet",
        alpha=0.5 if iid else float(partition),
        seed=SEED,
        data_dir=str(data_dir) if data_dir else None,
        allow_plaintext=args.secure_aggregation == "none",
    )
    counter = ByteCounter()
    async with running_nodes(dirs, counter) as nodes:
        run = run or _run_config(args, dataset.name, n)
        notes = await run_to_end(nodes, run, args.run_timeout)
        sent = counter.bytes
        first = nodes[0]
        records = run_records(first.ledger)
        if not records:
            return [], float("nan"), float("nan"), [*notes, "no round committed"]
        notes += check_run(nodes, n)
        done = [r for r in _timed_rounds(args.rounds) if r in first.committed]
        latencies = [first.committed[r] - first.begun[r] for r in done]
        if curve is not None:
            curve.extend(accuracy_curve(first, dataset))
        return latencies, sent / len(records), _final_accuracy(first, dataset), notes


@asynccontextmanager
async def running_nodes(dirs: list[Path], counter: ByteCounter) -> AsyncIterator[list[TimedNode]]:
    """Real nodes for the member folders `dirs` on this event loop, over one InProcessNetwork
    with every request counted by `counter` (reset once they have started: start-up catch-up
    is not round traffic); stopped on exit."""
    net = InProcessNetwork(seed=SEED)
    nodes: list[TimedNode] = []
    for d in dirs:
        ident = NodeIdentity.load(d)
        transport = CountingTransport(InProcessTransport(net, ident.node_id), counter)
        nodes.append(TimedNode(d, ident, transport, load_node_config(d)))
    try:
        for node in nodes:
            await node.start()
        counter.reset()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def run_to_end(nodes: list[TimedNode], run: RunConfig, run_timeout: float) -> list[str]:
    """Propose `run` from the first node (a quorum agrees, then it starts everywhere) and wait
    until every node has finished it, or `run_timeout` seconds; notes on what went wrong."""
    report = await nodes[0].propose_run(run)
    if not report["started"]:
        raise SystemExit(f"run not agreed: {report}")
    try:
        async with asyncio.timeout(run_timeout):
            await asyncio.gather(*(node.finished.wait() for node in nodes))
    except TimeoutError:
        return [f"run stopped after {run_timeout:g} s (--run-timeout) unfinished"]
    return []


def check_run(nodes: list[TimedNode], n: int) -> list[str]:
    """Notes on a finished run that was not clean: replicas that disagree, failovers, rounds
    committed without every node's update."""
    notes: list[str] = []
    records = run_records(nodes[0].ledger)
    if len({node.ledger.root() for node in nodes}) != 1:
        notes.append("replicas disagree at the end of the run")
    failovers = sum(1 for r in records if r.attempt > 0)
    if failovers:
        notes.append(f"{failovers} round(s) needed a failover")
    short = [r.round for r in records if len(r.participants) < n]
    if short:
        notes.append(f"rounds {short} committed without every node's update")
    return notes


def _timed_rounds(rounds: int) -> range:
    """Rounds whose latency counts: round 1 also covers every node loading its data."""
    return range(2 if rounds > 1 else 1, rounds + 1)


def _latency_rounds(rounds: int) -> str:
    r = _timed_rounds(rounds)
    why = " (round 1 also covers data loading)" if r.start > 1 else ""
    return f"rounds {r.start}..{r.stop - 1}{why}"


def centralized_accuracy(dataset: Dataset, args: argparse.Namespace) -> float:
    run = RunConfig()  # defaults: the same optimizer settings as the federated runs
    cfg = TrainConfig(
        epochs=run.epochs,
        batch_size=run.batch_size,
        lr=run.lr,
        optimizer=run.optimizer,
        momentum=run.momentum,
        seed=SEED,
    )
    return train_centralized(dataset, MODEL, args.rounds * run.epochs, cfg, seed=SEED)


def markdown(results: list[Result], notes: list[str]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in results]
    run_notes = [f"{r.dataset}/{r.partition}/{r.nodes}: {n}" for r in results for n in r.notes]
    all_notes = notes + run_notes
    if all_notes:
        lines += ["", "Notes:", *[f"- {n}" for n in all_notes]]
    return "\n".join(lines) + "\n"


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="consortium bench rounds",
        description="Round latency, bytes per round and accuracy vs centralized, in one process.",
    )
    p.add_argument("--nodes", default="5,20", help="comma-separated node counts")
    p.add_argument("--datasets", default="digits,fashion-mnist", help="comma-separated datasets")
    p.add_argument(
        "--partitions", default="iid,0.1,0.5", help="'iid' and/or Dirichlet alphas, comma-separated"
    )
    p.add_argument("--rounds", type=int, default=10, help="rounds per run")
    p.add_argument(
        "--fashion-train",
        type=int,
        default=0,
        help="Fashion-MNIST training samples used (random subset; 0 = all 60000)",
    )
    p.add_argument("--fashion-dir", type=Path, default=FASHION_MNIST_DIR)
    p.add_argument("--collect-timeout", type=float, default=60.0)
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--run-timeout", type=float, default=900.0, help="give up on a run after this")
    p.add_argument(
        "--secure-aggregation",
        choices=["secagg+", "none"],
        default="secagg+",
        help="secagg+ (default, as in a run) or none (plaintext FedAvg at the leader)",
    )
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    args.node_counts = [int(x) for x in _csv(args.nodes)]
    args.dataset_names = _csv(args.datasets)
    args.partition_names = _csv(args.partitions)
    for part in args.partition_names:
        if part != "iid":
            try:
                if not float(part) > 0:
                    raise ValueError
            except ValueError:
                p.error(f"partition {part!r} is neither 'iid' nor a positive Dirichlet alpha")
    if args.rounds < 1 or any(n < 1 for n in args.node_counts):
        p.error("--rounds and --nodes must be at least 1")
    return args


def _prepare(name: str, args: argparse.Namespace, tmp: Path, notes: list[str]) -> Path | None:
    """The data_dir nodes should load `name` from (None: the default); raises if unavailable."""
    if name != "fashion-mnist":
        return None
    src = Path(args.fashion_dir)
    if not (src / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(src)
    if args.fashion_train and args.fashion_train < 60000:
        notes.append(
            f"fashion-mnist: random {args.fashion_train}-sample subset of the 60000 training "
            "images (--fashion-train), full 10000-image test set"
        )
        return fashion_subset(src, tmp / "fashion-subset", args.fashion_train, SEED)
    return src


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # many nodes share few cores: one thread each
    results: list[Result] = []
    notes = [
        f"aggregation {args.secure_aggregation}; consent registries with every record granted; "
        f"model {MODEL}, RunConfig defaults (epochs 2, batch 32, sgd lr 0.05 momentum 0.9), "
        f"min_updates = nodes, seed {SEED}; centralized: {args.rounds * 2} epochs on the "
        "pooled training set (nodes also hold back 10% of their shard for validation)",
        f"latency: node 0, round begin to commit, {_latency_rounds(args.rounds)}; "
        "MB = request + reply payload bytes of all nodes' requests / rounds",
    ]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmpname:
        tmp = Path(tmpname)
        for name in args.dataset_names:
            try:
                data_dir = _prepare(name, args, tmp, notes)
            except FileNotFoundError as exc:
                msg = f"{name}: skipped, no data in {exc} (apt-get install dataset-fashion-mnist)"
                print(msg, file=sys.stderr)
                notes.append(msg)
                continue
            dataset = load_dataset(name, data_dir, seed=SEED)
            t = time.perf_counter()
            central = centralized_accuracy(dataset, args)
            print(
                f"{name}: centralized {central:.3f} ({time.perf_counter() - t:.0f} s)",
                file=sys.stderr,
            )
            for part in args.partition_names:
                for n in args.node_counts:
                    t = time.perf_counter()
                    root = tmp / f"{name}-{part}-{n}"
                    lat, per_round, acc, run_notes = asyncio.run(
                        run_federated(root, args, dataset, data_dir, part, n)
                    )
                    shutil.rmtree(root, ignore_errors=True)
                    res = Result(
                        name, part, n, args.rounds, lat, per_round, acc, central, run_notes
                    )
                    results.append(res)
                    print(
                        f"{' | '.join(res.cells())} ({time.perf_counter() - t:.0f} s)",
                        file=sys.stderr,
                    )
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    table = markdown(results, notes)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

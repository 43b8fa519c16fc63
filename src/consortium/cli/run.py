"""`consortium node start`, `consortium run start` and `consortium audit`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import typer

from consortium.audit import audit as audit_folder
from consortium.cli.common import console, fail, handle_errors
from consortium.cli.identity import PASSPHRASE
from consortium.node.config import RunConfig

run_app = typer.Typer(help="Start and inspect training runs.", no_args_is_help=True)


@handle_errors
def node_start(
    directory: Path = typer.Option(..., "--dir", help="The node's folder (from `node init`)."),
    passphrase: str | None = PASSPHRASE,
    exit_when_finished: bool = typer.Option(
        False, help="Exit once the current run's last round is committed."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every message delivery."),
) -> None:
    """Run this node: gRPC server with mTLS, round protocol, ledger and store, until stopped."""
    from consortium.node.runner import serve

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if not (directory / "genesis.json").exists():
        fail(f"{directory}/genesis.json not found: copy the signed genesis manifest there", 2)
    asyncio.run(serve(directory, passphrase, exit_when_finished))


@run_app.command("start")
@handle_errors
def run_start(
    directory: Path = typer.Option(..., "--dir", help="Folder of the member starting the run."),
    rounds: int = typer.Option(10, min=1, help="Training rounds."),
    purpose: str = typer.Option("research", help="A purpose declared in genesis."),
    dataset: str = typer.Option("digits", help="digits | breast_cancer | fashion-mnist."),
    model: str = typer.Option("mlp", help="mlp | cnn | logreg."),
    strategy: str = typer.Option("fedavg", help="fedavg | fedprox."),
    mu: float = typer.Option(0.0, help="FedProx proximal term."),
    epochs: int = typer.Option(2, min=1, help="Local epochs per round."),
    lr: float = typer.Option(0.05, help="Learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    seed: int = typer.Option(0, help="Seed of the initial model and batch order."),
    round_timeout: float = typer.Option(30.0, help="Seconds before a leader is replaced."),
    secure_aggregation: str = typer.Option(
        "secagg+", help="secagg+ (the leader learns only the sum) or none (plaintext FedAvg)."
    ),
    clip_norm: float = typer.Option(10.0, help="L2 bound on each node's model delta (SecAgg+)."),
    anchor_every: int = typer.Option(
        0,
        min=0,
        help="Anchor the final head every k rounds (the chain in DIR/chain.toml, else each "
        "node's embedded EVM chain).",
    ),
    from_model: str = typer.Option(
        "", "--from-model", help="CID of a ledger model to start from (retrain after an erasure)."
    ),
    passphrase: str | None = PASSPHRASE,
) -> None:
    """Ask every member to start a training run (from any member)."""
    from consortium.node.runner import start_run

    run = RunConfig.from_body(
        {
            **RunConfig().body(),
            "rounds": rounds,
            "purpose": purpose,
            "dataset": dataset,
            "model": model,
            "strategy": strategy,
            "mu": mu,
            "epochs": epochs,
            "lr": lr,
            "momentum": momentum,
            "seed": seed,
            "round_timeout": round_timeout,
            "anchor_every": anchor_every,
            "secure_aggregation": secure_aggregation,
            "clip_norm": clip_norm,
            "collect_timeout": round_timeout / 3,
            "started": int(time.time() * 1000),
            "initial_model": from_model,
        }
    )
    failed = asyncio.run(start_run(directory, passphrase, run))
    for line in failed:
        console.print(f"[yellow]not started on {line}[/]")
    console.print(f"run {run.run_id()} started: {rounds} rounds of {model} on {dataset}")


@handle_errors
def audit(
    directory: Path = typer.Argument(..., help="A node or run folder (ledger.sqlite + store/)."),
    chain_url: str | None = typer.Option(
        None, help="Ethereum JSON-RPC URL to check anchors on (default: DIR/chain.toml)."
    ),
    contract: str | None = typer.Option(
        None, help="Address of the consortium's anchor contract (default: DIR/chain.toml)."
    ),
) -> None:
    """Re-verify everything: genesis, signatures, Merkle root, cosigned heads, every artifact,
    and the anchored heads (on the shared chain of DIR/chain.toml or --chain-url/--contract, else
    the folder's embedded chain)."""
    t0 = time.perf_counter()
    r = audit_folder(directory, chain_url=chain_url, contract=contract)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(r.kinds.items()))
    console.print(
        f"audit OK: consortium {r.consortium!r}, {r.members} members (quorum {r.quorum}); "
        f"{r.entries} entries ({kinds}); {r.final_heads} final heads of {r.heads}, "
        f"latest final size {r.latest_final_size}; {r.anchored} anchored heads (latest size "
        f"{r.latest_anchored_size}); {r.artifacts} artifacts, {r.blocks} blocks "
        f"re-hashed; root {r.root.hex()[:16]}… in {time.perf_counter() - t0:.2f} s"
    )
    if "chain" in r.extra:
        console.print(f"anchors checked on {r.extra['chain']}", highlight=False)

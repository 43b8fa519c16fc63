"""`consortium node start`, `consortium run start|stop` and `consortium audit` (`run status` and
`run watch` are in `cli.status`)."""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from consortium.audit import audit as audit_folder
from consortium.cli.common import console, err_console, fail, handle_errors
from consortium.cli.identity import node_passphrase
from consortium.core.errors import ConfigError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.node.config import RunConfig
from consortium.protocol.storage import CHALLENGE_ARTIFACTS, MAX_CHALLENGE_ARTIFACTS
from consortium.zk import DEFAULT_SAMPLE

run_app = typer.Typer(help="Start and inspect training runs.", no_args_is_help=True)


@handle_errors
def node_start(
    directory: Path = typer.Option(..., "--dir", help="The node's folder (from `node init`)."),
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
        force=True,  # an imported library installs a WARNING-level root handler first
    )
    if not (directory / "genesis.json").exists():
        fail(f"{directory}/genesis.json not found: copy the signed genesis manifest there", 2)
    asyncio.run(serve(directory, node_passphrase(directory), exit_when_finished))


@run_app.command("stop")
@handle_errors
def stop(
    directory: Path = typer.Option(..., "--dir", help="This member's node folder."),
    reason: str = typer.Option(
        "stopped by an operator", "--reason", help="Why (recorded on the ledger; no personal data)."
    ),
) -> None:
    """Propose to stop the current run: it stops on every member once a quorum cosigned the
    run-stop entry (this member's node must be running)."""
    from consortium.node.runner import stop_run

    report = asyncio.run(stop_run(directory, node_passphrase(directory), reason))
    _print_report(report)
    if not report["agreed"]:
        fail(
            f"run {report.get('run', '?')} not stopped: {_agreed_by(directory, report)}; a "
            "quorum must cosign the run-stop entry",
            1,
        )
    console.print(f"run {report['run']} stopped, agreed by {', '.join(report['accepted'])}")


def _print_report(report: dict[str, Any]) -> None:
    """One line on stderr per member that refused (and why) or could not be reached."""
    from consortium.node.runner import report_lines

    for line in report_lines(report):
        err_console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)


def _agreed_by(directory: Path, report: dict[str, Any]) -> str:
    genesis = Genesis.load(directory / GENESIS_FILE)
    accepted = report["accepted"]
    who = f" ({', '.join(accepted)})" if accepted else ""
    return (
        f"accepted by {len(accepted)} of {len(genesis.members)} members{who}, quorum "
        f"{genesis.quorum}"
    )


@run_app.command("start")
@handle_errors
def run_start(
    directory: Path = typer.Option(..., "--dir", help="Folder of the member starting the run."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A TOML run configuration: any run option as a top-level key, and a [privacy] "
        "table (unit, noise_multiplier or target_epsilon, clip_norm, client_clip, delta, "
        "dropout_tolerance). Options given on the command line override it.",
    ),
    rounds: int | None = typer.Option(None, min=1, help="Training rounds [10]."),
    purpose: str | None = typer.Option(None, help="A purpose declared in genesis [research]."),
    task: str | None = typer.Option(
        None,
        help="Your task, 'package.module:name' (installed on every member; its code hash is "
        "pinned from this node's copy). Default: the built-in task of --dataset and --model.",
    ),
    dataset: str | None = typer.Option(None, help="digits | breast_cancer | fashion-mnist."),
    model: str | None = typer.Option(None, help="mlp | cnn | logreg [mlp]."),
    strategy: str | None = typer.Option(None, help="fedavg | fedprox [fedavg]."),
    mu: float | None = typer.Option(None, help="FedProx proximal term [0]."),
    epochs: int | None = typer.Option(None, min=1, help="Local epochs per round [2]."),
    lr: float | None = typer.Option(None, help="Learning rate [0.05]."),
    momentum: float | None = typer.Option(None, help="SGD momentum [0.9]."),
    seed: int | None = typer.Option(None, help="Seed of the initial model and batch order [0]."),
    round_timeout: float | None = typer.Option(
        None, help="Seconds before a leader is replaced [30]; collecting waits a third of it."
    ),
    secure_aggregation: str | None = typer.Option(
        None, help="secagg+ (the leader learns only the sum; default) or none (plaintext)."
    ),
    clip_norm: float | None = typer.Option(
        None, help="L2 bound on each node's model delta under SecAgg+ [10]."
    ),
    dp: str | None = typer.Option(
        None, help="Differential privacy unit: none (default), record, client or both."
    ),
    epsilon: float | None = typer.Option(
        None, help="Target epsilon of the run (calibrates the noise multiplier)."
    ),
    noise_multiplier: float | None = typer.Option(None, help="DP noise multiplier, instead."),
    anchor_every: int | None = typer.Option(
        None,
        min=0,
        help="Anchor the final head every k rounds (the chain in DIR/chain.toml, else each "
        "node's embedded EVM chain) [0: off].",
    ),
    from_model: str | None = typer.Option(
        None, "--from-model", help="CID of a ledger model to start from (retrain after an erasure)."
    ),
    replicas: int | None = typer.Option(
        None,
        min=0,
        help="Members that hold each round's model and transcript, between min(3, n) and n; "
        "the others drop them after the round [0: every member].",
    ),
    challenge_every: int | None = typer.Option(
        None,
        min=0,
        help="Every k rounds, holders prove from the beacon's challenges that they still hold "
        "the run's artifacts; one that cannot is named and replaced [0: off].",
    ),
    challenge_artifacts: int | None = typer.Option(
        None,
        min=1,
        max=MAX_CHALLENGE_ARTIFACTS,
        help="Artifacts a challenge round challenges at most, drawn from its beacon (each at "
        f"every holder): bounds the record [{CHALLENGE_ARTIFACTS}].",
    ),
    prove_every: int = typer.Option(
        0,
        min=0,
        help="Proofs of evaluation (pip install 'consortium[zk]'): every member proves the "
        "model of every k-th round on a beacon-drawn sample of its committed test records; "
        "the run pins the SRS of this node's node.toml [zk] srs and the circuit settings it "
        "calibrates [0: off].",
    ),
    proof_sample: int = typer.Option(
        DEFAULT_SAMPLE,
        min=1,
        help=f"s: test records each proof of evaluation samples [{DEFAULT_SAMPLE}: the largest "
        "whose digits-MLP proof takes at most 60 s on 2 cores].",
    ),
    test_srs: bool = typer.Option(
        False,
        "--test-srs",
        help="The [zk] srs file was generated locally (`ezkl gen-srs`): every proof is "
        "labelled TEST ONLY, since whoever generated it could forge proofs.",
    ),
) -> None:
    """Ask every member to start a training run (from any member)."""
    from consortium.node.runner import start_run

    body: dict[str, Any] = RunConfig().body()
    if config is not None:
        body.update(_load_toml(config))
    flags = {
        "rounds": rounds,
        "purpose": purpose,
        "task": task,
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
        "initial_model": from_model,
        "replicas": replicas,
        "challenge_every": challenge_every,
        "challenge_artifacts": challenge_artifacts,
    }
    body.update({k: v for k, v in flags.items() if v is not None})
    if round_timeout is not None:
        body["collect_timeout"] = round_timeout / 3
    privacy = dict(body.get("privacy") or {})
    if dp is not None:
        privacy["unit"] = dp
    if epsilon is not None:
        privacy["target_epsilon"], privacy["noise_multiplier"] = epsilon, None
    if noise_multiplier is not None:
        privacy["noise_multiplier"], privacy["target_epsilon"] = noise_multiplier, None
    body["privacy"] = privacy
    body["started"] = int(time.time() * 1000)
    run = RunConfig.from_body(body).pinned()  # the task as installed here, or a clear error
    if prove_every:
        from consortium.core.identity import PUBLIC_FILE, PublicIdentity
        from consortium.node.config import load_node_config
        from consortium.node.evaluations import with_proofs

        name = PublicIdentity.load(directory / PUBLIC_FILE).name
        run = with_proofs(run, load_node_config(directory), name, prove_every=prove_every,
                          sample=proof_sample, srs_test_only=test_srs)  # fmt: skip
    report = asyncio.run(start_run(directory, node_passphrase(directory), run))
    _print_report(report)
    if not report["started"]:
        fail(
            f"run {run.run_id()} not started: {_agreed_by(directory, report)}; a quorum must "
            "cosign the run-config entry",
            1,
        )
    dp_text = "" if run.privacy.unit == "none" else f", {run.privacy.unit}-level DP"
    if run.proofs:
        dp_text += (
            f", proofs of evaluation every {run.prove_every} rounds on s = {run.proof_sample}"
            + (" (TEST ONLY SRS)" if run.srs_test_only else "")
        )
    console.print(
        f"run {run.run_id()} agreed by {', '.join(report['accepted'])} and started: "
        f"{run.rounds} round{'' if run.rounds == 1 else 's'} of "
        f"{run.task or f'{run.model} on {run.dataset}'} "
        f"(code {run.task_hash[:19]}…), "
        f"aggregation {run.secure_aggregation}{dp_text}"
    )


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"run configuration not found: {path}") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return data


@handle_errors
def audit(
    directory: Path = typer.Argument(..., help="A node or run folder (ledger.sqlite + store/)."),
    chain_url: str | None = typer.Option(
        None, help="Ethereum JSON-RPC URL to check anchors on (default: DIR/chain.toml)."
    ),
    contract: str | None = typer.Option(
        None, help="Address of the consortium's anchor contract (default: DIR/chain.toml)."
    ),
    onchain: bool = typer.Option(
        False,
        "--onchain",
        help="Also check every listed proof of evaluation on an embedded EVM chain: EZKL's "
        "verifier contract behind a wrapper bound to the model at the listed CID and the "
        "node's committed test data (needs solc-js: make solcjs, or CONSORTIUM_SOLCJS).",
    ),
) -> None:
    """Re-verify everything: genesis, signatures, Merkle root, cosigned heads, every artifact,
    the proofs of evaluation (with --onchain, on chain too), and the anchored heads (on the
    shared chain of DIR/chain.toml or --chain-url/--contract, else the folder's embedded
    chain)."""
    t0 = time.perf_counter()
    solcjs = None
    if onchain:  # missing solc-js: one line before the long audit
        from consortium.zk.evm import find_solcjs

        solcjs = find_solcjs()
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
    if r.secure_rounds:
        console.print(f"{r.secure_rounds} SecAgg+ aggregates recomputed from their transcripts")
    if r.storage_proofs or r.storage_missing:
        console.print(
            f"{r.storage_proofs} storage proofs checked against the committed roots; "
            f"{len(r.storage_missing)} challenge(s) unanswered",
            highlight=False,
        )
    for line in r.storage_missing + r.storage_lost:
        console.print(f"storage: {line}", highlight=False)
    for purpose, spent in sorted(r.privacy.items()):
        parts = ", ".join(f"{k} {v:.3g}" for k, v in sorted(spent.items()))
        console.print(f"privacy spent on purpose {purpose!r} (recomputed): {parts}")
    if r.evaluations:
        console.print(f"{len(r.evaluations)} proofs of evaluation re-verified:", highlight=False)
        for ev in r.evaluations:
            console.print(f"  {ev.line()}", highlight=False, soft_wrap=True)
    if onchain:
        from consortium.audit.auditor import check_onchain

        checks = check_onchain(directory, r.evaluations, solcjs=solcjs)
        for c in checks:
            console.print(f"  {c.line()}", highlight=False, soft_wrap=True)
        refused = [c for c in checks if c.gas is None]
        if refused:
            fail(f"audit failed: {len(refused)} of {len(checks)} proofs refused on chain", 1)
        console.print(
            f"{len(checks)} proofs of evaluation accepted on chain"
            if checks
            else "no proofs of evaluation to check on chain",
            highlight=False,
        )

"""`consortium bench …`: the benchmarks in `consortium.bench` (they ship with the package)."""

from __future__ import annotations

import importlib
from types import ModuleType

import typer

bench_app = typer.Typer(
    help="Benchmarks (consortium.bench; tables go to stdout or --out).",
    no_args_is_help=True,
)

_SCRIPTS = (
    "ledger",
    "secagg",
    "rounds",
    "tamper",
    "anchor",
    "privacy",
    "chaos",
    "beacon",
    "accuracy",
    "store",
    "traffic",
    "privacy-audit",
    "zk",
    "round-e2e",
)


def load_script(name: str) -> ModuleType:
    """The benchmark `name` (a key of _SCRIPTS) as a module."""
    if name not in _SCRIPTS:
        raise KeyError(f"no benchmark named {name!r}; choose one of: {', '.join(_SCRIPTS)}")
    return importlib.import_module(f"consortium.bench.{name.replace('-', '_')}")


def _run(name: str, args: list[str]) -> None:
    raise typer.Exit(int(load_script(name).main(args) or 0))


def _command(name: str, doc: str) -> None:
    def command(ctx: typer.Context) -> None:
        _run(name, list(ctx.args))

    command.__doc__ = doc + " Extra options are passed to the script (see its --help)."
    bench_app.command(
        name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,  # --help goes to the script, which knows its options
    )(command)


_command("ledger", "Ledger appends/s, proof sizes and times, store MB/s, audit time.")
_command("secagg", "SecAgg+ phase times for n clients and d words, with dropouts.")
_command("rounds", "Round latency, bytes per round, accuracy vs centralized.")
_command("anchor", "Anchor latency and gas on the embedded chain (and anvil if present).")
_command("privacy", "Accuracy against epsilon for record- and client-level DP (CSV + PNG).")
_command("tamper", "Flip bits in a real run folder: does audit notice every change, and where?")
_command("chaos", "SIGKILL and restart node processes during a SecAgg+ run: liveness, catch-up.")
_command("accuracy", "Accuracy against rounds for 5, 20, 50 members, with and without DP.")
_command("beacon", "The shared beacon: genesis DKG cost, partial, check and combination times.")
_command("round-e2e", "Whole rounds at n = 10..100 in-process and over gRPC, against Flower.")
_command("store", "UnixFS import MiB/s: ours against the JavaScript importer and kubo 0.22.")
_command("traffic", "Bytes per member per SecAgg+ round and a voter's verification time.")
_command(
    "privacy-audit",
    "Accuracy and attack success side by side: plaintext FedAvg, SecAgg+, SecAgg+ with "
    "record-level DP at ε = 1, 3, 8, and centralized training (membership inference, "
    "gradient inversion, one-run ε bound).",
)
_command("zk", "Proofs of evaluation: settings, setup, prove, verify, proof size, peak memory.")

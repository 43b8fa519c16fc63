"""`consortium bench …`: run the benchmark scripts under benchmarks/ (a source checkout)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import typer

from consortium.cli.common import fail

bench_app = typer.Typer(
    help="Benchmarks (scripts under benchmarks/; tables go to stdout or --out).",
    no_args_is_help=True,
)

_SCRIPTS = {
    "ledger": "ledger.py",
    "secagg": "secagg.py",
    "rounds": "rounds.py",
    "tamper": "tamper.py",
    "anchor": "anchor.py",
    "privacy": "privacy.py",
    "chaos": "chaos.py",
}


def load_script(name: str) -> ModuleType:
    """The benchmark script `name` (a key of _SCRIPTS: ledger, secagg, ..., chaos) as a module."""
    path = Path(__file__).resolve().parents[3] / "benchmarks" / _SCRIPTS[name]
    if not path.exists():
        fail(f"{path} not found: `consortium bench` runs from a source checkout of the project", 2)
    spec = importlib.util.spec_from_file_location(f"consortium_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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

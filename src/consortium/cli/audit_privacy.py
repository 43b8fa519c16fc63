"""`consortium audit privacy RUN_DIR --out report.html`: what the run's published models reveal
about the folder's own node's records (membership inference), as one self-contained HTML file
and, with `--json`, the same figures as JSON.

`consortium audit DIR` (re-verify a folder) stays as it was: `audit` is a group whose default
command is that verification, so any first argument other than a subcommand's name is a folder.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from typer.core import TyperGroup

from consortium.cli.common import console, err_console, handle_errors
from consortium.core.errors import ConfigError
from consortium.core.files import atomic_write

#: The hidden command `consortium audit DIR` runs.
DEFAULT = "folder"


class AuditGroup(TyperGroup):
    """`audit SUBCOMMAND …`, or `audit DIR …` for the default command (folder verification)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)


def audit_app(verify: Callable[..., None]) -> typer.Typer:
    """The `audit` group: `verify` (the folder audit) as its default command, and `privacy`."""
    app = typer.Typer(
        cls=AuditGroup,
        no_args_is_help=True,
        help="Audit a node folder. `consortium audit DIR [--chain-url URL --contract ADDR]` "
        "re-verifies everything in it; `consortium audit privacy DIR --out report.html` "
        "measures what the run's published models reveal about the node's records.",
    )
    app.command(DEFAULT, hidden=True)(verify)
    app.command("privacy")(privacy)
    return app


def _progress() -> tuple[Progress, Callable[[str, int, int], None]]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int) -> None:
        if not tasks:  # shown from the first long step on: an early error prints one line only
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, report


@handle_errors
def privacy(
    directory: Path = typer.Argument(
        ..., help="A member's node folder (ledger, store, node.toml, consent.sqlite)."
    ),
    out: Path = typer.Option(..., "--out", help="The HTML report to write (one file)."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the figures as JSON to this file."
    ),
    run: str | None = typer.Option(None, help="Audit this run id (default: the latest)."),
    reference_models: int = typer.Option(
        8, help="LiRA/RMIA reference models (even: half trained on each half of the non-members)."
    ),
    seed: int = typer.Option(0, help="Seeds every random choice of the audit."),
    max_records: int = typer.Option(
        5000, help="At most this many members and non-members each (a seeded sample)."
    ),
    max_rounds: int = typer.Option(
        50, help="Audit at most this many rounds' models, evenly spread (the last always)."
    ),
    inversion_iterations: int = typer.Option(
        300,
        help="Gradient inversion: optimisation steps per restart (0 skips it). 300 rebuild "
        "8x8 digits in about 10 s on one core.",
    ),
    inversion_restarts: int = typer.Option(2, help="Gradient inversion: random restarts."),
    inversion_batch: int = typer.Option(
        4, help="Gradient inversion: the node's records in the attacked update."
    ),
    inversion_labels: str = typer.Option(
        "known",
        help="Gradient inversion: 'known' labels (strongest attacker) or 'inferred' from the "
        "update (iDLG).",
    ),
    canaries: int = typer.Option(
        0,
        help="One-run ε audit (Steinke et al. 2023): plant this many canaries in a separate run "
        "with this run's configuration on simulated members (0: skip). 100 canaries can show "
        "at most ε ≈ 3.5, 1000 about 5.8.",
    ),
    canary_guesses: int | None = typer.Option(
        None, help="Canary guesses (the rest abstained); default: every canary."
    ),
    canary_rounds: int | None = typer.Option(
        None, help="Rounds of the canary run (default: the audited run's)."
    ),
    canary_timeout: float = typer.Option(
        3600.0, help="Seconds the canary run may take before the audit gives up."
    ),
) -> None:
    """Membership inference against every round's published model of a run (loss threshold,
    LiRA and RMIA offline), with the folder's own node's training records as members and the
    task's test split as non-members; an HTML report with ROC curves, the recorded ε beside the
    measured attack success, a summary a data-protection officer can read, and who sees what;
    and gradient inversion (Geiping et al. 2020 style) of the node's own records from its update
    as a plaintext leader, a SecAgg+ leader (the sum only) and with DP noise sees it, with PSNR,
    SSIM and the images side by side; with --canaries m, a one-run ε lower bound (Steinke, Nasr
    and Jagielski 2023) from a separate canary run with this run's configuration, against the
    accountant's ε (a bound above it is reported as a defect)."""
    import torch

    from consortium.audit.privacy.canaries import CanarySettings, audit_canaries
    from consortium.audit.privacy.inversion import (
        InversionSettings,
        InversionUnsupported,
        audit_inversion,
    )
    from consortium.audit.privacy.membership import Settings, audit_membership
    from consortium.audit.privacy.views import views
    from consortium.ui.privacy import page, summary, to_json
    from consortium.ui.report import write

    for path, what in ((out, "--out"), (json_out, "--json")):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{what} {path}: folder {path.parent} does not exist")
    if inversion_labels not in ("known", "inferred"):
        raise ConfigError(f"--inversion-labels {inversion_labels!r}: choose 'known' or 'inferred'")
    if inversion_iterations < 0 or inversion_restarts < 1 or inversion_batch < 1:
        raise ConfigError(
            "--inversion-iterations must be at least 0, --inversion-restarts and "
            "--inversion-batch at least 1"
        )
    if canaries and canaries < 2:
        raise ConfigError("--canaries: give at least 2 (or 0 to skip the one-run audit)")
    if canary_guesses is not None and not 1 <= canary_guesses <= max(canaries, 1):
        raise ConfigError(
            f"--canary-guesses {canary_guesses}: between 1 and --canaries ({canaries})"
        )
    if canary_rounds is not None and canary_rounds < 1:
        raise ConfigError("--canary-rounds: at least 1")
    settings = Settings(
        reference_models=reference_models,
        seed=seed,
        max_records=max_records,
        max_rounds=max_rounds,
    )
    # Small models: on a few shared cores, intra-op threads only contend (30x slower measured
    # on 2 cores); the reference models are trained one after another.
    torch.set_num_threads(1)
    bar, report = _progress()
    try:
        audit = audit_membership(directory, run=run, settings=settings, progress=report)
        inversion = None
        skipped = "No gradient inversion (--inversion-iterations 0)."
        if inversion_iterations:
            try:
                inversion = audit_inversion(
                    directory,
                    run=audit.run,
                    settings=InversionSettings(
                        iterations=inversion_iterations,
                        restarts=inversion_restarts,
                        batch=inversion_batch,
                        labels="known" if inversion_labels == "known" else "inferred",
                        seed=seed,
                    ),
                    progress=report,
                )
            except InversionUnsupported as exc:
                skipped = f"No gradient inversion: {exc}."
        canary = (
            audit_canaries(
                directory,
                CanarySettings(
                    canaries=canaries,
                    guesses=canary_guesses,
                    rounds=canary_rounds,
                    seed=seed,
                    timeout=canary_timeout,
                ),
                run=audit.run,
                progress=report,
            )
            if canaries
            else None
        )
    finally:
        if bar.task_ids:  # a bar never started would still print an empty line
            bar.stop()
    seen = views(audit.status.config)
    command = shlex.join(
        ["consortium", "audit", "privacy", str(directory), "--out", str(out)]
        + (["--json", str(json_out)] if json_out else [])
        + ["--run", audit.run, "--reference-models", str(reference_models), "--seed", str(seed)]
        + (["--max-records", str(max_records)] if max_records != 5000 else [])
        + (["--max-rounds", str(max_rounds)] if max_rounds != 50 else [])
        + [
            "--inversion-iterations",
            str(inversion_iterations),
            "--inversion-restarts",
            str(inversion_restarts),
            "--inversion-batch",
            str(inversion_batch),
            "--inversion-labels",
            inversion_labels,
        ]
        + (["--canaries", str(canaries)] if canaries else [])
        + (["--canary-guesses", str(canary_guesses)] if canaries and canary_guesses else [])
        + (["--canary-rounds", str(canary_rounds)] if canaries and canary_rounds else [])
    )
    write(page(audit, seen, command, inversion, canary, skipped), out)
    if json_out is not None:
        text = json.dumps(to_json(audit, seen, inversion, canary), indent=2, allow_nan=False)
        atomic_write(json_out, (text + "\n").encode())
    final = audit.final
    lines = []
    for name, a in final.attacks.items():
        t = a.tpr(0.01)
        measured = "not measured" if t is None else f"{t * 100:.1f}%"
        lines.append(f"round {final.round}, {name}: AUC {a.auc:.3f}, TPR at 1% FPR {measured}")
    lines.append(summary(audit)[1][0])
    if inversion is None and inversion_iterations:
        lines.append(skipped)
    if inversion is not None:
        for r in inversion.results:
            lines.append(
                f"gradient inversion, {r.scenario}: best PSNR {r.best_psnr:.1f} dB, "
                f"SSIM {r.best_ssim:.3f}"
            )
    if canary is not None:
        lines.append(
            f"one-run audit: {canary.correct} of {canary.guesses} guesses right, ε ≥ "
            f"{canary.epsilon_lower:.3f} at 95% (at most {canary.cap:.2f} showable), "
            + (
                "no ε claimed"
                if canary.claimed is None
                else f"accountant ε {canary.claimed:.3f}"
                + (": DEFECT, the bound is above it" if canary.defect else ": consistent")
            )
        )
    lines.append(f"report: {out}" + (f", figures: {json_out}" if json_out else ""))
    for line in lines:  # text from the folder, printed as text (never rich markup)
        console.print(escape(line), highlight=False, soft_wrap=True)

"""`consortium report DIR --out report.html`: the run as one self-contained HTML file for a
regulator, with a GDPR Article 30-style record of processing (also as JSON), and a static
receipt-checker page for data subjects.

Reads the folder as `run status` does (read-only, no lock, nothing created in it).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from consortium.cli.common import console, fail, handle_errors
from consortium.core.files import atomic_write
from consortium.node.run_status import node_folder
from consortium.ui import report as renderer
from consortium.ui.overview import audit_result, read_overview
from consortium.ui.run_report import receipt_page, record_of_processing, report_page


def _target(path: Path, force: bool) -> None:
    if path.is_dir():
        fail(f"{path} is a folder: give a file name", 2)
    if path.exists() and not force:
        fail(f"{path} exists: pass --force to replace it", 2)


@handle_errors
def report(
    directory: Path = typer.Argument(
        ..., help="A node folder, or a run folder holding node folders (the first is read)."
    ),
    out: Path = typer.Option(..., "--out", help="The HTML report to write."),
    json_file: Path | None = typer.Option(
        None, "--json", help="Also write the record of processing (Article 30) as JSON here."
    ),
    receipt_file: Path | None = typer.Option(
        None,
        "--receipt-page",
        help="Also write a static page on which a data subject checks their receipt against "
        "the consent roots exported from this ledger (in the browser, offline).",
    ),
    run: str | None = typer.Option(None, "--run", help="Report this run (default: the latest)."),
    audit: bool = typer.Option(
        True, "--audit/--no-audit", help="Audit the folder and put the result in the report."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing output files."),
) -> None:
    """Write the run's report for a regulator: one self-contained HTML file.

    Members, purpose, rounds, ε against the budget, every round's leader, attempt,
    participants, consent roots, privacy spend, transcript CID and cosigners; the anchors; the
    audit's result; and a record of processing after GDPR Article 30 (as a section, and with
    --json as a JSON document). Reads the folder only: safe while the node runs."""
    for path in (out, json_file, receipt_file):
        if path is not None:
            _target(path, force)
    folder = node_folder(directory)
    ov = read_overview(folder, run=run)
    result = audit_result(folder) if audit else None
    command = shlex.join(["consortium", *sys.argv[1:]]) if sys.argv[1:] else ""
    renderer.write(report_page(ov, result, command), out)
    console.print(f"wrote {out}", highlight=False)
    if json_file is not None:
        text = json.dumps(record_of_processing(ov), indent=1, ensure_ascii=False)
        atomic_write(json_file, text.encode())
        console.print(f"wrote {json_file} (record of processing)", highlight=False)
    if receipt_file is not None:
        renderer.write(receipt_page(ov), receipt_file)
        console.print(f"wrote {receipt_file} (receipt checker)", highlight=False)
    if result is not None and not result.ok:
        fail(f"the report says the audit failed: {result.message}", 1)

"""`consortium consent ...`: a node's consent registry, receipts, checks, report and erasure."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from consortium.cli.common import console, err_console, fail, handle_errors
from consortium.consent import (
    ConsentError,
    ConsentRegistry,
    Receipt,
    RoundCommitment,
    build_report,
    check_receipt,
    erase_subject,
    plan_retrain,
    receipt_from_registry,
    roots_from_records,
)
from consortium.consent.erasure import RoundRef, checkpoint_for
from consortium.consent.record_ids import RecordIdError, record_id
from consortium.consent.registry import format_time, parse_time
from consortium.core.files import atomic_write
from consortium.core.layout import CONSENT_FILE, LEDGER_FILE
from consortium.ledger.log import Ledger
from consortium.protocol.record import round_records

REGISTRY_FILE = CONSENT_FILE

consent_app = typer.Typer(
    help="Data subjects' consent: grant, withdraw, receipts, checks, report, erasure.",
    no_args_is_help=True,
)

DIR = typer.Option(Path("."), "--dir", help="Node folder; the registry is DIR/consent.sqlite.")
AT = typer.Option(None, "--at", help="When (ISO-8601 or epoch seconds); default now.")


def _registry(directory: Path, *, create: bool = False) -> ConsentRegistry:
    if not directory.is_dir():
        raise ConsentError(f"--dir {directory} is not a folder")
    path = directory / REGISTRY_FILE
    if not create and not path.is_file():
        raise ConsentError(f"no consent registry at {path}; grant or import consent first")
    return ConsentRegistry(path)


def _at(value: str | None) -> float:
    return time.time() if value is None else parse_time(value, "--at")


def _record_ids(spec: str) -> list[str]:
    """'1,2,5-9' -> ['1', '2', '5', '6', '7', '8', '9']; 'p-001,p-002' -> those two ids. A part
    of two numbers joined by '-' is a range of numeric ids; any other part is one record id."""
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        bounds = re.fullmatch(r"([0-9]+)-([0-9]+)", part)
        if bounds:
            lo, hi = int(bounds[1]), int(bounds[2])
            if hi < lo or hi - lo > 10_000_000:
                raise ConsentError(f"invalid record id range {part!r}: use e.g. 5-9")
            out.extend(str(i) for i in range(lo, hi + 1))
            continue
        try:
            out.append(record_id(part))
        except RecordIdError as exc:
            raise ConsentError(f"invalid record ids {part!r}: {exc}") from None
    if not out:
        raise ConsentError("no record ids given")
    return out


def _node_id(directory: Path, given: str | None) -> str:
    if given:
        return given
    pub = directory / "node.pub"
    if pub.is_file():
        try:
            node = json.loads(pub.read_text()).get("node_id", "")
        except ValueError:
            node = ""
        if isinstance(node, str):
            return node
    return ""


@consent_app.command("grant")
@handle_errors
def grant(
    subject: str = typer.Argument(..., help="Subject pseudonym."),
    records: str = typer.Option(..., "--records", help="Record ids, e.g. 1,2,5-9."),
    purpose: list[str] = typer.Option(..., "--purpose", help="Purpose (repeatable)."),
    expires: str | None = typer.Option(None, "--expires", help="Consent ends at this time."),
    at: str | None = AT,
    directory: Path = DIR,
) -> None:
    """Grant (or renew) SUBJECT's consent for records and purposes."""
    t = _at(at)
    exp = parse_time(expires, "--expires") if expires else None
    with _registry(directory, create=True) as reg:
        n = reg.grant(subject, _record_ids(records), purpose, exp, at=t)
    console.print(f"granted {n} record-purpose pair(s) for {subject}", highlight=False)


@consent_app.command("withdraw")
@handle_errors
def withdraw(
    subject: str = typer.Argument(..., help="Subject pseudonym."),
    purpose: list[str] = typer.Option([], "--purpose", help="Purpose (repeatable); default all."),
    at: str | None = AT,
    directory: Path = DIR,
) -> None:
    """Withdraw SUBJECT's consent; it takes effect from the next round that starts."""
    with _registry(directory) as reg:
        n = reg.withdraw(subject, purpose or None, at=_at(at))
    console.print(f"withdrew {n} record-purpose pair(s) for {subject}", highlight=False)


@consent_app.command("expiry")
@handle_errors
def expiry(
    subject: str = typer.Argument(..., help="Subject pseudonym."),
    expires: str = typer.Option(..., "--expires", help="New end of consent ('none': no end)."),
    purpose: list[str] = typer.Option([], "--purpose", help="Purpose (repeatable); default all."),
    at: str | None = AT,
    directory: Path = DIR,
) -> None:
    """Change when SUBJECT's active consent expires."""
    exp = None if expires.lower() == "none" else parse_time(expires, "--expires")
    with _registry(directory) as reg:
        n = reg.set_expiry(subject, purpose or None, exp, at=_at(at))
    console.print(f"changed expiry of {n} record-purpose pair(s)", highlight=False)


def _status(s: Any, now: float) -> str:
    if s.erased is not None:
        return "erased"
    if s.withdrawn is not None and s.withdrawn <= now:
        return "withdrawn"
    if s.expires is not None and s.expires <= now:
        return "expired"
    if s.granted > now:
        return "pending"
    return "active"


@consent_app.command("list")
@handle_errors
def list_(
    subject: str | None = typer.Option(None, "--subject", help="Only this subject."),
    purpose: str | None = typer.Option(None, "--purpose", help="Only this purpose."),
    at: str | None = AT,
    directory: Path = DIR,
) -> None:
    """The current consent state, one line per record and purpose."""
    now = _at(at)
    with _registry(directory) as reg:
        rows = reg.state(subject, purpose)
    table = Table("subject", "record", "purpose", "granted", "expires", "withdrawn", "status")
    for s in rows:
        table.add_row(
            s.subject,
            str(s.record_id),
            s.purpose,
            format_time(s.granted),
            format_time(s.expires),
            format_time(s.withdrawn),
            _status(s, now),
        )
    console.print(table)
    console.print(f"{len(rows)} row(s)", highlight=False)


@consent_app.command("history")
@handle_errors
def history(
    subject: str = typer.Argument(..., help="Subject pseudonym."),
    directory: Path = DIR,
) -> None:
    """SUBJECT's append-only consent history."""
    with _registry(directory) as reg:
        events = reg.history(subject)
    if not events:
        raise ConsentError(f"unknown subject {subject!r}")
    table = Table("#", "time", "event", "record", "purpose", "expires")
    for e in events:
        table.add_row(
            str(e.seq),
            format_time(e.at),
            e.kind,
            str(e.record_id),
            e.purpose or "",
            format_time(e.expires),
        )
    console.print(table)


@consent_app.command("import")
@handle_errors
def import_(
    file: Path = typer.Argument(..., help="CSV: subject,record_id,purposes,granted,expires."),
    directory: Path = DIR,
) -> None:
    """Import grants from CSV in one transaction (nothing is imported if any row is bad)."""
    with _registry(directory, create=True) as reg:
        n = reg.import_csv(file)
    console.print(f"imported {n} record-purpose pair(s)", highlight=False)


@consent_app.command("export")
@handle_errors
def export(
    file: Path = typer.Argument(..., help="CSV file to write."),
    directory: Path = DIR,
) -> None:
    """Export the active grants as CSV (the import format)."""
    with _registry(directory) as reg:
        n = reg.export_csv(file)
    console.print(f"exported {n} row(s) to {file}", highlight=False)


@consent_app.command("receipt")
@handle_errors
def receipt(
    subject: str = typer.Argument(..., help="Subject pseudonym."),
    out: Path | None = typer.Option(None, "--out", help="Write the receipt here (else stdout)."),
    node: str | None = typer.Option(None, "--node", help="Node id (default: DIR/node.pub)."),
    directory: Path = DIR,
) -> None:
    """SUBJECT's salts and, per round, proof that their records were or were not used.

    The receipt holds the salts: give it to the subject only.
    """
    with _registry(directory) as reg:
        rec = receipt_from_registry(reg, subject, _node_id(directory, node))
    text = rec.dumps()
    if out is None:
        console.print(text, highlight=False, soft_wrap=True, markup=False)
    else:
        atomic_write(out, text.encode(), mode=0o600)  # it holds the salts
        console.print(f"receipt for {len(rec.rounds)} round proof(s) written to {out}")


def _roots_from_file(path: Path) -> dict[int, RoundCommitment]:
    try:
        data = json.loads(path.read_text())
        return {
            int(r): RoundCommitment.from_body(
                {
                    "root": bytes.fromhex(v["root"]),
                    "count": v["count"],
                    "purpose": v["purpose"],
                    # A receipt is checked against root, count and purpose only; the history
                    # head is for auditing the node's registry, so a roots file may omit it.
                    "head": bytes.fromhex(v.get("head", "00" * 32)),
                }
            )
            for r, v in data.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConsentError(f"malformed roots file {path}: {exc!r}") from exc


def _roots_from_ledger(path: Path, node: str) -> dict[int, RoundCommitment]:
    with Ledger.open(path) as ledger:
        records = round_records(enumerate(ledger.iter_entries()))
    return roots_from_records([(r.slot, r.consent) for _, r in records], node)


@consent_app.command("check")
@handle_errors
def check(
    receipt_file: Path = typer.Argument(..., metavar="RECEIPT", help="Receipt JSON file."),
    ledger: Path | None = typer.Option(None, "--ledger", help="A ledger.sqlite to check against."),
    roots: Path | None = typer.Option(
        None, "--roots", help="Or JSON {round: {root: hex, count, purpose}}."
    ),
    node: str | None = typer.Option(None, "--node", help="Node id (default: the receipt's)."),
) -> None:
    """Verify, per round, whether the receipt's records were used, against published roots."""
    rec = Receipt.loads(receipt_file.read_text())
    node_id = node or rec.node
    if (ledger is None) == (roots is None):
        fail("give exactly one of --ledger or --roots", 2)
    if ledger is not None:
        if not node_id:
            fail("the receipt names no node; pass --node", 2)
        published = _roots_from_ledger(ledger, node_id)
    else:
        assert roots is not None
        published = _roots_from_file(roots)
    verdicts = check_receipt(rec, published)
    table = Table("round", "purpose", "record", "verdict", "note")
    for v in verdicts:
        style = {"used": "yellow", "not-used": "green", "invalid": "bold red"}.get(v.status, "")
        table.add_row(
            str(v.round),
            v.purpose,
            "" if v.record_id is None else str(v.record_id),
            f"[{style}]{v.status}[/]" if style else v.status,
            v.reason,
        )
    console.print(table)
    bad = [v for v in verdicts if v.status == "invalid"]
    gaps = [v for v in verdicts if v.status in ("missing", "no-proof")]
    if gaps:
        err_console.print(
            f"warning: {len(gaps)} round(s) without a matching proof or published root",
            highlight=False,
        )
    if bad:
        fail(
            f"{len(bad)} proof(s) do not match the published roots (rounds "
            f"{sorted({v.round for v in bad})})"
        )
    used = sorted({v.round for v in verdicts if v.status == "used"})
    console.print(f"verified: records used in rounds {used or 'none'}", highlight=False)


@consent_app.command("report")
@handle_errors
def report(
    purpose: str | None = typer.Option(None, "--purpose", help="Only this purpose."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    directory: Path = DIR,
) -> None:
    """Records used per purpose and round; withdrawals, expiries and erasures, and when."""
    with _registry(directory) as reg:
        rep = build_report(reg, purpose)
    if as_json:
        console.print(json.dumps(rep.to_json()), highlight=False, soft_wrap=True, markup=False)
        return
    used = Table("round", "purpose", "started", "records used", title="records used")
    for r in rep.rounds:
        used.add_row(str(r.round), r.purpose, format_time(r.at), str(r.records))
    console.print(used)
    changes = Table("time", "change", "purpose", "records", "effective round", title="changes")
    for c in rep.changes:
        eff = "pending" if c.effective_round is None else str(c.effective_round)
        changes.add_row(format_time(c.at), c.kind, c.purpose or "(all)", str(c.records), eff)
    console.print(changes)


@consent_app.command("erase")
@handle_errors
def erase(
    subject: str = typer.Argument(..., help="Subject pseudonym."),
    current_round: int | None = typer.Option(
        None, "--current-round", help="Latest committed round (for the retrain plan)."
    ),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    at: str | None = AT,
    directory: Path = DIR,
) -> None:
    """Erase SUBJECT: shred their salts, mark their records erased, print what remains to do."""
    if not yes and not typer.confirm(f"erase {subject}? this cannot be undone"):
        fail("not confirmed", 1)
    with _registry(directory) as reg:
        er = erase_subject(reg, subject, at=_at(at))
        last = (
            current_round
            if current_round is not None
            else max((r.round for r in reg.rounds()), default=0)
        )
    records = _round_refs(directory)
    checkpoint, redo = checkpoint_for(er, records) if records else (None, 0)
    if checkpoint is not None:
        checkpoint = checkpoint.set(base="base32")  # the printable form the CLI uses
    if checkpoint is None:  # no ledger here: fall back to the registry's own round numbers
        plan = plan_retrain(er, last)
        redo = plan.rounds
    console.print(
        f"erased {subject}: {len(er.record_ids)} record(s) excluded from every future round, "
        "salts shredded (their commitments can no longer be linked to them)",
        highlight=False,
    )
    console.print(
        "the erasure is recorded on the ledger with this node's next round: "
        f"{json.dumps(er.ledger_body())}",
        highlight=False,
        markup=False,
    )
    console.print(
        f"delete record(s) {', '.join(er.record_ids)} from the node's source data",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if er.first_used_round is None:
        console.print("no retraining needed: the records were never used", highlight=False)
    elif checkpoint is not None:
        console.print(
            f"to remove their influence from the model, retrain {redo} round(s) from the "
            f"checkpoint before their first use:\n  consortium run start --dir {directory} "
            f"--rounds {redo} --from-model {checkpoint}",
            highlight=False,
            markup=False,
        )
    else:
        console.print(
            f"retrain {redo} round(s) from the model before round {er.first_used_round}",
            highlight=False,
        )


def _round_refs(directory: Path) -> list[RoundRef]:
    """The round records of DIR/ledger.sqlite, oldest first (empty without a ledger)."""
    path = directory / LEDGER_FILE
    if not path.exists():
        return []
    with Ledger.open(path) as ledger:
        return [r.ref() for _, r in round_records(enumerate(ledger.iter_entries()))]

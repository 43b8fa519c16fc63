"""The run's pages, for the static regulator report (`consortium report`) and the dashboard
(`consortium ui`): sections built from an `Overview`, rendered by the one renderer
(`ui.report`). The dashboard passes `links=True` and gets the same sections with links into
itself; the report links nowhere.

Also the GDPR Article 30-style record of processing (a section and a JSON document) and the
static receipt-checker page (the exported consent roots and an inline script).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from consortium import __version__
from consortium.consent import Verdict
from consortium.node.run_status import ACCURACY_NOT_PUBLISHED, config_summary, privacy_summary
from consortium.ui.overview import AuditResult, Overview, RoundDetail
from consortium.ui.report import (
    Axis,
    Cell,
    Facts,
    LineChart,
    Link,
    Page,
    Paragraph,
    ReceiptChecker,
    Section,
    Series,
    Table,
)

NOT_DECLARED = "not declared"
RECORD_FORMAT = "consortium-record-of-processing/1"
EXPORT_FORMAT = "consortium-consent-roots/1"


def _eps(x: float | None) -> str:
    if x is None:
        return "-"
    return "∞ (no noise)" if math.isinf(x) else f"{x:.3g}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _names(ov: Overview, ids: Sequence[str]) -> str:
    return ", ".join(sorted(ov.name(i) for i in ids)) or "-"


def _state(ov: Overview) -> str:
    s = ov.status
    done = f"{s.committed} of {s.target} rounds committed"
    if s.state == "stopped":
        return f"stopped ({done}) {s.reason}"
    return f"{s.state} ({done})"


def run_facts(ov: Overview) -> Facts:
    s = ov.status
    return Facts(
        [
            ("consortium", f"{s.consortium}: {len(s.members)} members, quorum {ov.genesis.quorum}"),
            ("members", ", ".join(s.members.values())),
            ("run", s.run),
            ("agreed", f"ledger entry {s.config_index}, {_when(s.config_time)}"),
            ("configuration", config_summary(s)),
            ("state", _state(ov)),
            (
                "privacy",
                "no differential privacy" if s.privacy is None else privacy_summary(s, s.privacy),
            ),
            ("accuracy", ACCURACY_NOT_PUBLISHED),
            ("read from", f"{ov.folder} (ledger of {s.ledger_size} entries)"),
        ]
    )


def epsilon_chart(ov: Overview) -> LineChart | Paragraph:
    """ε spent on the purpose after each round of the run, against the purpose's budget."""
    p = ov.status.privacy
    points = [
        (r.round, r.epsilon)
        for r in ov.rounds
        if r.epsilon is not None and math.isfinite(r.epsilon)
    ]
    if p is None or not points:
        return Paragraph(
            "No ε curve: no round of this run recorded a finite privacy spend.", "note"
        )
    xs = [float(x) for x, _ in points]
    series = [Series("ε spent (largest total)", xs, [y for _, y in points], markers=True)]
    top = max(y for _, y in points)
    if p.budget_epsilon is not None:
        lo, hi = 0.0, float(max(ov.status.target, 1))
        series.append(
            Series(
                f"budget ε {p.budget_epsilon:g}",
                [min(lo, xs[0]), max(hi, xs[-1])],
                [p.budget_epsilon] * 2,
                dashed=True,
                reference=True,
                color="#D55E00",
            )
        )
        top = max(top, p.budget_epsilon)
    return LineChart(
        f"Privacy spent on purpose {p.purpose!r}",
        Axis("round", lo=0, hi=float(max(ov.status.target, xs[-1])), whole=True),
        Axis("ε (at the purpose's δ)", lo=0, hi=top * 1.1),
        series,
        caption="The largest recorded total after each round (client level, or the worst "
        "node's record level), as the cosigned round records say; the dashed line is the "
        "purpose's budget from genesis.",
    )


def _consent_cell(ov: Overview, r: RoundDetail) -> str:
    return "; ".join(
        f"{ov.name(n)} {c.root.hex()[:12]}… ({c.count})"
        for n, c in sorted(r.consent.items(), key=lambda kv: ov.name(kv[0]))
    )


def rounds_table(ov: Overview, *, links: bool = False) -> Table:
    rows = []
    for r in ov.rounds:
        number: int | Link = Link(str(r.round), f"/round/{r.round}") if links else r.round
        rows.append(
            [
                number,
                ov.name(r.leader),
                r.attempt,
                _names(ov, r.participants),
                _consent_cell(ov, r) or "-",
                r.records_used,
                _eps(r.spend),
                _eps(r.epsilon),
                r.transcript or "-",
                _names(ov, r.cosigners) if r.cosigners else "not final yet",
                r.index,
            ]
        )
    return Table(
        [
            "round",
            "leader",
            "attempt",
            "participants",
            "consent roots (records)",
            "records used",
            "ε spent",
            "ε total",
            "transcript CID",
            "cosigners",
            "ledger entry",
        ],
        rows,
        caption="Consent roots: each participant's Merkle root over the salted commitments to "
        "the records it used (no record id is on the ledger). Cosigners: the members whose "
        "signatures make the first final tree head covering the round's record.",
    )


def round_facts(ov: Overview, r: RoundDetail) -> list[Facts | Table]:
    facts = Facts(
        [
            ("run", r.run),
            ("round", f"{r.round} of {ov.status.target}"),
            ("leader", f"{ov.name(r.leader)} ({r.leader})"),
            ("attempt", str(r.attempt)),
            ("committed", _when(r.time)),
            ("ledger entry", str(r.index)),
            ("participants", _names(ov, r.participants)),
            ("dropouts", _names(ov, r.dropouts)),
            ("aggregation", r.aggregation),
            ("model", r.model),
            ("transcript", r.transcript or "none (no secure aggregation)"),
            ("privacy spend", f"ε {_eps(r.spend)} this round, {_eps(r.epsilon)} in total"),
            (
                "cosigners",
                f"{_names(ov, r.cosigners)} (final head of size {r.final_size})"
                if r.final_size is not None
                else "no final tree head covers this round yet",
            ),
        ]
    )
    consent = Table(
        ["node", "purpose", "records used", "consent root", "history head", "records erased"],
        [
            [ov.name(n), c.purpose, c.count, c.root.hex(), c.head.hex(), r.erasures.get(n, 0)]
            for n, c in sorted(r.consent.items(), key=lambda kv: ov.name(kv[0]))
        ],
        caption="What each participant committed to for this round's consent.",
    )
    return [facts, consent]


def anchors_blocks(ov: Overview) -> list[Paragraph | Facts | Table]:
    a = ov.anchors
    out: list[Paragraph | Facts | Table] = [
        Facts([("chain", a.chain), ("contract", a.contract or "-")])
    ]
    if a.note:
        out.append(Paragraph(a.note, "note"))
    if a.events:
        out.append(
            Table(
                ["tree size", "root", "block", "transaction", "submitter"],
                [
                    [e.head.size, e.head.root.hex(), e.block, e.tx_hash, e.head.submitter]
                    for e in a.events
                ],
                caption="Each anchored head is a cosigned tree head of the ledger; `audit` "
                "checks the ledger's recomputed root at every anchored size.",
            )
        )
    return out


def audit_blocks(result: AuditResult | None) -> list[Paragraph | Facts]:
    if result is None:
        return [Paragraph("Not audited here: run `consortium audit DIR`.", "note")]
    out: list[Paragraph | Facts] = [Paragraph(result.message, "ok" if result.ok else "warning")]
    if result.facts:
        out.append(Facts(result.facts))
    return out


def consent_table(ov: Overview) -> Table:
    """Records used per round and node (counts only) with the erasures recorded."""
    return Table(
        ["round", "ledger entry", *[ov.name(n) for n in ov.status.members], "erasures recorded"],
        [
            [
                r.round,
                r.index,
                *[(r.consent[n].count if n in r.consent else None) for n in ov.status.members],
                sum(r.erasures.values()),
            ]
            for r in ov.rounds
        ],
        caption="Records each node used per round, as committed on the ledger (a dash: the "
        "node did not take part).",
    )


# -- the record of processing (GDPR Article 30) ----------------------------------------------


def _security_measures(ov: Overview) -> list[str]:
    c = ov.status.config
    out = [
        f"every round is recorded on a ledger cosigned by a quorum of {ov.genesis.quorum} of "
        f"{len(ov.genesis.members)} members and re-verifiable with `consortium audit`",
        "per round and node, a salted Merkle commitment to the records used, so a data subject "
        "can verify with a receipt whether their record was used; no record identifier leaves "
        "a node",
        "consent enforced at the start of every round; withdrawal and erasure "
        "(crypto-shredding of the salts, retraining from the checkpoint before first use)",
    ]
    if c.secure_aggregation != "none":
        out.append(
            f"secure aggregation ({c.secure_aggregation}): the round's leader learns only the sum "
            "of the members' updates"
        )
    if c.privacy.unit != "none":
        out.append(f"differential privacy at {c.privacy.unit} level, δ {c.privacy.delta:g}")
    if c.anchor_every:
        out.append(f"ledger tree heads anchored on an EVM chain every {c.anchor_every} rounds")
    return out


def record_of_processing(ov: Overview, *, now: datetime | None = None) -> dict[str, Any]:
    """The Article 30(1) record as JSON: unset declarations are null and listed in
    `not_declared`."""
    run_purpose = ov.status.config.purpose
    purposes = []
    for p in ov.genesis.purposes:
        missing = [
            k
            for k, v in (
                ("data_categories", p.data_categories),
                ("recipients", p.recipients),
                ("retention", p.retention),
            )
            if not v
        ]
        purposes.append(
            {
                "name": p.name,
                "data_categories": list(p.data_categories) or None,
                "recipients": list(p.recipients) or None,
                "retention": p.retention or None,
                "privacy_budget": None
                if p.epsilon is None
                else {"epsilon": p.epsilon, "delta": p.delta},
                "not_declared": missing,
                "used_by_this_run": p.name == run_purpose,
            }
        )
    return {
        "format": RECORD_FORMAT,
        "generated": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generator": f"consortium {__version__}",
        "consortium": ov.status.consortium,
        "genesis_digest": ov.genesis.digest().hex(),
        "controllers": [
            {"name": m.name, "node_id": m.node_id, "address": m.address} for m in ov.genesis.members
        ],
        "controllers_contact": None,
        "purposes": purposes,
        "categories_of_data_subjects": None,
        "transfers_to_third_countries": None,
        "security_measures": _security_measures(ov),
        "processing": {
            "run": ov.status.run,
            "purpose": run_purpose,
            "state": ov.status.state,
            "rounds_committed": ov.status.committed,
            "rounds_agreed": ov.status.target,
            "records_used_per_round": [
                {
                    "round": r.round,
                    "ledger_entry": r.index,
                    "records": {ov.name(n): c.count for n, c in sorted(r.consent.items())},
                    "erasures_recorded": sum(r.erasures.values()),
                }
                for r in ov.rounds
            ],
            "privacy_spent": None
            if ov.status.privacy is None or ov.status.privacy.spent is None
            else (None if math.isinf(ov.status.privacy.spent) else ov.status.privacy.spent),
        },
    }


def _declared(values: Sequence[str] | str | None) -> str:
    if not values:
        return NOT_DECLARED
    return values if isinstance(values, str) else "; ".join(values)


def _budget(b: dict[str, float] | None) -> str:
    return "-" if b is None else f"ε {b['epsilon']:g}, δ {b['delta']:g}"


def record_section(ov: Overview) -> Section:
    rec = record_of_processing(ov)
    blocks: list[Paragraph | Facts | Table] = [
        Paragraph(
            "A record of processing after GDPR Article 30(1), from the genesis manifest every "
            "member signed and the cosigned ledger. The same record is written as JSON by "
            "`consortium report --json FILE`. Fields the manifest does not declare say so.",
            "note",
        ),
        Facts(
            [
                ("controllers (joint)", ", ".join(m["name"] for m in rec["controllers"])),
                ("contact details", NOT_DECLARED),
                ("categories of data subjects", NOT_DECLARED),
                ("transfers to third countries", NOT_DECLARED),
                ("genesis digest", rec["genesis_digest"]),
            ]
        ),
        Table(
            ["purpose", "categories of personal data", "recipients", "retention", "budget"],
            [
                [
                    p["name"] + (" (this run)" if p["used_by_this_run"] else ""),
                    _declared(p["data_categories"]),
                    _declared(p["recipients"]),
                    _declared(p["retention"]),
                    _budget(p["privacy_budget"]),
                ]
                for p in rec["purposes"]
            ],
            caption="Purposes declared in genesis.",
        ),
        Table(
            ["technical and organisational security measures"],
            [[m] for m in rec["security_measures"]],
        ),
    ]
    return Section("Record of processing (GDPR Article 30)", blocks, anchor="article-30")


# -- pages -------------------------------------------------------------------------------------


def report_page(ov: Overview, audit: AuditResult | None, command: str = "") -> Page:
    """The static regulator report: one self-contained file."""
    s = ov.status
    sections = [
        Section("Run", [run_facts(ov)]),
        Section(
            "Progress",
            [
                epsilon_chart(ov),
                Paragraph(f"Accuracy curve: {ACCURACY_NOT_PUBLISHED}.", "note"),
            ],
        ),
        Section("Rounds", [rounds_table(ov)]),
        Section("Consent", [consent_table(ov)]),
        Section("Anchors", anchors_blocks(ov)),
        Section("Audit", audit_blocks(audit)),
        record_section(ov),
    ]
    return Page(
        f"Run report: {s.consortium}",
        sections,
        subtitle=f"run {s.run} · purpose {s.config.purpose} · {_state(ov)}",
        meta=[
            ("consortium", f"consortium {__version__}"),
            *([("command", command)] if command else []),
        ],
        footer="Generated from a node folder's ledger, store and chain record. Every figure "
        "is as the cosigned ledger records it; `consortium audit` re-verifies the folder.",
    )


def roots_export(ov: Overview) -> dict[str, Any]:
    """The consent roots of every node and round on the ledger, for the static checker (and
    per node in the `consent check --roots` format under `roots`)."""
    roots: dict[str, dict[str, dict[str, Any]]] = {}
    for slot, by_node in sorted(ov.consent_roots.items()):
        for node, c in by_node.items():
            roots.setdefault(node, {})[str(slot)] = {
                "root": c.root.hex(),
                "count": c.count,
                "purpose": c.purpose,
                "head": c.head.hex(),
            }
    return {
        "format": EXPORT_FORMAT,
        "consortium": ov.status.consortium,
        "genesis_digest": ov.genesis.digest().hex(),
        "size": ov.status.ledger_size,
        "members": {m.node_id: m.name for m in ov.genesis.members},
        "slots": {str(k): [run, rnd] for k, (run, rnd) in sorted(ov.slots.items())},
        "roots": roots,
    }


def receipt_page(ov: Overview) -> Page:
    """The data subject's static receipt checker over the ledger's exported consent roots."""
    export = roots_export(ov)
    return Page(
        f"Check a consent receipt: {ov.status.consortium}",
        [
            Section(
                "Your receipt",
                [
                    Paragraph(
                        "Paste or choose the receipt a node gave you. This page checks, for "
                        "every round, whether your records were used, against the consent "
                        "roots the node published on the consortium's ledger (exported into "
                        "this page). The check runs in this browser; nothing is sent anywhere. "
                        "The same check on the command line: `consortium consent check "
                        "RECEIPT --ledger ledger.sqlite`.",
                    ),
                    ReceiptChecker(export),
                ],
            ),
            Section(
                "The exported ledger",
                [
                    Facts(
                        [
                            ("consortium", ov.status.consortium),
                            ("genesis digest", export["genesis_digest"]),
                            ("ledger entries", str(export["size"])),
                            ("rounds with consent roots", str(len(ov.consent_roots))),
                        ]
                    ),
                    Paragraph(
                        "Limit: this page trusts the roots exported into it; `consortium audit` "
                        "on the folder (or the dashboard's checker) checks them against the "
                        "cosigned ledger itself.",
                        "note",
                    ),
                ],
            ),
        ],
    )


def verdict_table(ov: Overview, verdicts: Sequence[Verdict]) -> Table:
    rows: list[list[Cell]] = []
    for v in verdicts:
        where = ov.slots.get(v.round)
        rows.append(
            [
                "-" if where is None else f"run {where[0][:12]}… round {where[1]}",
                v.round,
                v.purpose,
                v.record_id,
                v.status,
                v.reason,
            ]
        )
    return Table(["round", "ledger entry", "purpose", "record", "verdict", "note"], rows)

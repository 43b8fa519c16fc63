"""`consortium report DIR --out report.html [--json FILE] [--receipt-page FILE]` over a real run
folder (three in-process nodes: consent, DP-SGD, SecAgg+, anchors), checked against the ledger
it reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.consent import Receipt
from consortium.consent.commitments import roots_from_records
from consortium.ui import report as renderer
from consortium.ui.overview import read_overview
from consortium.ui.report import Page, ReceiptChecker, Section
from consortium.ui.run_report import roots_export
from tests.cli_support import cli_line
from tests.records import ledger_records
from tests.ui_folder import ROUNDS, WITHDRAWN, make_run_folder, write_receipt


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_run_folder(tmp_path_factory.mktemp("report") / "run")


def test_report_shows_the_run_as_the_ledger_records_it(run_folder: Path, tmp_path: Path) -> None:
    out, js = tmp_path / "report.html", tmp_path / "art30.json"
    code, text = cli_line("report", str(run_folder), "--out", str(out), "--json", str(js))
    assert code == 0, text
    html = out.read_text()
    records = ledger_records(run_folder / "node0")
    assert len(records) == ROUNDS
    for r in records:
        assert r.secagg is not None and str(r.secagg.transcript) in html  # transcript CIDs
        for c in r.consent.values():
            assert c.root.hex()[:12] in html  # every participant's consent root
    for name in ("node0", "node1", "node2", "Record of processing (GDPR Article 30)"):
        assert name in html
    assert "audit OK" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    # anchors: every anchor's transaction, as the chain's receipts say
    ov = read_overview(run_folder)
    assert ov.anchors.events and all(e.tx_hash in html for e in ov.anchors.events)
    assert all(r.cosigners for r in ov.rounds)  # each round is covered by a final head
    # Article 30: what genesis declares, and "not declared" for the rest (retention here)
    record = json.loads(js.read_text())
    (purpose,) = record["purposes"]
    assert purpose["data_categories"] == ["digit images"]
    assert purpose["retention"] is None and purpose["not_declared"] == ["retention"]
    assert record["processing"]["rounds_committed"] == ROUNDS
    assert [r["ledger_entry"] for r in record["processing"]["records_used_per_round"]] == [
        r.slot for r in records
    ]
    assert "not declared" in html


def test_report_never_holds_keys_or_salts(run_folder: Path, tmp_path: Path) -> None:
    out, page = tmp_path / "r.html", tmp_path / "receipts.html"
    assert (
        cli_line("report", str(run_folder), "--out", str(out), "--receipt-page", str(page))[0] == 0
    )
    receipt = Receipt.loads(write_receipt(run_folder / "node0", tmp_path / "receipt.json"))
    written = out.read_text() + page.read_text()
    for salt in receipt.salts.values():
        assert salt.hex() not in written
    for node in run_folder.glob("node*"):
        key = (node / "node.key").read_text().splitlines()[1]  # a line of the PEM body
        assert key not in written
    assert receipt.subject not in written and WITHDRAWN not in written


def test_receipt_page_exports_the_ledgers_consent_roots(run_folder: Path, tmp_path: Path) -> None:
    page = tmp_path / "receipts.html"
    assert cli_line("report", str(run_folder), "--out", str(tmp_path / "r.html"), "--no-audit",
                    "--receipt-page", str(page))[0] == 0  # fmt: skip
    html = page.read_text()
    data = re.search(r'id="ledger-export">(.*?)</script>', html, re.S)
    assert data is not None
    export = json.loads(data.group(1))
    records = ledger_records(run_folder / "node0")
    for node in export["members"]:
        published = roots_from_records([(r.slot, r.consent) for r in records], node)
        assert {int(k): v["root"] for k, v in export["roots"][node].items()} == {
            k: c.root.hex() for k, c in published.items()
        }
    assert "https://" not in html and "http://" not in html  # nothing fetched from anywhere


def test_exported_values_cannot_end_the_script_element(tmp_path: Path) -> None:
    hostile = {"consortium": "</script><script>alert(1)</script>", "members": {"x": "<b>&"}}
    html = renderer.render(Page("t", [Section("s", [ReceiptChecker(hostile)])]))
    assert "alert(1)</script>" not in html
    assert html.count("</script>") == 2  # the data element and the checker's own


def test_export_is_what_the_overview_read(run_folder: Path) -> None:
    ov = read_overview(run_folder, anchors=False)
    export = roots_export(ov)
    assert export["size"] == ov.status.ledger_size
    assert set(export["slots"]) == {str(r.index) for r in ov.rounds}


def test_bad_input_is_one_line(run_folder: Path, tmp_path: Path) -> None:
    code, text = cli_line("report", str(tmp_path), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "is not a node folder" in text
    existing = tmp_path / "exists.html"
    existing.write_text("keep me")
    code, text = cli_line("report", str(run_folder), "--out", str(existing))
    assert code == 2 and "--force" in text and existing.read_text() == "keep me"
    code, text = cli_line(
        "report", str(run_folder), "--out", str(tmp_path / "x.html"), "--run", "nope"
    )
    assert code == 1 and "no run nope" in text

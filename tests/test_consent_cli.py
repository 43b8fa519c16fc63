"""`consortium consent ...` through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from consortium.cli.consent import consent_app
from consortium.consent import ConsentRegistry, RoundCommitment, begin_round
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import Ledger, make_record
from tests.records import round_body

runner = CliRunner()
P = "research"


def run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(consent_app, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_grant_list_withdraw_history(tmp_path: Path) -> None:
    d = str(tmp_path)
    code, out, err = run(
        "grant",
        "alice",
        "--records",
        "0,2-4",
        "--purpose",
        P,
        "--purpose",
        "ads",
        "--at",
        "2024-01-01T00:00:00Z",
        "--dir",
        d,
    )
    assert code == 0, err
    assert "granted 8" in out
    code, out, _ = run("list", "--subject", "alice", "--purpose", P, "--dir", d)
    assert code == 0 and "4 row(s)" in out and "active" in out
    code, out, _ = run("withdraw", "alice", "--purpose", "ads", "--at", "2024-02-01", "--dir", d)
    assert code == 0 and "withdrew 4" in out
    code, out, _ = run("list", "--purpose", "ads", "--dir", d)
    assert "withdrawn" in out and "active" not in out
    code, out, _ = run("history", "alice", "--dir", d)
    assert code == 0 and out.count("grant") == 8 and out.count("withdraw") == 4
    code, out, _ = run("expiry", "alice", "--expires", "2030-01-01", "--dir", d)
    assert code == 0 and "changed expiry of 4" in out


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    d = str(tmp_path)
    cases = [
        ("list", "--dir", d),  # no registry yet
        ("grant", "a", "--records", "9-5", "--purpose", P, "--dir", d),
        ("grant", "a", "--records", "p-1," + "x" * 300, "--purpose", P, "--dir", d),
        ("grant", "a", "--records", "1", "--purpose", P, "--at", "yesterday", "--dir", d),
        ("withdraw", "nobody", "--dir", d),
        ("grant", "a", "--records", "1", "--purpose", P, "--dir", str(tmp_path / "nope")),
    ]
    for args in cases:
        code, _, err = run(*args)
        assert code != 0, args
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err


def test_import_export_and_atomic_failure(tmp_path: Path) -> None:
    d = str(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "subject,record_id,purposes,granted,expires\n"
        "s1,0,research,2024-01-01,\n"
        "s2,1,research,2024-01-01,2023-01-01\n"
    )
    code, _, err = run("import", str(bad), "--dir", d)
    assert code == 2 and "line 3: expires is not after granted" in err
    assert ConsentRegistry(tmp_path / "consent.sqlite").history() == []
    good = tmp_path / "good.csv"
    good.write_text(
        "subject,record_id,purposes,granted,expires\n"
        "s1,0,research;ads,2024-01-01,\n"
        "s2,1,research,2024-01-01,2031-01-01\n"
    )
    code, out, err = run("import", str(good), "--dir", d)
    assert code == 0 and "imported 3" in out, err
    code, out, _ = run("export", str(tmp_path / "out.csv"), "--dir", d)
    assert code == 0 and "exported 2" in out
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "subject,record_id,purposes,granted,expires"
    assert lines[1] == "s1,0,ads;research,2024-01-01T00:00:00Z,"


def _node_with_rounds(tmp_path: Path) -> tuple[Path, dict[int, RoundCommitment]]:
    reg = ConsentRegistry(tmp_path / "consent.sqlite")
    for i in range(8):
        reg.grant(f"s{i}", [i], [P], at=0.0)
    published = {1: begin_round(reg, P, 1, at=10.0).commitment}
    reg.withdraw("s3", at=15.0)
    published[2] = begin_round(reg, P, 2, at=20.0).commitment
    reg.close()
    return tmp_path, published


def test_receipt_check_report_erase(tmp_path: Path) -> None:
    node_dir, published = _node_with_rounds(tmp_path)
    d = str(node_dir)
    roots = {
        str(r): {"root": rc.root.hex(), "count": rc.count, "purpose": rc.purpose}
        for r, rc in published.items()
    }
    (tmp_path / "roots.json").write_text(json.dumps(roots))
    rfile = tmp_path / "s3.receipt.json"
    code, out, err = run("receipt", "s3", "--out", str(rfile), "--node", "n1", "--dir", d)
    assert code == 0, err
    assert rfile.stat().st_mode & 0o077 == 0  # it holds the salts
    code, out, err = run("check", str(rfile), "--roots", str(tmp_path / "roots.json"))
    assert code == 0, err
    assert "used in rounds [1]" in out and "not-used" in out

    roots["2"]["root"] = "00" * 32
    (tmp_path / "evil.json").write_text(json.dumps(roots))
    code, _, err = run("check", str(rfile), "--roots", str(tmp_path / "evil.json"))
    assert code == 1 and "do not match the published roots" in err

    code, out, _ = run("report", "--dir", d, "--json")
    rep = json.loads(out)
    assert [(r["round"], r["records"]) for r in rep["rounds"]] == [(1, 8), (2, 7)]
    assert [(c["kind"], c["effective_round"]) for c in rep["changes"]] == [("withdraw", 2)]
    code, out, _ = run("report", "--dir", d)
    assert code == 0 and "records used" in out

    code, out, err = run("erase", "s3", "--yes", "--at", "30", "--dir", d)
    assert code == 0, err
    assert "delete record(s) 3 from the node's source data" in out
    assert "retrain 2 round(s) from the model before round 1" in out
    ledger_line = next(line for line in out.splitlines() if "first_used_round" in line)
    assert '"first_used_round": 1' in ledger_line and "s3" not in ledger_line
    code, _, err = run("receipt", "s3", "--dir", d)
    assert code == 2 and "no salt" in err


def test_check_against_a_ledger(tmp_path: Path) -> None:
    node_dir, published = _node_with_rounds(tmp_path)
    ident = NodeIdentity.generate("n0")
    g = Genesis.ceremony("t", [ident], [Purpose(P, 1.0)], 1)
    ledger = Ledger.create(tmp_path / "ledger.sqlite", g)
    for r, rc in published.items():
        body = round_body(ident.node_id, r, rc.to_body())
        ledger.append(make_record(ident, "round", body, r, g))
    ledger.close()
    rfile = tmp_path / "s1.json"
    code, _, err = run(
        "receipt", "s1", "--out", str(rfile), "--node", ident.node_id, "--dir", str(node_dir)
    )
    assert code == 0, err
    code, out, err = run("check", str(rfile), "--ledger", str(tmp_path / "ledger.sqlite"))
    assert code == 0, err
    assert "used in rounds [1, 2]" in out
    code, _, err = run("check", str(rfile), "--ledger", str(tmp_path / "missing.sqlite"))
    assert code != 0 and "no ledger" in err

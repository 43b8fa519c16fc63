"""`consortium audit privacy` on real run folders: a 3-node in-process run with SecAgg+ and
record-level DP audited end to end (report, JSON, recorded ε), and the errors a user can cause
(not a node folder, no run, no published model, a folder for the report that does not exist)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from consortium.audit.privacy.membership import (
    MembershipAudit,
    PrivacyAuditError,
    Settings,
    audit_membership,
)
from consortium.audit.privacy.views import views
from consortium.core.genesis import Purpose
from consortium.ui.privacy import page, summary
from consortium.ui.report import render
from tests.cli_support import cli
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.test_ui_report import external_references

#: Record-level DP-SGD on each node; the purpose's budget leaves room for the first run only
#: (3 rounds at z = 1 spend about 6.3; a round at z = 0.5 would pass 7).
DP = {"unit": "record", "noise_multiplier": 1.0, "clip_norm": 1.0}
LESS_NOISE = {**DP, "noise_multiplier": 0.5}
BUDGET = Purpose("research", 7.0, 1e-5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """run: node0's folder after a 3-round run (SecAgg+, record-level DP), then a second run
    that stopped before its first round (the purpose's budget was spent), so the latest run has
    no model; idle: a consortium that never agreed a run."""
    root = tmp_path_factory.mktemp("privacy")
    out: dict[str, Path] = {}

    async def runs() -> None:
        nodes, net, clock = await cluster(root / "run", 3, 81, purpose=BUDGET)
        try:
            first = run_config(3, 0, secure="secagg+", privacy=DP)
            await start(nodes, first)
            await drive(nodes, net, clock)
            out["first"] = Path(first.run_id())
            await start(nodes, run_config(3, 1, secure="secagg+", privacy=LESS_NOISE))
            await drive(nodes, net, clock)
            assert all(n.stopped.startswith("stopping before round 1:") for n in nodes)
        finally:
            for n in nodes:
                await n.stop()
        out["run"] = nodes[0].dir

    async def idle() -> None:
        nodes, _, _ = await cluster(root / "idle", 3, 82, consent=False)
        for n in nodes:
            await n.stop()
        out["idle"] = nodes[0].dir

    asyncio.run(runs())
    asyncio.run(idle())
    return out


@pytest.fixture(scope="module")
def audited(folders: dict[str, Path]) -> MembershipAudit:
    return audit_membership(
        folders["run"], run=str(folders["first"]), settings=Settings(reference_models=2)
    )


def test_a_run_is_audited_from_its_published_models(audited: MembershipAudit) -> None:
    a = audited
    assert [r.round for r in a.rounds] == [1, 2, 3]
    assert a.node_name == "node0" and a.reference_models == 2
    for r in a.rounds:
        assert set(r.attacks) == {"loss", "lira", "rmia"}
        assert 100 < r.members < 500 and r.non_members == 359  # node0's shard; digits' test split
        for attack in r.attacks.values():
            assert 0.0 <= attack.auc <= 1.0
            assert attack.roc.fpr[0] == 0.0 and attack.roc.tpr[-1] == 1.0
            assert attack.tpr(0.01) is not None  # 359 non-members: 1% measurable
            assert attack.tpr(0.001) is None  # 0.1% needs 1000
        # The ledger's record-level ε for node0 grows round by round and bounds the attacks.
        assert r.claim is not None and r.claim.source == "record-level"
        assert 0 < r.claim.epsilon < BUDGET.epsilon and r.claim.delta == BUDGET.delta
    eps = [r.claim.epsilon for r in a.rounds if r.claim is not None]
    assert eps == sorted(eps) and len(set(eps)) == 3
    # Three rounds of DP-SGD with z = 1 leak nothing measurable (null SE about 0.03 here).
    assert all(abs(x.auc - 0.5) < 0.1 for r in a.rounds for x in r.attacks.values())


def test_the_report_and_its_json_from_the_command_line(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    html, figures = tmp_path / "report.html", tmp_path / "figures.json"
    code, out, err = cli(
        "audit",
        "privacy",
        str(folders["run"]),
        "--run",
        str(folders["first"]),
        "--out",
        str(html),
        "--json",
        str(figures),
        "--reference-models",
        "2",
    )
    assert code == 0, err
    assert "training reference models" in err  # the progress bars go to stderr
    assert f"report: {html}, figures: {figures}" in out
    text = html.read_text()
    assert external_references(text) == [] and "http" not in text
    # The final model's ROC; AUC and TPR per round; 4 records and their 3 reconstructions.
    assert text.count("<svg") == 3 + 4 * 4
    assert "Gradient inversion" in text and "SecAgg+ leader, DP" in text
    assert "Who sees what" in text and "round leader" in text
    assert re.search(r"record-level privacy guarantee of ε = \d", text)
    assert "barely limits" in text  # ε about 6: any attack may reach 99.7% TPR at 1% FPR
    data = json.loads(figures.read_text())
    assert data["format"] == "consortium-privacy-audit/v1"
    assert data["run"] == str(folders["first"]) and data["node"]["name"] == "node0"
    assert data["secure_aggregation"] == "secagg+" and data["dp_unit"] == "record"
    assert len(data["rounds"]) == 3 and data["final"]["round"] == 3
    for r in data["rounds"]:
        for attack in r["attacks"].values():
            assert 0 <= attack["auc"] <= 1 and 0 <= attack["tpr_at_1pct"] <= 1
            lo, hi = attack["tpr_at_1pct_ci95"]
            assert lo <= attack["tpr_at_1pct"] <= hi
            assert attack["tpr_at_0_1pct"] is None
        claimed = r["claimed"]
        assert 0 < claimed["epsilon"] < 7 and 0.5 < claimed["auc_bound"] <= 1
    for curve in data["final"]["roc"].values():
        assert curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0]
    assert [v["position"] for v in data["who_sees_what"]] == [
        "outside auditor",
        "voter",
        "round leader",
        "colluding members",
    ]
    assert data["summary"] and "node0" in data["summary"][0]
    inversion = data["gradient_inversion"]
    assert inversion["round"] == 3 and inversion["contributors"] == 3
    views_ = {v["scenario"]: v for v in inversion["views"]}
    assert set(views_) == {"plaintext", "secagg", "secagg+dp"}
    assert views_["secagg+dp"]["noise_multiplier"] == 1.0  # as the ledger records for node0
    # What a plaintext leader rebuilds is far closer than what DP noise leaves.
    assert views_["plaintext"]["best_psnr_db"] > views_["secagg+dp"]["best_psnr_db"] + 10
    assert views_["plaintext"]["images_rebuilt"] == 4 and views_["secagg"]["images_rebuilt"] == 12
    # The command that reproduces the report is in it.
    assert f"--run {folders['first']} --reference-models 2 --seed 0" in text
    assert "--inversion-iterations 300" in text


def test_the_summary_says_when_no_guarantee_is_recorded(audited: MembershipAudit) -> None:
    from dataclasses import replace

    bare = replace(audited, rounds=[replace(r, claim=None) for r in audited.rounds])
    paragraphs = [text for text, _ in summary(bare)]
    assert any("records no differential-privacy guarantee" in p for p in paragraphs)
    html = render(page(bare, views(bare.status.config)))
    assert "limit under the recorded" not in html
    assert not math.isnan(bare.final.best().auc)


def test_clear_errors(folders: dict[str, Path], tmp_path: Path) -> None:
    report = str(tmp_path / "r.html")
    cases = [
        ([str(tmp_path), "--out", report], 2, "is not a node folder"),
        ([str(tmp_path / "nowhere"), "--out", report], 2, "no such folder"),
        ([str(folders["idle"]), "--out", report], 1, "no run on the ledger"),
        ([str(folders["run"]), "--out", report], 1, "has no committed round yet"),
        ([str(folders["run"]), "--out", str(tmp_path / "no" / "r.html")], 2, "does not exist"),
        ([str(folders["run"]), "--out", report, "--reference-models", "3"], 2, "even number"),
        ([str(folders["run"]), "--out", report, "--inversion-labels", "x"], 2, "'known' or"),
        ([str(folders["run"]), "--out", report, "--inversion-batch", "0"], 2, "at least 1"),
    ]
    for args, code, message in cases:
        got, _, err = cli("audit", "privacy", *args)
        assert got == code, (args, err)
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(PrivacyAuditError, match="no committed round"):
        audit_membership(folders["run"])


def test_audit_dir_still_verifies_the_folder(folders: dict[str, Path]) -> None:
    code, out, err = cli("audit", str(folders["run"]))
    assert code == 0, err
    assert out.startswith("audit OK")

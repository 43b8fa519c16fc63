"""The privacy audit's report: a `Page` for `ui.report` from a `MembershipAudit` (and, when
measured, an `InversionAudit` and a `CanaryAudit`), a summary a data-protection officer can
read, and the same figures as JSON.

Every sentence of the summary is computed from the figures: which attack did best, how that
compares with guessing given how many records were tested, and with the ε the ledger records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from consortium import __version__
from consortium.audit.privacy.canaries import CanaryAudit
from consortium.audit.privacy.inversion import InversionAudit
from consortium.audit.privacy.membership import (
    ATTACK_NAMES,
    FPRS,
    AttackResult,
    MembershipAudit,
    RoundAudit,
)
from consortium.audit.privacy.metrics import dp_tpr_bound
from consortium.audit.privacy.one_run import BETA, epsilon_lower_bound
from consortium.audit.privacy.views import View
from consortium.ui.report import (
    Axis,
    Facts,
    ImageGrid,
    LineChart,
    Page,
    Paragraph,
    Section,
    Series,
    Table,
    Tone,
    roc_chart,
)

#: An AUC this many null standard errors above 0.5 counts as better than guessing.
Z_BETTER_THAN_GUESSING = 2.0
#: Attack names inside a sentence.
SHORT_NAMES = {"loss": "the loss threshold", "lira": "LiRA", "rmia": "RMIA"}
#: A recorded ε whose TPR limit at 1% FPR is above this "barely limits" an attack.
WEAK_LIMIT = 0.9
#: SSIM of a rebuilt image at and above which it is called recognisable, and below which it
#: is called unrecognisable (between: partly): a rule of thumb, stated in the report.
SSIM_RECOGNISABLE = 0.6
SSIM_UNRECOGNISABLE = 0.3
#: Inversion views in a sentence and as a table row's name.
VIEW_NAMES = {
    "plaintext": "a plaintext (FedAvg) leader, from the node's own update",
    "secagg": "a SecAgg+ leader, from the sum of the contributors' updates",
    "secagg+dp": "a SecAgg+ leader when every contributor runs record-level DP-SGD",
}
ROW_NAMES = {
    "plaintext": "plaintext leader",
    "secagg": "SecAgg+ leader",
    "secagg+dp": "SecAgg+ leader, DP",
}
#: AUC at and above which leakage is called substantial (below, with a measurable difference
#: from guessing: some).
AUC_SUBSTANTIAL = 0.65


def _pct(x: float | None, digits: int = 1) -> str:
    """A rate as a percentage; near 100% with the digits that tell it from 100%."""
    if x is None:
        return "-"
    while digits < 4 and x < 1 and round(x * 100, digits) >= 100:
        digits += 1
    return f"{x * 100:.{digits}f}%"


def _eps(x: float) -> str:
    return "∞ (no noise)" if math.isinf(x) else f"{x:.3g}"


def _auc(x: float) -> str:
    """An AUC to 3 decimals, more near 1 so that a limit below 1 never reads as 1.000."""
    digits = 3
    while digits < 6 and x < 1 and round(x, digits) >= 1:
        digits += 1
    return f"{x:.{digits}f}"


def null_se(members: int, non_members: float) -> float:
    """Standard error of the AUC of a score that carries no information (Mann-Whitney)."""
    return math.sqrt((members + non_members + 1) / (12 * members * non_members))


def strongest(r: RoundAudit) -> AttackResult:
    """The attack with the highest TPR at 1% FPR (where measurable), then the highest AUC."""
    return max(r.attacks.values(), key=lambda a: (a.tpr(FPRS[0]) or 0.0, a.auc))


def _best_auc(r: RoundAudit) -> AttackResult:
    return max(r.attacks.values(), key=lambda a: a.auc)


def summary(audit: MembershipAudit) -> list[tuple[str, Tone]]:
    """Plain-language paragraphs (text, tone) about the final model, then the trend."""
    f = audit.final
    node = audit.node_name
    best = _best_auc(f)
    se = null_se(best.members, best.non_members)
    z = (best.auc - 0.5) / se
    out: list[tuple[str, Tone]] = [
        (
            f"What was tested: whether someone who holds only what this consortium publishes "
            f"(the model after each training round) can tell which records of {node} were "
            f"used to train it. {len(f.attacks)} published attacks were run against "
            f"{f.members} records {node} trained on and {f.non_members} records no member "
            f"trained on, on the final model (round {f.round}) and on every round's model.",
            "plain",
        )
    ]
    auc_text = (
        f"The strongest attack on the final model, {ATTACK_NAMES[best.attack]}, picks the "
        f"training record out of a pair (one used, one not) {best.auc * 100:.1f}% of the time "
        f"(AUC {best.auc:.3f}; guessing gets 50%)."
    )
    tpr_best = strongest(f)
    tpr = tpr_best.tpr(FPRS[0])
    if tpr is not None:
        auc_text += (
            f" Allowed to wrongly flag 1 in 100 records that were not used, the best attack "
            f"at that rate, {SHORT_NAMES[tpr_best.attack]}, finds {_pct(tpr)} of the records "
            "that were (guessing finds 1%)."
        )
    verdict: tuple[str, Tone]
    if z < Z_BETTER_THAN_GUESSING:
        verdict = (
            f"This is no better than guessing within what {best.members} + "
            f"{f.non_members} records can measure (±{2 * se:.3f} on the AUC): the published "
            f"models show no measurable sign of whether a given record of {node} was used.",
            "ok",
        )
    elif best.auc < AUC_SUBSTANTIAL:
        verdict = (
            f"This is measurably better than guessing, but weak: the published models leak "
            f"some information about whether a given record of {node} was used.",
            "note",
        )
    else:
        verdict = (
            f"This is substantial leakage: the published models reveal, for many records of "
            f"{node}, whether they were used.",
            "warning",
        )
    out.append((auc_text + " " + verdict[0], verdict[1]))
    claim = f.claim
    if claim is None or math.isinf(claim.epsilon):
        out.append(
            (
                "This run's purpose records no differential-privacy guarantee for these "
                "records: nothing bounds what a stronger attack could learn; the figures are "
                "what these attacks achieved, not a limit.",
                "warning",
            )
        )
    else:
        bound = claim.tpr_bound(FPRS[0])
        above = [
            a.attack
            for a in f.attacks.values()
            if (a.tpr(FPRS[0]) or 0.0) > bound or a.auc > claim.auc_bound
        ]
        text = (
            f"The ledger records a {claim.source} privacy guarantee of ε = {_eps(claim.epsilon)} "
            f"(δ = {claim.delta:g}) covering {node}'s records after round {f.round}. Such a "
            f"guarantee allows any attack at most {_pct(bound)} at the 1-in-100 false-flag "
            f"rate and an AUC of at most {_auc(claim.auc_bound)}."
        )
        if bound > WEAK_LIMIT:
            text += (
                " So weak a guarantee barely limits what a membership attack could reach; "
                "what these attacks reached is what the figures above measure."
            )
        if above:
            out.append(
                (
                    text + f" Measured: above that limit ({', '.join(above)}). Report this to "
                    "the consortium: the guarantee, its accounting or its implementation may be "
                    "wrong (or the measurement noisy: a formal test needs the canary audit).",
                    "warning",
                )
            )
        else:
            out.append((text + " The measurements are within that limit.", "ok"))
    first, last = audit.rounds[0], audit.rounds[-1]
    if len(audit.rounds) > 1:
        out.append(
            (
                f"Over the run, the strongest attack's AUC went from "
                f"{_best_auc(first).auc:.3f} (round {first.round}) to "
                f"{_best_auc(last).auc:.3f} (round {last.round}); every round's model is "
                "published, so the worst round counts: round "
                f"{max(audit.rounds, key=lambda r: _best_auc(r).auc).round} "
                f"(AUC {max(_best_auc(r).auc for r in audit.rounds):.3f}).",
                "plain",
            )
        )
    out.append(
        (
            "These attacks give a lower bound on what leaks, not an upper one: a stronger "
            "attack could do better. The formal limit is the recorded ε, if any.",
            "note",
        )
    )
    return out


def _attack_table(r: RoundAudit) -> Table:
    rows: list[list[str | int | float | None]] = []
    for a in r.attacks.values():
        cells: list[str | int | float | None] = [ATTACK_NAMES[a.attack], _auc(a.auc)]
        for fpr in FPRS:
            t = a.tpr(fpr)
            ci = a.tpr_interval(fpr)
            if t is None or ci is None:
                cells.append(
                    f"not measured: {a.non_members:.0f} non-members, {math.ceil(1 / fpr)} needed"
                )
            else:
                cells.append(f"{_pct(t)} ({_pct(ci[0])}-{_pct(ci[1])})")
        rows.append(cells)
    if r.claim is not None and not math.isinf(r.claim.epsilon):
        rows.append(
            [
                f"most any attack can reach under the recorded ε = {_eps(r.claim.epsilon)}",
                _auc(r.claim.auc_bound),
                *[_pct(r.claim.tpr_bound(fpr)) for fpr in FPRS],
            ]
        )
    rows.append(["guessing", _auc(0.5), *[_pct(fpr, 2 if fpr < 0.01 else 1) for fpr in FPRS]])
    return Table(
        ["attack", "AUC", *[f"TPR at {fpr * 100:g}% FPR (95% interval)" for fpr in FPRS]],
        rows,
        caption=f"Round {r.round} (the final model): {r.members} members, {r.non_members} "
        "non-members. TPR: share of members found; FPR: share of non-members wrongly flagged.",
    )


def _roc(r: RoundAudit, floor: float) -> LineChart:
    curves = [
        (ATTACK_NAMES[a.attack], a.roc.fpr.tolist(), a.roc.tpr.tolist()) for a in r.attacks.values()
    ]
    extra: list[Series] = []
    if r.claim is not None and not math.isinf(r.claim.epsilon):
        xs = np.geomspace(floor, 1.0, 60).tolist()
        extra.append(
            Series(
                f"limit under the recorded ε = {_eps(r.claim.epsilon)}",
                xs,
                [dp_tpr_bound(x, r.claim.epsilon, r.claim.delta) for x in xs],
                dashed=True,
                color="#D55E00",
            )
        )
    return roc_chart(
        f"ROC of the membership attacks, final model (round {r.round})",
        curves,
        floor=floor,
        extra=extra,
        caption="Log-log axes: the lower left is where an attack is useful (finding members "
        "while rarely flagging a non-member). The grey diagonal is guessing.",
    )


def _round_charts(audit: MembershipAudit) -> list[LineChart]:
    xs = [float(r.round) for r in audit.rounds]
    claims = [r.claim for r in audit.rounds]
    auc = [
        Series(
            ATTACK_NAMES[name],
            xs,
            [r.attacks[name].auc for r in audit.rounds],
            markers=len(xs) <= 30,
        )
        for name in audit.rounds[0].attacks
    ]
    auc.append(Series("guessing", [xs[0], xs[-1]], [0.5, 0.5], dashed=True, reference=True))
    tpr = [
        Series(
            ATTACK_NAMES[name],
            xs,
            [r.attacks[name].tpr(FPRS[0]) or math.nan for r in audit.rounds],
            markers=len(xs) <= 30,
        )
        for name in audit.rounds[0].attacks
    ]
    tpr.append(Series("guessing", [xs[0], xs[-1]], [FPRS[0]] * 2, dashed=True, reference=True))
    if all(c is not None and math.isfinite(c.epsilon) for c in claims):
        tpr.append(
            Series(
                "limit under the recorded ε",
                xs,
                [c.tpr_bound(FPRS[0]) for c in claims if c is not None],
                dashed=True,
                color="#D55E00",
            )
        )
    if all(c is not None and math.isfinite(c.epsilon) for c in claims):
        auc.append(
            Series(
                "limit under the recorded ε",
                xs,
                [c.auc_bound for c in claims if c is not None],
                dashed=True,
                color="#D55E00",
            )
        )
    values = [v for series in auc for v in series.y]
    span = (xs[0] - 0.5, xs[-1] + 0.5)
    return [
        LineChart(
            "AUC of each round's published model",
            Axis("round", lo=span[0], hi=span[1]),
            # At least 0.4 to 0.7: noise around 0.5 should look like noise.
            Axis("AUC", lo=min(0.4, min(values) - 0.02), hi=min(1.0, max(0.7, max(values) + 0.02))),
            auc,
        ),
        LineChart(
            "TPR at 1% FPR of each round's published model",
            Axis("round", lo=span[0], hi=span[1]),
            Axis("TPR at 1% FPR", lo=0.0, percent=True),
            tpr,
        ),
    ]


def _round_table(audit: MembershipAudit) -> Table:
    names = list(audit.rounds[0].attacks)
    rows: list[list[str | int | float | None]] = []
    for r in audit.rounds:
        row: list[str | int | float | None] = [r.round, r.members]
        row += [r.attacks[n].auc for n in names]
        row += [_pct(r.attacks[n].tpr(FPRS[0])) for n in names]
        row.append(None if r.claim is None else _eps(r.claim.epsilon))
        rows.append(row)
    return Table(
        [
            "round",
            "members",
            *[f"AUC {n}" for n in names],
            *[f"TPR@1% {n}" for n in names],
            "recorded ε",
        ],
        rows,
        caption="Members of a round: the node's records used in that round or before.",
    )


def _views_table(views: Sequence[View]) -> Table:
    return Table(
        ["position", "holds", "beyond the published models", "figures that apply"],
        [[v.position, v.holds, v.beyond_models, v.measured] for v in views],
    )


def _method(audit: MembershipAudit) -> list[Paragraph | Facts]:
    c = audit.status.config
    s = audit.settings
    return [
        Facts(
            [
                (
                    "models attacked",
                    "the global model each round published (its CID in the round's ledger "
                    "record, read from the folder's store and re-hashed); the final model is "
                    "the last round's",
                ),
                (
                    "members",
                    f"records of {audit.node_name} (this folder's node) that the run's task "
                    "loads for it, that its Learner trains on, and that the round's consent "
                    "selection (consent.sqlite, by ledger slot) allowed; a member of round r "
                    "was used in some round up to r",
                ),
                (
                    "non-members",
                    "the task's test split as this node loads it (built-in datasets: the "
                    "dataset's test split, which no Learner trains on)"
                    + (", weighted to the members' label mix" if audit.weighted else ""),
                ),
                (
                    "reference models",
                    f"{audit.reference_models} (half on each half of the non-members, "
                    f"{audit.reference_data} records each), trained centrally with the run's "
                    f"task, model and optimiser, {audit.epochs_per_round} epochs per round, one "
                    "checkpoint per round; each record scored with the "
                    f"{audit.reference_models // 2} models that never saw it",
                ),
                (
                    "attacks",
                    "loss threshold (Yeom et al. 2018, every threshold swept); LiRA offline "
                    "with fixed variance (Carlini et al. 2022); RMIA offline, a = 0.3 "
                    "(Zarifzadeh et al. 2024)",
                ),
                (
                    "figures",
                    "AUC; TPR at 1% and 0.1% FPR (measured only with at least 1/FPR "
                    "non-members), with a 95% Clopper-Pearson interval over the members",
                ),
                (
                    "recorded ε",
                    "the purpose's running total on the ledger after the round, for this "
                    "node's records: its record-level total or the client-level total, "
                    "whichever is smaller",
                ),
                (
                    "seed, caps",
                    f"seed {s.seed}; at most {s.max_records} members and "
                    f"non-members each, {s.max_rounds} rounds",
                ),
                (
                    "run",
                    f"{audit.run}: {c.rounds} rounds agreed, {audit.status.committed} committed",
                ),
            ]
        ),
        Paragraph(
            "The limit an ε allows, TPR ≤ min(1, e^ε·FPR + δ, 1 - e^-ε·(1 - δ - FPR)), holds "
            "for a test on one record whose membership was decided at random; members here "
            "were not, so a figure above it is a warning sign, not a proof. The one-run canary "
            "audit (issue 17, item 2) is the formal test.",
            "note",
        ),
    ]


def _recognisable(ssim: float) -> str:
    if ssim >= SSIM_RECOGNISABLE:
        return "recognisable"
    if ssim < SSIM_UNRECOGNISABLE:
        return "not recognisable"
    return "partly recognisable"


def inversion_summary(inv: InversionAudit, node: str) -> tuple[str, Tone]:
    """One paragraph: how well each view rebuilds the node's records."""
    parts = []
    for r in inv.results:
        parts.append(
            f"{VIEW_NAMES[r.scenario]}: {_recognisable(r.best_ssim)} (best image "
            f"{r.best_psnr:.1f} dB PSNR, SSIM {r.best_ssim:.2f})"
        )
    by = {r.scenario: r for r in inv.results}
    worst = max(inv.results, key=lambda r: r.best_ssim)
    tone: Tone = "warning" if worst.best_ssim >= SSIM_RECOGNISABLE else "ok"
    text = (
        f"Gradient inversion: from an update of {inv.batch} of {node}'s records (one local "
        f"step at the model of round {inv.round}), the images were rebuilt by "
        + "; by ".join(parts)
        + "."
    )
    if "secagg" in by and by["secagg"].best_ssim >= SSIM_RECOGNISABLE:
        text += (
            f" Secure aggregation alone did not hide them: a sum of {inv.contributors} updates "
            f"of {inv.batch} records each mixes too few records to hide one; it hides an "
            "update among many records, not a small one."
        )
    if "secagg+dp" in by and by["secagg+dp"].best_ssim < SSIM_RECOGNISABLE:
        text += " With DP noise they were not."
    return text, tone


def _inversion_section(inv: InversionAudit, node: str) -> Section:
    s = inv.settings
    rows: list[list[str | int | float | None]] = [
        [
            ROW_NAMES[r.scenario],
            r.images_rebuilt,
            r.best_psnr,
            r.best_ssim,
            float(np.mean(r.psnr)),
            float(np.mean(r.ssim)),
            _recognisable(r.best_ssim),
        ]
        for r in inv.results
    ]
    truth = inv.results[0].truth
    lo = float(min(truth.min(), *(r.rebuilt.min() for r in inv.results)))
    hi = float(max(truth.max(), *(r.rebuilt.max() for r in inv.results)))
    grid = ImageGrid(
        [f"record {i + 1}" for i in range(len(truth))],
        [("true record", truth.tolist())]
        + [(ROW_NAMES[r.scenario], r.rebuilt.tolist()) for r in inv.results],
        lo=min(lo, 0.0),
        hi=max(hi, 1.0),
        caption="Each column: one of the node's records and, below it, the rebuilt image "
        "closest to it (highest PSNR) from each view. First channel only.",
    )
    return Section(
        "Gradient inversion",
        [
            Paragraph(
                f"Can whoever aggregates rebuild {node}'s training images from what it receives? "
                "The attack (in the style of Geiping et al. 2020) starts from random images and "
                "moves them until the gradient they give points the same way as the update "
                "received (cosine similarity, a total-variation prior, Adam). Measured on "
                f"{inv.batch} of {node}'s records that round {inv.round} trained on, with the "
                f"update taken at the model round {inv.round} started from: the most favourable "
                "case for the attacker (one local step; the run's real updates take many steps "
                "over all the node's records, which makes inversion harder)."
            ),
            Paragraph(*inversion_summary(inv, node)),
            Table(
                [
                    "view",
                    "images rebuilt",
                    "best PSNR (dB)",
                    "best SSIM",
                    "mean PSNR (dB)",
                    "mean SSIM",
                    "best image",
                ],
                rows,
                caption="PSNR: peak signal-to-noise ratio (higher: closer; above about 20 dB "
                "an image is usually recognisable). SSIM: structural similarity, 1 for the same "
                f"image; here recognisable at {SSIM_RECOGNISABLE} and above, not below "
                f"{SSIM_UNRECOGNISABLE} (a rule of thumb). Best: the victim image rebuilt best; "
                "mean: over the victim's images.",
            ),
            grid,
            Facts(
                [
                    (
                        "views",
                        f"plaintext: the node's own update; SecAgg+: the sum of "
                        f"{inv.contributors} updates (the round's contributors), the others "
                        f"stood in for by other records of {node}'s own data ({inv.batch} "
                        "each), the attacker knowing each contributor's count (the ledger "
                        "publishes it) and rebuilding every record of the sum; DP: each "
                        "contributor's per-example gradients clipped and noised",
                    ),
                    ("noise", inv.noise_source),
                    (
                        "attack",
                        f"{s.iterations} iterations of Adam (step {s.lr:g}, on the signed "
                        f"gradient, decayed tenfold at 3/8, 5/8 and 7/8), {s.restarts} "
                        f"restart(s), the lowest matching loss kept; total variation weight "
                        f"{s.tv:g}; labels {s.labels}"
                        + (
                            " (iDLG: from the last layer's bias gradient)"
                            if s.labels == "inferred"
                            else " (the strongest attacker)"
                        ),
                    ),
                    (
                        "figures",
                        "PSNR at the data's range; SSIM as scikit-image computes it by default "
                        "(7x7 uniform window), implemented here with SciPy",
                    ),
                    ("model", f"{inv.model} (the global model round {inv.round} started from)"),
                    ("seed", str(s.seed)),
                ]
            ),
            *[Paragraph(n, "note") for n in inv.notes],
        ],
    )


def canary_summary(c: CanaryAudit) -> tuple[str, Tone]:
    """One paragraph: the one-run ε lower bound against the accountant's ε."""
    text = (
        f"One-run ε audit: a separate training run with this run's settings "
        f"({c.members} simulated members, {c.rounds} rounds) planted {c.canaries} mislabelled "
        f"records (canaries), each put in or left out by a coin flip; guessing from the final "
        f"model which were in, the auditor got {c.correct} of {c.guesses} guesses right. That "
        f"proves, at {round((1 - BETA) * 100)}% confidence, ε ≥ {c.epsilon_lower:.2f} for that "
        "run."
    )
    if c.claimed is None:
        text += (
            " The run claims no differential-privacy guarantee, so there is nothing to check "
            "it against" + (": the bound shows measurable leakage." if c.epsilon_lower > 0 else ".")
        )
        tone: Tone = "warning" if c.epsilon_lower > 0 else "note"
    elif c.defect:
        text += (
            f" DEFECT: the accountant claims ε = {c.claimed:.3g}, below what was measured. The "
            "guarantee, its accounting or its implementation is wrong (a 5% chance of a false "
            "alarm): report this to the consortium."
        )
        tone = "warning"
    else:
        text += (
            f" The accountant claims ε = {c.claimed:.3g}: consistent (the bound does not "
            "exceed it)."
        )
        tone = "ok"
    text += (
        f" With {c.canaries} canaries and {c.guesses} guesses, this audit cannot show more than "
        f"ε = {c.cap:.2f} even if every guess were right"
        + (
            f", so it cannot tell whether ε = {c.claimed:.3g} is tight"
            if c.claimed is not None and c.claimed > c.cap
            else ""
        )
        + ": a lower bound, never the true ε."
    )
    return text, tone


def _canary_section(c: CanaryAudit) -> Section:
    lo = c.guesses // 2
    vs = sorted({round(lo + (c.guesses - lo) * i / 40) for i in range(41)})
    bounds = [epsilon_lower_bound(c.canaries, c.guesses, v, c.delta) for v in vs]
    series = [
        Series("lower bound at 95% for v right guesses", [float(v) for v in vs], bounds),
        Series(
            "measured",
            [float(c.correct)],
            [c.epsilon_lower],
            markers=True,
            color="#D55E00",
        ),
    ]
    if c.claimed is not None:
        series.append(
            Series(
                f"accountant's ε = {c.claimed:.3g}",
                [float(vs[0]), float(vs[-1])],
                [c.claimed, c.claimed],
                dashed=True,
                reference=True,
            )
        )
    top = max([*bounds, c.claimed or 0.0, 1.0])
    chart = LineChart(
        "Claimed ε and the one-run lower bound",
        Axis("right guesses v", lo=float(vs[0]), hi=float(vs[-1])),
        Axis("ε", lo=0.0, hi=top * 1.05),
        series,
        caption=f"The bound {c.guesses} guesses on {c.canaries} canaries give for each count of "
        "right guesses (its right end, every guess right, is the most this audit can show), "
        "the count measured, and the ε the accountant claims.",
    )
    rows: list[list[str | int | float | None]] = [
        ["canaries planted (each in with probability ½)", c.canaries],
        ["canaries drawn in", c.included],
        ["guesses (the rest abstained)", c.guesses],
        ["right guesses", c.correct],
        [f"ε lower bound at {round((1 - BETA) * 100)}% confidence", c.epsilon_lower],
        ["most these guesses can show (all right)", c.cap],
        ["accountant's ε" + (f" ({c.claim_source})" if c.claim_source else ""), c.claimed],
        ["δ", c.delta],
    ]
    return Section(
        "One-run ε audit (canaries)",
        [
            Paragraph(*canary_summary(c)),
            Table(["", "value"], rows),
            chart,
            Facts(
                [
                    (
                        "method",
                        "Steinke, Nasr and Jagielski, Privacy Auditing with One (1) Training "
                        "Run (NeurIPS 2023): the p-value of their Corollary 5.4 (Appendix D), "
                        "the largest ε it rejects at 5%",
                    ),
                    (
                        "canary run",
                        f"{c.members} in-process members (real nodes, rounds, "
                        f"{'SecAgg+' if c.config.secure_aggregation == 'secagg+' else 'plaintext'}"
                        f", DP {c.config.privacy.unit}) with this run's configuration, "
                        f"{c.config.rounds} rounds; every member a shard of the auditing node's "
                        "data source, the canaries on the member holding its shard",
                    ),
                    (
                        "canaries",
                        "records of the auditing node's test split with a wrong label drawn at "
                        "random; score: minus the loss under the final model; the highest half "
                        "of the guesses 'in', the lowest half 'out', fixed before the run",
                    ),
                ]
            ),
            *[Paragraph(n, "note") for n in c.notes],
        ],
    )


def page(
    audit: MembershipAudit,
    views: Sequence[View],
    command: str = "",
    inversion: InversionAudit | None = None,
    canary: CanaryAudit | None = None,
    inversion_skipped: str = "No gradient inversion (--inversion-iterations 0).",
) -> Page:
    final = audit.final
    c = audit.status.config
    floor = 10 ** math.floor(math.log10(max(1.0 / max(final.non_members, 1), 1e-4)))
    sections = [
        Section(
            "Summary",
            [Paragraph(text, tone) for text, tone in summary(audit)]
            + (
                [Paragraph(*inversion_summary(inversion, audit.node_name))]
                if inversion is not None
                else []
            )
            + ([Paragraph(*canary_summary(canary))] if canary is not None else []),
        ),
        Section("Final model", [_attack_table(final), _roc(final, floor)]),
        Section("Every round", [*_round_charts(audit), _round_table(audit)]),
        *([_inversion_section(inversion, audit.node_name)] if inversion is not None else []),
        *([_canary_section(canary)] if canary is not None else []),
        Section(
            "Who sees what",
            [
                Paragraph(
                    "What each position holds of this run, given what the ledger and the "
                    "transcripts publish. The attacks above ran from the outside auditor's "
                    "view: the published models only."
                ),
                _views_table(views),
            ],
        ),
        Section("Method", _method(audit)),
        *(
            [
                Section(
                    "Not in this report",
                    [
                        Paragraph(
                            " ".join(
                                ([] if canary else ["No one-run ε audit (--canaries m)."])
                                + ([] if inversion else [inversion_skipped])
                            )
                        )
                    ],
                )
            ]
            if canary is None or inversion is None
            else []
        ),
    ]
    if audit.notes:
        sections.append(Section("Notes", [Paragraph(n) for n in audit.notes]))
    return Page(
        "Privacy audit: membership inference"
        + (", gradient inversion" if inversion is not None else "")
        + (", one-run ε bound" if canary is not None else ""),
        sections,
        subtitle=f"What the published models of run {audit.run} reveal about the records of "
        f"{audit.node_name}",
        meta=[
            ("consortium", audit.consortium),
            (
                "run",
                f"{audit.run} ({c.task or f'{c.dataset}/{c.model}'}, {c.rounds} rounds, "
                f"secure aggregation {c.secure_aggregation}, DP {c.privacy.unit})",
            ),
            ("node", f"{audit.node_name} ({audit.node})"),
            ("folder", str(audit.folder)),
            ("consortium version", __version__),
        ],
        footer=f"Reproduce: {command}" if command else "",
    )


def to_json(
    audit: MembershipAudit,
    views: Sequence[View],
    inversion: InversionAudit | None = None,
    canary: CanaryAudit | None = None,
) -> dict[str, Any]:
    out = audit.to_json()
    out["who_sees_what"] = [v.to_json() for v in views]
    out["summary"] = [text for text, _ in summary(audit)]
    out["gradient_inversion"] = None if inversion is None else inversion.to_json()
    if inversion is not None:
        out["summary"].append(inversion_summary(inversion, audit.node_name)[0])
    out["one_run_audit"] = None if canary is None else canary.to_json()
    if canary is not None:
        out["summary"].append(canary_summary(canary)[0])
    return out

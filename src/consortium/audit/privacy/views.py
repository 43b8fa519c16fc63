"""Who sees what: for each attacker position, what it holds of a run, given what the ledger and
the transcripts publish (docs/architecture.md, "Decided once: what transcripts publish" and
"Per-node figures that may be published"), and which of the audit's measurements apply to it.

The membership attacks run from the outside auditor's view (published models only). A voter and,
under SecAgg+, a round's leader hold nothing more about another member's records than that view
(the sum they see is the difference of two published models), so the same figures bound what
they learn from the models; what they hold beyond it is their own data, which only makes their
reference models better (more population data), not the target any different. A leader of a
plaintext run (`secure_aggregation = "none"`) sees each contributor's own model: a strictly
stronger position, measured by gradient inversion against the plaintext update (`inversion`).
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.node.config import RunConfig

#: Positions in report order.
POSITIONS = ("outside auditor", "voter", "round leader", "colluding members")


@dataclass(frozen=True)
class View:
    position: str
    holds: str  # what it has of the run
    beyond_models: str  # what that adds, about an honest member's records, to the models
    measured: str  # which figures of this audit apply

    def to_json(self) -> dict[str, str]:
        return {
            "position": self.position,
            "holds": self.holds,
            "beyond_models": self.beyond_models,
            "measured": self.measured,
        }


def views(config: RunConfig) -> list[View]:
    """The positions for a run with this configuration."""
    secure = config.secure_aggregation == "secagg+"
    dp = config.privacy.unit != "none"
    ledger = (
        "the ledger (per round: participants, sample counts, update commitments, consent "
        "commitments (root, count), erasure counts, DP parameters and ε spent)"
    )
    models = "every round's global model (the store)"
    transcript = (
        "the SecAgg+ transcript of each round: the integer sum of the masked inputs, each "
        "contributor's signed commitment to its masked input, revealed self-mask seeds and "
        "dropped members' mask keys"
        if secure
        else "no transcript (plaintext rounds publish only each update's hash)"
    )
    same = "the membership figures of this report (run from exactly this view)"
    out = [
        View(
            "outside auditor",
            f"a copy of a node folder: {ledger}; {models}; {transcript}",
            "nothing: each round's aggregate is the difference of two published models"
            + (
                "; the masked inputs behind the sum and its commitments still carry pairwise "
                "masks no holder below the threshold can remove"
                if secure
                else ""
            )
            + "; the ledger holds counts and commitments, never a record, a per-node loss or "
            "an accuracy",
            same,
        ),
        View(
            "voter",
            "what the auditor holds, for each round it checks (the proposal's model"
            + (" and transcript" if secure else "")
            + "), plus its own data, its own update and its own DP noise share",
            "its own data only: more population data for reference models; nothing more about "
            "another member's records than the models",
            same + " (its own records aside)",
        ),
    ]
    if secure:
        out.append(
            View(
                "round leader",
                "what a voter holds, plus the masked inputs as they arrive, which members "
                "dropped out and when, and the unmasked sum of at least "
                f"max(quorum, f + {config.min_honest}) members",
                "nothing about one member's update beyond the sum (SecAgg+, threshold f + 1): "
                "the sum is the published model difference",
                same
                + "; gradient inversion: the SecAgg+ views of its section (the sum"
                + (", with DP noise" if dp else "")
                + ")",
            )
        )
    else:
        out.append(
            View(
                "round leader",
                "each contributor's updated model in the clear (plaintext FedAvg), plus what a "
                "voter holds",
                "each member's own local model every round it leads: membership and "
                "reconstruction attacks against one member's update, far stronger than "
                "against the average",
                "membership: a lower bound (run on the models only); gradient inversion: the "
                "plaintext view of its section, from one member's own update",
            )
        )
    out.append(
        View(
            "colluding members",
            "up to f = ⌊(n-1)/3⌋ members pooling what they hold, their own inputs and noise "
            "shares included",
            (
                "the sum of the honest members' updates (their own subtracted); the DP "
                "guarantee holds from the view of any member, who knows its own noise share"
                if dp
                else "the sum of the honest members' updates (their own subtracted)"
            )
            if secure
            else "each honest member's update, whenever one of them leads",
            "a lower bound: their own updates removed, what is left is the sum of fewer "
            "members, which says more about each of them than the models do"
            if secure
            else "not measured here (as for a plaintext leader)",
        )
    )
    return out

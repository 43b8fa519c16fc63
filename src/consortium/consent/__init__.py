"""Consent: who agreed to which use of which record, enforced each round, provable, erasable.

- `registry`: the node's SQLite consent registry (append-only history, current state, salts).
- `history`: the hash chain over salted event digests, and the round head each round commits.
- `commitments`: salted per-round Merkle commitments, receipts and their checks (pure).
- `rounds`: `begin_round` (select + commit, what the Learner calls) and receipts from a registry.
- `erasure`: crypto-shredding and the retrain plan.
- `report`: records used per round; withdrawals, expiries and erasures and when they took effect.
- `verify`: the auditor's check of a registry against itself and the node's ledger commitments.
"""

from consortium.consent.commitments import (
    Receipt,
    RoundCommitment,
    RoundProof,
    Verdict,
    build_receipt,
    check_receipt,
    commit,
    commitment,
    roots_from_records,
    round_leaves,
)
from consortium.consent.erasure import Erasure, RetrainPlan, erase_subject, plan_retrain
from consortium.consent.registry import ConsentError, ConsentRegistry, GrantRow
from consortium.consent.report import ConsentReport, build_report
from consortium.consent.rounds import RoundSelection, begin_round, receipt_from_registry
from consortium.consent.verify import verify_registry

__all__ = [
    "ConsentError",
    "ConsentRegistry",
    "ConsentReport",
    "Erasure",
    "GrantRow",
    "Receipt",
    "RetrainPlan",
    "RoundCommitment",
    "RoundProof",
    "RoundSelection",
    "Verdict",
    "begin_round",
    "build_receipt",
    "build_report",
    "check_receipt",
    "commit",
    "commitment",
    "erase_subject",
    "plan_retrain",
    "receipt_from_registry",
    "roots_from_records",
    "round_leaves",
    "verify_registry",
]

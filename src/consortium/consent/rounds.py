"""What a node does with its registry each round: select the consented records and commit to them.

Integration (the Learner is the only path from data to training):

    sel = begin_round(registry, purpose, round_no, at=round_start)
    train on dataset rows sel.record_ids only
    Update / round record carry sel.commitment.to_body() under "consent" -> {node_id: ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from consortium.consent.commitments import (
    Receipt,
    RoundCommitment,
    build_receipt,
    commit,
    round_leaves,
)
from consortium.consent.history import round_head
from consortium.consent.registry import ConsentRegistry


@dataclass(frozen=True)
class RoundSelection:
    round: int
    purpose: str
    at: float
    record_ids: np.ndarray  # sorted record ids (text): the only records this round may use
    commitment: RoundCommitment


def begin_round(
    registry: ConsentRegistry,
    purpose: str,
    round_no: int,
    *,
    at: float,
    held: np.ndarray | None = None,
) -> RoundSelection:
    """Records whose consent covers `purpose` at `at`, committed to and remembered.

    `held`: the record ids of the node's data (consent for other ids is kept but never used).
    The selection is made once per round: a retried attempt (or a restarted node) gets the stored
    selection and commitment back, whatever `at` it passes, minus any record erased since.
    """
    stored = registry.stored_selection(round_no, purpose)
    if stored is not None:
        rnd, ids = stored
        rc = RoundCommitment(rnd.root, rnd.count, purpose, rnd.head)
        return RoundSelection(round_no, purpose, rnd.at, ids, rc)
    ids, salts, events, chain = registry.select(purpose, at, held)
    leaves = round_leaves(salts, ids.tolist(), purpose, round_no)
    rc = commit(leaves, purpose, round_head(chain, events, at))
    registry.store_round(round_no, purpose, at, rc.root, leaves, ids, events, rc.head)
    return RoundSelection(round_no, purpose, at, ids, rc)


def receipt_from_registry(
    registry: ConsentRegistry,
    subject: str,
    node: str = "",
    rounds: list[tuple[int, str]] | None = None,
) -> Receipt:
    """A subject's receipt over every stored round (or `rounds`); refuses an erased subject."""
    ids = registry.records_of(subject)
    salts = registry.salts(ids)  # ConsentError once erased: the salts are gone
    wanted = rounds if rounds is not None else [(r.round, r.purpose) for r in registry.rounds()]
    return build_receipt(
        subject, salts, ((r, p, registry.round_leaves(r, p)) for r, p in wanted), node
    )

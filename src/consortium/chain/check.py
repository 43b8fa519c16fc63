"""Audit checks: does the local ledger agree with what was anchored on chain?

Sans-I/O: the caller reads the anchored heads (`AnchorChain.anchored_heads`) and passes in how to
get the local log's root at a size and whether one local size is consistent with another (an
RFC 9162 consistency proof). Each function returns a list of problems; empty means it agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from consortium.chain.client import AnchoredHead
from consortium.core.errors import ConsortiumError


def check_anchored(
    heads: Sequence[AnchoredHead],
    local_size: int,
    local_root_at: Callable[[int], bytes],
    consistency_ok: Callable[[int, int], bool],
) -> list[str]:
    """Every anchored head must be a prefix of the local log, and the local log must extend the
    latest one. A mismatch means the history was rewritten after it was anchored (tampering)."""
    problems: list[str] = []
    last = 0
    for i, head in enumerate(heads):
        if head.size <= last:  # the contract forbids it; a fake chain might not
            problems.append(f"anchored head {i} at size {head.size} does not grow past {last}")
        last = max(last, head.size)
        if head.size > local_size:
            problems.append(
                f"local history does not extend anchored head at size {head.size}: "
                f"the local log has only {local_size} entries (truncated)"
            )
            continue
        try:
            root = local_root_at(head.size)
        except ConsortiumError as exc:
            problems.append(f"cannot compute the local root at anchored size {head.size}: {exc}")
            continue
        if root != head.root:
            problems.append(
                f"local history does not extend anchored head at size {head.size}: "
                f"local root {root.hex()[:16]}… differs from anchored {head.root.hex()[:16]}…"
            )
    if heads and heads[-1].size <= local_size:
        latest = heads[-1].size
        try:
            ok = consistency_ok(latest, local_size)
        except ConsortiumError:
            ok = False
        if not ok:
            problems.append(
                f"local history does not extend anchored head at size {latest}: "
                f"no valid consistency proof from size {latest} to {local_size}"
            )
    return problems


def check_deployment(
    onchain_members: Collection[str],
    onchain_genesis_digest: bytes,
    code_matches: bool,
    expected_members: Collection[str],
    expected_genesis_digest: bytes,
) -> list[str]:
    """The contract must be ours, for this consortium's genesis, with exactly its members."""
    problems: list[str] = []
    if not code_matches:
        problems.append("the anchor contract's code is not the TreeHeadAnchor contract")
    if onchain_genesis_digest != expected_genesis_digest:
        got, want = onchain_genesis_digest.hex()[:16], expected_genesis_digest.hex()[:16]
        problems.append(
            f"the anchor contract was deployed for another genesis ({got}…, expected {want}…)"
        )
    have = {a.lower() for a in onchain_members}
    wanted = {a.lower() for a in expected_members}
    if extra := sorted(have - wanted):
        problems.append(f"the anchor contract allows non-members to anchor: {', '.join(extra)}")
    if missing := sorted(wanted - have):
        problems.append(f"the anchor contract is missing members: {', '.join(missing)}")
    return problems

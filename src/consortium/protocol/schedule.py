"""The round schedule, derived from the round's beacon.

Every node computes the same leader order for round r from the round's beacon (`protocol/beacon.py`,
a value no member can steer, fixed before the round) and the members: members sorted by
H(beacon ‖ r ‖ node_id). Attempt 0 is led by the first; when a leader misses its deadline, attempt a
is led by the member at position a (mod n). No node is special across rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leader_order(beacon: bytes, round_no: int, live: Sequence[str]) -> list[str]:
    """Live members in the order they lead round `round_no`'s attempts."""
    if not live:
        raise ValueError("no live members to schedule")
    prefix = beacon + round_no.to_bytes(8, "big")
    return sorted(set(live), key=lambda m: (hashlib.sha256(prefix + m.encode()).digest(), m))


def leader_for(beacon: bytes, round_no: int, attempt: int, live: Sequence[str]) -> str:
    order = leader_order(beacon, round_no, live)
    return order[attempt % len(order)]

"""Committees: the members who contribute to a round when only K of N do (design, issue 15).

`committee_for` draws a round's committee from the round's beacon alone, as every random choice
made from shared state does (docs/architecture.md, "Shared randomness"): the K members first in
the order of H("committee" ‖ attempt_beacon(value, 0) ‖ id). It is the round's, not an
attempt's: a leader that fails its attempt on purpose cannot redraw the committee. Every member,
voter and auditor can recompute it from the record's beacon partials.
`committee_unsafe_probability` is the figure a committee's size rests on: the chance that a
uniformly random committee holds more than a third dishonest members, which would let them
forge its quorum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from consortium.protocol.beacon import attempt_beacon

_TAG = b"consortium/v1/committee|"


def committee_for(value: bytes, members: Sequence[str], k: int) -> list[str]:
    """The sorted committee of `k` members for every attempt of the round whose beacon is
    `value`: pure, so every member computes the same one."""
    if not 1 <= k <= len(set(members)):
        raise ValueError(f"a committee of {k} from {len(set(members))} members")
    seed = _TAG + attempt_beacon(value, 0)
    ranked = sorted(set(members), key=lambda m: (hashlib.sha256(seed + m.encode()).digest(), m))
    return sorted(ranked[:k])


def committee_unsafe_probability(members: int, k: int, dishonest: int) -> float:
    """P[a committee of k drawn uniformly from `members`, `dishonest` of them dishonest, holds
    more than floor((k - 1) / 3) dishonest members]: the hypergeometric upper tail."""
    if not 0 <= dishonest <= members or not 1 <= k <= members:
        raise ValueError("need 0 <= dishonest <= members and 1 <= k <= members")
    from scipy.stats import hypergeom  # the exact tail; imported here: verifiers need only the draw

    limit = (k - 1) // 3
    return float(hypergeom.sf(limit, members, dishonest, k))

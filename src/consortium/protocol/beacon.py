"""The shared beacon: one value per (run, round) that no member can steer, and per-attempt values
derived from it. Every random choice made from shared state starts here (the leader order, the
SecAgg+ graph; later storage challenges, evaluation samples, verification slices, committees).

Why no member can steer it:
- The value is the threshold unique signature `s·H(m)` (core/threshold.py) on
  `m = (genesis digest, run id, round)`, hashed. The key `s` comes from the genesis DKG: no member
  knows it, and any `t = f + 1` members' partials give the same point, so no set of f colluders can
  compute it alone, and whoever collects partials cannot grind over which ones it uses.
- `m` is fixed before the round: the genesis digest at the ceremony, the run id when a quorum
  cosigned the run config, the round number by the ledger. Nothing any member writes during the
  run (a timestamp, the order of cosignatures it collects, a record's content) enters it.
- The traps it avoids: commit-reveal lets the last revealer choose to withhold, and a value built
  from whichever signatures a leader collects lets the leader choose the subset; here withholding
  only delays (any t of the honest members finish it) and every subset gives one value.

Sans-I/O: `BeaconCollector` takes partials and answers whether the value is known; the round machine
broadcasts this node's partial when a round begins and adds the partials it receives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consortium.core.encoding import encode
from consortium.core.threshold import (
    POINT_BYTES,
    PROOF_BYTES,
    GroupKey,
    SecretShare,
    ThresholdError,
    combine,
    member_index,
    partial,
    verify_partial,
)

_TAG = b"consortium/beacon/v1"


def beacon_message(consortium: bytes, run: str, round_no: int) -> bytes:
    """What the members' partials sign for round `round_no` of `run`: fixed before the round."""
    return _TAG + encode({"consortium": consortium, "run": run, "round": round_no})


def beacon_value(point: bytes) -> bytes:
    """The round's 32-byte beacon, from the combined signature."""
    return hashlib.sha256(_TAG + b"|value|" + point).digest()


def attempt_beacon(value: bytes, attempt: int) -> bytes:
    """The beacon of one attempt: what attempt-level random choices (the SecAgg+ graph) use."""
    return hashlib.sha256(_TAG + b"|attempt|" + value + attempt.to_bytes(8, "big")).digest()


@dataclass(frozen=True)
class BeaconPartial:
    """One member's partial and its proof (as carried in a record's `beacon` section)."""

    member: str
    sigma: bytes
    proof: bytes

    def to_body(self) -> dict[str, Any]:
        return {"member": self.member, "sigma": self.sigma, "proof": self.proof}

    @classmethod
    def from_body(cls, b: Any) -> BeaconPartial:
        if not isinstance(b, dict) or set(b) != {"member", "sigma", "proof"}:
            raise ThresholdError("a beacon partial is {member, sigma, proof}")
        member, sigma, proof = b["member"], b["sigma"], b["proof"]
        if not isinstance(member, str) or not 0 < len(member) <= 256:
            raise ThresholdError("a beacon partial's member must be a node id")
        if not isinstance(sigma, bytes) or len(sigma) != POINT_BYTES:
            raise ThresholdError(f"a beacon partial's sigma is {POINT_BYTES} bytes")
        if not isinstance(proof, bytes) or len(proof) != PROOF_BYTES:
            raise ThresholdError(f"a beacon partial's proof is {PROOF_BYTES} bytes")
        return cls(member, sigma, proof)


def make_partial(share: SecretShare, message: bytes) -> BeaconPartial:
    sigma, proof = partial(share, message)
    return BeaconPartial(share.node_id, sigma, proof)


class BeaconCollector:
    """Partials for one message, checked as they arrive, until `threshold` make the value."""

    def __init__(
        self,
        group: GroupKey,
        message: bytes,
        checked: Collection[BeaconPartial] = (),
    ) -> None:
        """`checked`: partials on this same `message` the caller already verified (its own
        collector's, `checked()`); one of exactly these bytes is not verified again. Only the
        beacon group's members (`group.members`) have partials."""
        self._group = group
        self._members = group.members
        self.message = message
        self._checked = checked
        self._partials: dict[str, BeaconPartial] = {}
        self.value: bytes | None = None

    def has(self, member: str) -> bool:
        return member in self._partials

    def add(self, p: BeaconPartial) -> bool:
        """Check and keep `p`; True when this made the value known. A partial that does not
        verify is a ThresholdError (the caller names its sender)."""
        if p.member in self._partials or self.value is not None:
            return False
        y = self._group.verification.get(p.member)
        if y is None:
            raise ThresholdError(f"{p.member} is not in the beacon group")
        if p not in self._checked:
            verify_partial(y, self.message, p.sigma, p.proof)
        self._partials[p.member] = p
        if len(self._partials) < self._group.threshold:
            return False
        self.value = beacon_value(self._combine(self.partials()))
        return True

    def checked(self) -> frozenset[BeaconPartial]:
        """Every partial this collector verified (and kept), exact bytes: what a voter hands
        `value_from_partials` for the record of this message."""
        return frozenset(self._partials.values())

    def partials(self) -> tuple[BeaconPartial, ...]:
        """Exactly `threshold` partials (the first by member id): what a record carries."""
        return tuple(sorted(self._partials.values(), key=lambda p: p.member))[
            : self._group.threshold
        ]

    def _combine(self, ps: Iterable[BeaconPartial]) -> bytes:
        return combine(
            {member_index(self._members, p.member): p.sigma for p in ps}, self._group.threshold
        )


def value_from_partials(
    group: GroupKey,
    message: bytes,
    partials: Sequence[BeaconPartial],
    checked: Collection[BeaconPartial] = (),
) -> bytes:
    """The beacon a record's partials prove: exactly `threshold` distinct members' partials, each
    verified (unless the caller already verified exactly that partial on `message`: `checked`).
    Raises ThresholdError naming what is wrong."""
    if len(partials) != group.threshold:
        raise ThresholdError(f"{len(partials)} beacon partials, expected {group.threshold}")
    if len({p.member for p in partials}) != len(partials):
        raise ThresholdError("a member's beacon partial appears twice")
    collector = BeaconCollector(group, message, checked)
    for p in partials:
        try:
            collector.add(p)
        except ThresholdError as exc:
            raise ThresholdError(f"beacon partial of {p.member}: {exc}") from exc
    assert collector.value is not None
    return collector.value


def partials_body(partials: Iterable[BeaconPartial]) -> list[dict[str, Any]]:
    return [p.to_body() for p in partials]


def partials_from_body(b: Any, limit: int) -> tuple[BeaconPartial, ...]:
    if not isinstance(b, list) or len(b) > limit:
        raise ThresholdError(f"a beacon section is a list of at most {limit} partials")
    return tuple(BeaconPartial.from_body(x) for x in b)

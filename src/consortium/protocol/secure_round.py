"""SecAgg+ inside a training round: the leader aggregates, learning only the weighted sum.

Each participant sends the vector [w·Δ ‖ w], where Δ is its model delta clipped to L2 norm C and
w = n_i / N its share of the samples announced at the start (so the sum carries its own total
weight W, and the new model is global + sum[:-1] / sum[-1] even when some participants drop out).
The leader runs `SecAggAggregator` and every participant (the leader included) a `SecAggClient`;
this module is the glue: round ids, parameters every node derives alike, the per-stage bookkeeping
of which messages are still expected, and the record fields an auditor needs to recompute the
model from the published transcript. Sans-I/O like the rest of `protocol`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.core.encoding import Domain, decode, signing_payload
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.genesis import Genesis, quorum_for
from consortium.ledger.entries import check_payload
from consortium.privacy.client_dp import ClientNoisePlan
from consortium.privacy.noise import add_to_words, node_noise_share
from consortium.protocol.beacon import attempt_beacon
from consortium.protocol.privacy_round import RoundPrivacy, client_scale
from consortium.protocol.randomness import Randomness
from consortium.protocol.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    NeighbourKeys,
    SecAggAggregator,
    SecAggClient,
    SecAggError,
    SecAggParams,
    ShareDelivery,
    Signer,
    SurvivorSet,
    SurvivorVote,
    Transcript,
    UnmaskRequest,
    UnmaskResponse,
    Verifier,
    dequantize,
    input_digest,
    parse_message,
    verify_aggregate,
)
from consortium.protocol.secagg.quantize import clip_l2, quantize
from consortium.protocol.secagg.sizing import sparse_degree_and_threshold

START = "start"


def secagg_round_id(run_id: str, round_no: int, attempt: int, beacon: bytes = b"") -> bytes:
    """Fresh per attempt, so keys and masks are never reused across attempts; with the round's
    beacon, unpredictable before the round (the sparse graph is ordered by it)."""
    seed = attempt_beacon(beacon, attempt) if beacon else b""
    name = f"consortium/secagg/{run_id}/{round_no}/{attempt}/".encode()
    return hashlib.sha256(name + seed).digest()


#: Complete graph up to this many participants; above it a sparse graph needs a stated (lower)
#: corrupt fraction (`Consortium.corrupt_fraction`, the run's `secagg_corrupt_fraction`).
MAX_COMPLETE_GRAPH = 300


def max_faulty(members: int) -> int:
    """f: the largest number of members below a third, the colluders the protocol tolerates."""
    return (members - 1) // 3


def contributor_floor(members: int, quorum: int, min_honest: int) -> int:
    """The fewest contributors a secure sum may have: a quorum must certify the survivor set,
    and it must hold `min_honest` honest inputs even if f of its members collude."""
    return max(quorum, max_faulty(members) + min_honest)


def min_contributors(min_updates: int, secure: bool, consortium: Consortium) -> int:
    """The fewest contributors a round's record may have: the run's minimum, and under SecAgg+
    also the floor sized for colluders (voters and `audit` use this one rule)."""
    return max(min_updates, consortium.floor) if secure else min_updates


@dataclass(frozen=True)
class Consortium:
    """What SecAgg+ parameters depend on beyond the participants: genesis's size and quorum,
    and the run's `min_honest`."""

    members: int
    quorum: int
    min_honest: int = 3
    #: A stated corrupt fraction below a third: SecAgg+ then uses a sparse graph sized for it.
    corrupt_fraction: float | None = None

    @property
    def f(self) -> int:
        return max_faulty(self.members)

    @property
    def floor(self) -> int:
        return contributor_floor(self.members, self.quorum, self.min_honest)

    @classmethod
    def sized(
        cls,
        members: int,
        quorum: int,
        min_honest: int,
        corrupt_fraction: float | None,
        committee: int = 0,
    ) -> Consortium:
        """The run's SecAgg+ sizing: among all `members` (genesis quorum), or with committees
        among the `committee` members of a round, with a committee's own two-thirds quorum and
        f = its largest minority below a third (docs/architecture.md, "Committees")."""
        if committee:
            return cls(committee, quorum_for(committee), min_honest, corrupt_fraction)
        return cls(members, quorum, min_honest, corrupt_fraction)


def make_params(
    round_id: bytes,
    participants: list[str],
    model_size: int,
    clip: float,
    consortium: Consortium,
    scale: float | None = None,
) -> SecAggParams:
    """Parameters every participant derives identically: d = model size + 1 weight word.

    Sized for colluders: the complete graph and threshold t = f + 1 (at least 2, so a curious
    leader alone never can), so the f colluders never hold enough shares of an honest member's
    secrets, while survivors (at least the floor, which is above t) can always rebuild a
    dropped member's. The L2 bound of [w·Δ ‖ w] with |Δ| <= C
    and w <= 1 is sqrt(C² + 1) <= C + 1. `scale` (client-level DP) leaves room for the noise."""
    n = len(participants)
    if consortium.corrupt_fraction is not None:
        # Sized for the stated fraction, tolerating the dropouts the floor allows.
        dropouts = max(0, n - consortium.floor) / n
        k, t = sparse_degree_and_threshold(n, consortium.corrupt_fraction, dropouts)
    elif n > MAX_COMPLETE_GRAPH:
        raise ConfigError(
            f"{n} participants: above {MAX_COMPLETE_GRAPH} SecAgg+ needs a sparse graph, sized "
            "for a stated corrupt fraction: set secagg_corrupt_fraction in the run config"
        )
    else:
        k, t = n - 1, min(max(max_faulty(consortium.members) + 1, 2), n)
    return SecAggParams.create(
        round_id,
        participants,
        model_size + 1,
        clip=clip + 1.0,
        scale=scale,
        k=k,
        threshold=t,
        quorum=min(consortium.quorum, n),
        min_survivors=min(consortium.floor, n),
    )


def round_params(
    run_id: str,
    round_no: int,
    beacon: bytes,
    attempt: int,
    participants: list[str],
    model_size: int,
    clip: float,
    privacy: RoundPrivacy | None,
    consortium: Consortium,
) -> SecAggParams:
    """The SecAgg+ parameters of one attempt, as every node (and the auditor) derives them: the
    clip and quantization scale follow client-level DP when the run uses it."""
    rid = secagg_round_id(run_id, round_no, attempt, beacon)
    if privacy is None or not privacy.config.client_level:
        return make_params(rid, participants, model_size, clip, consortium)
    scale = client_scale(privacy, len(participants), model_size, consortium.f)
    c = privacy.config.client_clip
    return make_params(rid, participants, model_size, c, consortium, scale=scale)


def params_body(p: SecAggParams) -> dict[str, Any]:
    return {
        "round_id": p.round_id,
        "participants": list(p.participants),
        "k": p.k,
        "threshold": p.threshold,
        "d": p.vector_length,
        "clip": p.clip,
        "scale": p.scale,
        "quorum": p.quorum,
        "min_survivors": p.min_survivors,
    }


def params_from_body(b: dict[str, Any]) -> SecAggParams:
    try:
        return SecAggParams(
            b["round_id"],
            tuple(b["participants"]),
            b["k"],
            b["threshold"],
            b["d"],
            b["clip"],
            b["scale"],
            quorum=b["quorum"],
            min_survivors=b["min_survivors"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConsortiumError(f"malformed secure-aggregation parameters: {exc}") from exc


def weighted_vector(
    delta: npt.NDArray[np.float32], clip: float, weight: float
) -> npt.NDArray[np.float64]:
    """[w·clip(Δ) ‖ w]: what a participant feeds into secure aggregation."""
    return np.concatenate([clip_l2(delta.astype(np.float64), clip) * weight, [weight]])


def mean_delta(words: npt.NDArray[np.uint32], scale: float) -> npt.NDArray[np.float64]:
    """The sample-weighted mean delta of the contributors, from the aggregate words."""
    total = dequantize(words, scale)
    if total[-1] <= 0:
        raise ConsortiumError("secure aggregate carries no weight")
    out: npt.NDArray[np.float64] = total[:-1] / total[-1]
    return out


def member_verifier(genesis: Genesis) -> Verifier:
    """Checks a member's signature on a SecAgg+ statement, bound to this consortium (what
    `RoundMachine` signs them with: `Domain.MESSAGE` and the genesis digest)."""
    keys = {m.node_id: m.public_key for m in genesis.members}
    digest = genesis.digest()

    def verify(node: str, statement: dict[str, Any], signature: bytes) -> bool:
        key = keys.get(node)
        if key is None:
            return False
        return check_payload(key, signing_payload(Domain.MESSAGE, statement, digest), signature)

    return verify


def recompute_mean_delta(
    params: SecAggParams, transcript_bytes: bytes, verify: Verifier
) -> tuple[npt.NDArray[np.float64], Transcript]:
    """Verify a published transcript and return the mean delta it implies (auditor and voters):
    signed commitments, the integer sum against them, revealed secrets against signed keys and
    commitments, then the masks removed locally (`verify_aggregate`)."""
    try:
        transcript = Transcript.from_body(decode(transcript_bytes))
        words = verify_aggregate(params, transcript, verify)
    except (SecAggError, ConsortiumError) as exc:
        raise ConsortiumError(f"secure-aggregation transcript does not verify: {exc}") from exc
    return mean_delta(words, params.scale), transcript


# -- leader side -------------------------------------------------------------------------------


_STAGES = ("keys", "shares", "inputs", "agree", "unmask")


@dataclass
class LeaderAggregation:
    """The aggregator plus which participants each stage still waits for."""

    params: SecAggParams
    started: float
    verify: Verifier
    #: Masked inputs the sum needs (client-level DP: the noise is sized for this many shares).
    min_inputs: int = 0
    agg: SecAggAggregator = field(init=False)
    stage: int = 0
    expected: set[str] = field(default_factory=set)
    received: set[str] = field(default_factory=set)
    stage_started: float = 0.0

    def __post_init__(self) -> None:
        self.agg = SecAggAggregator(self.params, self.verify)
        self.expected = set(self.params.participants)
        self.stage_started = self.started

    @property
    def stage_name(self) -> str:
        return _STAGES[self.stage] if self.stage < len(_STAGES) else "done"

    def receive(self, sender: str, body: dict[str, Any]) -> None:
        """Admit one client message; raises SecAggError naming the sender when it is refused."""
        msg = parse_message(body)
        if getattr(msg, "sender", None) != sender:
            raise SecAggError(f"message claims to be from {getattr(msg, 'sender', '?')}")
        self.agg.receive(msg)
        self.received.add(sender)

    def ready(self, now: float, phase_timeout: float) -> bool:
        return self.expected <= self.received or now >= self.stage_started + phase_timeout

    def advance(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Close the current stage; return (recipient, body) messages for the next one."""
        out: list[NeighbourKeys | ShareDelivery | SurvivorSet | UnmaskRequest]
        if self.stage == 0:
            out = list(self.agg.finish_keys())
        elif self.stage == 1:
            out = list(self.agg.finish_shares())
        elif self.stage == 2:
            out = list(self.agg.finish_inputs())
            if len(out) < self.min_inputs:  # never unmask a sum with too little noise in it
                raise SecAggError(
                    f"only {len(out)} masked inputs; the noise is sized for {self.min_inputs}"
                )
        elif self.stage == 3:
            out = list(self.agg.finish_agreement())
        else:
            self.agg.finish()
            self.stage = len(_STAGES)
            return []
        self.stage += 1
        self.expected = {m.recipient for m in out}
        self.received = set()
        self.stage_started = now
        return [(m.recipient, m.to_body()) for m in out]


# -- participant side --------------------------------------------------------------------------


class ParticipantAggregation:
    """This node's SecAgg+ client for one attempt, fed with the vector it contributes."""

    def __init__(
        self,
        params: SecAggParams,
        me: str,
        vector: npt.NDArray[np.float64],
        randomness: Randomness,
        signer: Signer,
        verify: Verifier,
        noise: ClientNoisePlan | None = None,
        words: npt.NDArray[np.uint32] | None = None,
    ) -> None:
        """`words`: quantized words made earlier in the round, sent again as they are (a later
        attempt recomputing the same sum must not release a differently rounded or noised one)."""
        self.client = SecAggClient(
            params, me, signer=signer, verify=verify, random_bytes=randomness.bytes
        )
        self._vector = vector
        self._noise = noise
        self._rng = randomness.numpy  # stochastic rounding and the DP noise share
        self.input_hash: bytes | None = None
        self.words = words

    def start(self) -> dict[str, Any]:
        return self.client.advertise_keys().to_body()

    def _quantize(self) -> npt.NDArray[np.uint32]:
        p = self.client.params
        words = quantize(self._vector, p.clip, p.scale, self._rng)
        if self._noise is not None:  # client-level DP: this node's share, on the grid
            plan = self._noise
            share = node_noise_share(
                p.vector_length - 1, plan.sigma_total, plan.n_expected, plan.max_dropouts, self._rng
            )
            words = add_to_words(words, share)
        return words

    def on(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Answer one message from the aggregator (None when nothing is owed)."""
        msg = parse_message(body)
        reply: AdvertiseKeys | EncryptedShares | MaskedInput | SurvivorVote | UnmaskResponse
        if isinstance(msg, NeighbourKeys):
            reply = self.client.receive_neighbour_keys(msg)
        elif isinstance(msg, ShareDelivery):
            self.client.receive_shares(msg)
            if self.words is None:
                self.words = self._quantize()
            reply = self.client.masked_input(self.words)
            self.input_hash = input_digest(reply.commitment)
        elif isinstance(msg, SurvivorSet):
            reply = self.client.receive_survivor_set(msg)
        elif isinstance(msg, UnmaskRequest):
            reply = self.client.receive_unmask_request(msg)
        else:
            raise SecAggError(f"a client does not accept {type(msg).__name__} messages")
        return reply.to_body()

"""One node's view of the training rounds of a run, as a sans-I/O state machine.

Theory of operation
-------------------
Round r starts on every node when round r-1 is committed (round 1 when the run starts). Each node
broadcasts its partial of the round's beacon (`protocol/beacon.py`: a threshold unique signature no
member can steer) and trains locally (the `Train` action; the node feeds the result back with
`on_trained`). Once t partials made the beacon, it sends its `Update` to the leader of the current
attempt, which `schedule.leader_for` derives from the beacon; messages that need the leader wait
until then (a proposal's record carries t partials, which also make it). The leader waits for every
member's update, or for `collect_timeout` with at least the run's minimum, aggregates (in
plaintext, or by SecAgg+ among the participants) and broadcasts a `Propose`: a signed "round"
ledger entry (a `RoundRecord`), the tree head the
ledger has once it is appended, and the new model. Each participant checks the proposal with
`verify_round_record`, the same function `audit` runs on stored records, and answers with a `Vote`,
its cosignature of that head, persisted (the `PersistVote` action) before it is sent. With a quorum
of cosignatures the head is final: the leader sends `Commit` and every node appends the entry.

Failover: when an attempt is not committed within `round_timeout`, every node moves to attempt a+1,
whose leader is the next member in the schedule's order, and re-sends its update there together
with a signed `VoteReport` of the head it has cosigned in this round (if any). Safety: an honest
node cosigns at most one head per ledger size, except that in a later attempt it may cosign
another one when the leader shows vote reports proving that no other head can still reach quorum
(for every other head H: reports for H + members without a report < quorum). So a leader that
split its proposal between two halves of the members costs one attempt, not the run; a leader
that died after collecting votes is covered too, since the next leader re-proposes a proposal
participants report having accepted.

Every transition is in `TRANSITIONS` (phase x event -> phases the handler may move to). An event
whose (phase, event) pair is not in the table is refused with a `Note` naming the sender, never
dropped silently; a handler that tried an unlisted transition would be a bug and raises.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from multiformats import CID

from consortium.consent.commitments import RoundCommitment
from consortium.core.encoding import Domain, encode, signing_payload
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity, is_valid_signature, valid_signatures
from consortium.core.threshold import SecretShare, ThresholdError
from consortium.ledger.entries import Entry, check_payload, make_record
from consortium.ledger.frontier import Frontier
from consortium.ledger.heads import TreeHead
from consortium.privacy.client_dp import ClientNoisePlan
from consortium.protocol.beacon import (
    BeaconCollector,
    BeaconPartial,
    attempt_beacon,
    beacon_message,
    make_partial,
)
from consortium.protocol.messages import (
    BeaconShare,
    Commit,
    Message,
    Proposal,
    Propose,
    SecAgg,
    StartRun,
    StorageAnswers,
    Update,
    Vote,
    VoteReport,
)
from consortium.protocol.privacy_round import (
    RecordParams,
    RoundPrivacy,
    client_plan,
    reported_params,
)
from consortium.protocol.randomness import Randomness
from consortium.protocol.record import (
    Erasure,
    Evaluation,
    RecordFormatError,
    RoundRecord,
    SecAggSection,
    StorageSection,
    TestDataCommitment,
)
from consortium.protocol.schedule import leader_for
from consortium.protocol.secagg import SecAggError, SecAggParams, SurvivorSet
from consortium.protocol.secure_round import (
    START,
    Consortium,
    LeaderAggregation,
    ParticipantAggregation,
    max_faulty,
    params_body,
    recompute_mean_delta,
    round_params,
    weighted_vector,
)
from consortium.protocol.secure_round import min_contributors as rule_min_contributors
from consortium.protocol.storage import (
    CHALLENGE_ARTIFACTS,
    AnswerScope,
    Challenged,
    HolderAnswer,
    StorageState,
    answer_challenge,
    artifact_name,
    check_answer,
    check_answer_signature,
    commit_artifact,
    is_challenge_round,
    sign_answer,
)
from consortium.protocol.verifier import (
    PUBLISHED_METRICS,
    OwnContribution,
    ProofState,
    RecordContext,
    StorageRules,
    check_proof_artifacts,
    round_committee,
    verify_evaluation,
    verify_round_record,
)
from consortium.store.cid import cid_key

#: Aggregates (node id, sample count, update bytes) into the new model's bytes. Pure compute.
Aggregator = Callable[[Sequence[tuple[str, int, bytes]]], bytes]
#: The CID the store will give these bytes (computed without storing them).
CidOf = Callable[[bytes], CID]
#: The bytes of an artifact (printed CID) this node's store holds intact, or None: the prover of
#: retrievability challenges reads its own copy through it.
ReadArtifact = Callable[[str], bytes | None]


class Phase(enum.Enum):
    TRAINING = "training"  # training locally (or sitting the round out)
    COLLECTING = "collecting"  # leader: trained, collecting updates
    SECURE = "secure-aggregation"  # leader: running SecAgg+ among the participants
    VOTING = "voting"  # leader: proposal broadcast, collecting cosignatures
    AWAITING = "awaiting"  # participant: update sent, waiting for the leader
    DONE = "done"  # round committed here, or this node stopped


class Event(enum.Enum):
    BEGIN = "begin"
    TRAINED = "trained"
    UPDATE = "update"
    SECAGG = "secagg"
    PROPOSE = "propose"
    VOTE = "vote"
    COMMIT = "commit"
    TICK = "tick"
    TIMEOUT = "timeout"
    BEACON = "beacon"
    STORAGE = "storage"


P = Phase
_LEAD = frozenset({P.COLLECTING, P.SECURE, P.VOTING, P.DONE})  # where a leader's progress goes
_SWITCH = frozenset({P.COLLECTING, P.AWAITING})  # a new attempt: lead it, or send it the update

#: phase x event -> the phases its handler may move to. Pairs not listed are refused.
TRANSITIONS: dict[tuple[Phase, Event], frozenset[Phase]] = {
    **{(p, Event.BEGIN): frozenset({P.TRAINING, P.DONE}) for p in Phase},
    **{(p, Event.COMMIT): frozenset({P.DONE}) for p in Phase if p is not P.DONE},
    **{(p, Event.TIMEOUT): _SWITCH | {P.TRAINING} for p in Phase if p is not P.DONE},
    **{(p, Event.BEACON): frozenset({p}) for p in Phase},
    # Storage answers are kept in any phase (the leader lists them when it builds its record);
    # collecting, the last one in may complete the wait.
    **{(p, Event.STORAGE): frozenset({p}) for p in Phase},
    (P.COLLECTING, Event.STORAGE): _LEAD,
    # The beacon completed after training: lead the attempt, or send it the update.
    (P.TRAINING, Event.BEACON): _LEAD | {P.AWAITING, P.TRAINING},
    (P.TRAINING, Event.TRAINED): _LEAD | {P.AWAITING},
    (P.TRAINING, Event.UPDATE): _LEAD | {P.TRAINING},
    (P.TRAINING, Event.PROPOSE): frozenset({P.TRAINING}),
    (P.TRAINING, Event.TICK): frozenset({P.TRAINING}),
    (P.COLLECTING, Event.UPDATE): _LEAD | _SWITCH,
    (P.COLLECTING, Event.TICK): _LEAD,
    (P.SECURE, Event.UPDATE): _LEAD | _SWITCH,
    (P.SECURE, Event.SECAGG): _LEAD,
    (P.SECURE, Event.TICK): _LEAD,
    (P.VOTING, Event.UPDATE): _LEAD | _SWITCH,
    (P.VOTING, Event.VOTE): frozenset({P.VOTING, P.DONE}),
    (P.VOTING, Event.TICK): frozenset({P.VOTING}),
    (P.AWAITING, Event.UPDATE): _LEAD | _SWITCH,
    (P.AWAITING, Event.SECAGG): frozenset({P.AWAITING}),
    (P.AWAITING, Event.PROPOSE): frozenset({P.AWAITING}),
    (P.AWAITING, Event.TICK): frozenset({P.AWAITING}),
    (P.DONE, Event.UPDATE): frozenset({P.DONE}),  # next round's update, held back
    (P.DONE, Event.TICK): frozenset({P.DONE}),
}

_MESSAGE_EVENTS: dict[type, Event] = {
    Update: Event.UPDATE,
    SecAgg: Event.SECAGG,
    Propose: Event.PROPOSE,
    Vote: Event.VOTE,
    Commit: Event.COMMIT,
    BeaconShare: Event.BEACON,
    StorageAnswers: Event.STORAGE,
}
#: Messages of the current round held until the beacon is known, at most this many per sender.
_HELD_PER_SENDER = 8


# -- actions the node must carry out --------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True)
class Broadcast:
    message: Message


@dataclass(frozen=True)
class Train:
    round: int


@dataclass(frozen=True)
class PersistVote:
    """Record durably that this node cosigned `root` at ledger `size` in `attempt`, before the
    vote that follows is sent: after a restart the node must still know what it signed."""

    size: int
    root: bytes
    attempt: int
    author: str = ""
    record_attempt: int = -1


@dataclass(frozen=True)
class PersistSurvivorSet:
    """Record durably that this node signed `survivors` in `attempt` of the round at ledger
    `slot` (unique across runs), before the signature is sent: it signs one set per attempt
    and, for the rest of the round, only that set (restarts included), so its update enters at
    most one distinct sum per round."""

    slot: int
    attempt: int
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class Committed:
    """A round is final here. The machine verified `entry`'s signature (or signed it itself) and
    every one of `cosignatures` on the proposal's tree head, so the node appends them to its
    ledger without verifying the same bytes again."""

    round: int
    proposal: Proposal
    entry: Entry
    cosignatures: dict[str, bytes]


@dataclass(frozen=True)
class Note:
    text: str
    #: "warning" for refusals and failures; "info" for expected late or stale arrivals.
    level: str = "warning"


@dataclass(frozen=True)
class Stopped:
    """This node must not train any more in this run (its privacy budget), for `reason`."""

    reason: str


@dataclass(frozen=True)
class PersistRelease:
    """Record durably that this node's update of the round at ledger `slot` may now be seen
    (sent in the clear, or its survivor set signed, so its sum may be unmasked), with the privacy
    spend the round's record would charge this node (`privacy` body). If no round record with
    this node in it ever takes `slot` (a leader withheld it, the run stopped), the ledger never
    charges it, and the node counts it itself (`RoundPrivacy.unrecorded`)."""

    slot: int
    round: int
    privacy: Mapping[str, Any]


Action = (
    Send
    | Broadcast
    | Train
    | PersistVote
    | PersistSurvivorSet
    | PersistRelease
    | Committed
    | Note
    | Stopped
)


@dataclass(frozen=True)
class RoundSettings:
    run_id: str
    config: dict[str, Any]
    min_updates: int = 1
    collect_timeout: float = 10.0
    round_timeout: float = 30.0
    #: SecAgg+ (the leader learns only the weighted sum) instead of plaintext FedAvg.
    secure: bool = False
    #: L2 bound on each participant's model delta under secure aggregation.
    clip: float = 10.0
    #: Members holding each artifact (0: every member) and the challenge period (0: none);
    #: either set: records carry a storage section (docs/architecture.md, "Replication").
    replicas: int = 0
    challenge_every: int = 0
    #: Artifacts a challenge round challenges at most, drawn from its beacon.
    challenge_artifacts: int = CHALLENGE_ARTIFACTS
    #: Number of model parameters (the secure vector has one more word: the weight).
    model_size: int = 0
    #: Honest inputs every secure sum must hold even if f members collude.
    min_honest: int = 3
    #: A stated corrupt fraction: SecAgg+ uses a sparse graph sized for it (None: complete).
    corrupt_fraction: float | None = None
    #: Seconds after beginning a round without its beacon before asking members for partials
    #: (a node that restarted mid-round missed them), and again after as long each time.
    beacon_ask_after: float = 2.0
    #: K: each round's contributors (and leaders) are a committee of K members drawn from its
    #: beacon (0: every member). Every member still checks and cosigns.
    committee: int = 0

    @property
    def storage(self) -> bool:
        """Whether records carry a storage section (replication or challenges configured)."""
        return bool(self.replicas or self.challenge_every)


class SecureOps(Protocol):
    """Pure model arithmetic the machine needs under secure aggregation (given by the node)."""

    def delta(self, global_model: bytes, local_model: bytes) -> npt.NDArray[np.float32]: ...

    def apply(self, global_model: bytes, delta: npt.NDArray[np.float64]) -> bytes: ...


@dataclass(frozen=True)
class CastVote:
    """A persisted vote: the root this node cosigned at a ledger size, in which attempt, and the
    entry's author and record attempt (two different entries of one author for one attempt prove
    that author dishonest)."""

    root: bytes
    attempt: int
    author: str = ""
    record_attempt: int = -1


@dataclass
class _LocalResult:
    num_samples: int
    update: bytes
    metrics: dict[str, Any]
    consent: RoundCommitment | None = None
    erasures: tuple[Erasure, ...] = ()
    #: Proofs of evaluation (issue 18): this node's test-data commitment and finished proofs
    #: (with their artifacts) not yet on the ledger; they go to the leader with the update.
    testdata: TestDataCommitment | None = None
    evaluations: tuple[tuple[Evaluation, bytes], ...] = ()


@dataclass
class _State:
    round: int = 0
    attempt: int = 0
    phase: Phase = Phase.DONE
    frontier: Frontier = field(default_factory=Frontier.empty)
    attempt_started: float = 0.0
    local: _LocalResult | None = None
    updates: dict[str, Update] = field(default_factory=dict)
    proposal: Proposal | None = None
    reports: dict[str, VoteReport] = field(default_factory=dict)  # this attempt's, as leader
    votes: dict[str, bytes] = field(default_factory=dict)
    accepted: Proposal | None = None
    #: The last proposal this round that passed every voter's check (`_check_proposal` with
    #: voting=True) and its entry: a commit of exactly these bytes need not be checked again.
    checked: tuple[Proposal, Entry] | None = None
    early: dict[str, Update] = field(default_factory=dict)  # next round's updates, held back
    early_beacon: dict[str, BeaconShare] = field(default_factory=dict)  # next round's partials
    beacon: BeaconCollector | None = None  # this round's partials, until they make the beacon
    beacon_asked: float = 0.0  # when this node last asked for partials
    held: list[tuple[str, Message]] = field(default_factory=list)  # waiting for the beacon
    answered: set[str] = field(default_factory=set)  # members this node sent its partial on ask
    released: bool = False  # PersistRelease done this round
    model: bytes = b""  # the global model this round starts from
    leading: LeaderAggregation | None = None  # secure aggregation, as this attempt's leader
    client: ParticipantAggregation | None = None  # secure aggregation, as a participant
    secagg_samples: dict[str, int] = field(default_factory=dict)
    privacy: RoundPrivacy | None = None  # this round's differential-privacy state
    #: attempt -> commitment to what this node sent that attempt's leader (the verifier's
    #: "own update missing / misstated" rules).
    sent: dict[int, bytes] = field(default_factory=dict)
    #: This node's quantized (and noised) SecAgg+ words of the round, once made: a later attempt
    #: bound to the same survivor set sends exactly these, so it releases the same sum.
    words: npt.NDArray[np.uint32] | None = None
    #: What the run's earlier records committed (replication with retrievability challenges).
    storage: StorageState = field(default_factory=StorageState)
    #: attempt -> this round's challenges in that attempt (derived from its beacon, cached).
    challenges: dict[int, list[Challenged]] = field(default_factory=dict)
    #: As leader: attempt -> (artifact, holder) -> valid answer received; who sent answers.
    answers: dict[int, dict[tuple[str, str], HolderAnswer]] = field(default_factory=dict)
    answered_by: dict[int, set[str]] = field(default_factory=dict)
    #: attempt -> the challenges this node answered with valid proofs (own-answer-missing).
    proved: dict[int, frozenset[tuple[str, str]]] = field(default_factory=dict)
    #: The run's proofs of evaluation as the ledger stood when the round began (None: off).
    proofs: ProofState | None = None
    #: Who may contribute to and lead this round (its committee, or every member), once the
    #: beacon is known.
    committee: tuple[str, ...] = ()


class RoundMachine:
    def __init__(
        self,
        identity: NodeIdentity,
        genesis: Genesis,
        settings: RoundSettings,
        aggregate: Aggregator,
        cid_of: CidOf,
        secure_ops: SecureOps | None = None,
        *,
        randomness: Randomness | None = None,
        votes: Mapping[int, CastVote] | None = None,
        signed_sets: Mapping[tuple[int, int], tuple[str, ...]] | None = None,
        read_artifact: ReadArtifact | None = None,
    ) -> None:
        """`randomness`: secret bytes and a NumPy generator (tests pass a seeded one);
        `votes`: what this node has cosigned before (ledger size -> vote), `signed_sets`: the
        survivor set it signed per (ledger slot, attempt); both from its own disk;
        `read_artifact`: this node's own copy of an artifact, to answer storage challenges."""
        if settings.secure and secure_ops is None:
            raise ConsortiumError("secure aggregation needs the node's model operations")
        self.me = identity.node_id
        self._identity = identity
        self.genesis = genesis
        self.settings = settings
        self._aggregate = aggregate
        self._cid_of = cid_of
        self._ops = secure_ops
        self._read_artifact = read_artifact
        self._random = randomness if randomness is not None else Randomness.from_os()
        self.members = sorted(m.node_id for m in genesis.members)
        self._keys = {m.node_id: m.public_key for m in genesis.members}
        self._digest = genesis.digest()  # every signature here is bound to this consortium
        self._statement: tuple[object, bytes] = (None, b"")
        self._voted: dict[int, CastVote] = dict(votes or {})
        self._signed_sets: dict[tuple[int, int], tuple[str, ...]] = dict(signed_sets or {})
        self._secagg = Consortium.sized(
            len(self.members),
            genesis.quorum,
            settings.min_honest,
            settings.corrupt_fraction,
            settings.committee,
        )
        self._faulty = max_faulty(len(self.members))  # colluders among the cosigners
        self.s = _State()
        self._from = Phase.DONE  # the phase the event being handled started in
        self._share: SecretShare | None = None  # this node's beacon key share, derived once
        self._partial: tuple[bytes, BeaconPartial] | None = None  # (message, this node's)
        self._in_beacon_group = genesis.in_beacon_group(self.me)

    # -- queries -------------------------------------------------------------------------------

    @property
    def round(self) -> int:
        return self.s.round

    @property
    def phase(self) -> Phase:
        return self.s.phase

    @property
    def attempt(self) -> int:
        return self.s.attempt

    @property
    def beacon(self) -> bytes | None:
        """This round's beacon, once t partials made it."""
        return self.s.beacon.value if self.s.beacon is not None else None

    def leader(self, attempt: int | None = None) -> str:
        a = self.s.attempt if attempt is None else attempt
        value = self.beacon
        if value is None:
            raise ConsortiumError(f"round {self.s.round}: the beacon is not known yet")
        return leader_for(value, self.s.round, a, self.committee())

    def committee(self) -> tuple[str, ...]:
        """This round's committee (every member without committees): who contributes and
        leads, drawn from the beacon alone, fixed over the round's attempts."""
        s = self.s
        if not s.committee:
            value = self.beacon
            if value is None:
                raise ConsortiumError(f"round {s.round}: the beacon is not known yet")
            s.committee = tuple(round_committee(value, self.members, self.settings.committee))
        return s.committee

    def note_vote(self, size: int, root: bytes, author: str) -> None:
        """This node cosigned `root` at `size` outside a round (an agreed run-stop): never
        cosign another head of that size here either."""
        self._voted[size] = CastVote(root, self.s.attempt, author, -1)

    def _goto(self, event: Event, phase: Phase) -> None:
        """Move to `phase`, which the table must allow for `event` from the phase the event
        found the machine in (one event may pass through several phases on the way)."""
        allowed = TRANSITIONS.get((self._from, event), frozenset())
        if phase not in allowed:
            raise AssertionError(f"bug: {self._from.value} --{event.value}--> {phase.value}")
        self.s.phase = phase

    # -- events ---------------------------------------------------------------------------------

    def begin(
        self,
        round_no: int,
        frontier: Frontier,
        now: float,
        model: bytes = b"",
        privacy: RoundPrivacy | None = None,
        my_dp: RecordParams | None = None,
        ask: bool = False,
        storage: StorageState | None = None,
        proofs: ProofState | None = None,
    ) -> list[Action]:
        """Start round `round_no` from global `model` on a ledger whose right edge is `frontier`;
        with `privacy`, first check this node's next spend (`my_dp`: its DP-SGD parameters).
        `ask`: this node is late (restarted, caught up): members answer with their partials.
        `storage`: what the run's earlier records committed (runs with replication)."""
        early = {k: u for k, u in self.s.early.items() if u.round == round_no}
        early_beacon = {k: b for k, b in self.s.early_beacon.items() if b.round == round_no}
        self._from = self.s.phase
        self.s = _State(
            round=round_no,
            phase=Phase.TRAINING,
            frontier=frontier,
            attempt_started=now,
            model=model,
            privacy=privacy,
            storage=storage or StorageState(),
            proofs=proofs,
        )
        if privacy is not None:
            reason = privacy.stop_reason(round_no, self.me, my_dp)
            if reason is not None:
                self._goto(Event.BEGIN, Phase.DONE)
                return [Stopped(reason)]
        # With committees, only the committee trains: known once the beacon is.
        train = [] if self.settings.committee else [Train(round_no)]
        actions: list[Action] = [*train, *self._begin_beacon(now, ask)]
        for sender, share in early_beacon.items():
            actions += self.on_message(sender, share, now)
        for sender, upd in early.items():
            actions += self.on_message(sender, upd, now)
        return actions

    # -- the beacon -----------------------------------------------------------------------------

    def _my_partial(self) -> BeaconPartial | None:
        """This node's partial of the round's beacon (made once per message: members ask for
        it); None outside the beacon group."""
        s = self.s
        assert s.beacon is not None
        if not self._in_beacon_group:
            return None
        if self._partial is not None and self._partial[0] == s.beacon.message:
            return self._partial[1]
        if self._share is None:
            self._share = self.genesis.secret_share(self._identity)
        mine = make_partial(self._share, s.beacon.message)
        self._partial = (s.beacon.message, mine)
        return mine

    def _bare_ask(self) -> list[Action]:
        """Outside the beacon group: ask the group's members (only they have partials)."""
        ask = self._share_message(None)
        return [Send(m, ask) for m in self.genesis.beacon_ids() if m != self.me]

    def _share_message(self, mine: BeaconPartial | None, ask: bool = False) -> BeaconShare:
        """This node's partial, or (outside the beacon group) a bare request for partials."""
        if mine is None:
            return BeaconShare(self.settings.run_id, self.s.round, b"", b"", True)
        return BeaconShare(self.settings.run_id, self.s.round, mine.sigma, mine.proof, ask)

    def _begin_beacon(self, now: float, ask: bool) -> list[Action]:
        """Start collecting this round's partials with this node's own; broadcast it."""
        s = self.s
        message = beacon_message(self._digest, self.settings.run_id, s.round)
        s.beacon = BeaconCollector(self.genesis.group_key(), message)
        s.beacon_asked = now
        mine = self._my_partial()
        if mine is None:  # outside the beacon group: the group's partials will come
            return self._bare_ask() if ask else []
        s.beacon.add(mine)
        share = self._share_message(mine, ask)
        actions: list[Action] = [Broadcast(share)]
        if s.beacon.value is not None:  # a threshold of one (fewer than four members)
            actions += self._beacon_known(now)
        return actions

    def _on_beacon(self, sender: str, msg: BeaconShare, now: float) -> list[Action]:
        s = self.s
        assert s.beacon is not None
        actions: list[Action] = []
        first_ask = msg.ask and sender != self.me and sender not in s.answered
        if first_ask:
            s.answered.add(sender)  # answered once per member and round: no ping-pong
            mine = self._my_partial()
            if mine is not None:  # outside the beacon group there is nothing to answer with
                actions.append(Send(sender, self._share_message(mine)))
        if not msg.sigma:  # a bare request, from outside the beacon group
            made = False
        else:
            try:
                made = s.beacon.add(BeaconPartial(sender, msg.sigma, msg.proof))
            except ThresholdError as exc:
                raise ConsortiumError(f"invalid beacon partial: {exc}") from exc
        if made:
            actions += self._beacon_known(now)
        elif (
            first_ask
            and s.phase is Phase.AWAITING
            and self.beacon is not None
            and self.leader() == sender
        ):
            # This attempt's leader asks: it restarted and lost the updates it had collected.
            # Send it ours again (once per round: `answered`), so it need not cost an attempt.
            actions.append(Send(sender, self._my_update()))
        return actions

    def _beacon_known(self, now: float) -> list[Action]:
        """The leader order is known: go on with what waited for it."""
        s = self.s
        s.attempt_started = now  # attempt 0's deadline counts from when its leader is known
        actions: list[Action] = self._answer_challenges()
        if self.settings.committee and self.me in self.committee() and s.phase is Phase.TRAINING:
            actions.append(Train(s.round))  # once: the beacon is made once per round
        if s.phase is Phase.TRAINING and s.local is not None:
            actions += self._after_training(Event.BEACON, now)
        held, s.held = s.held, []
        for sender, msg in held:
            actions += self.on_message(sender, msg, now)
        return actions

    def _hold(self, sender: str, msg: Message, now: float) -> list[Action]:
        """A message that needs the leader before the beacon is known: keep it (a bounded number
        per sender); a proposal's or commit's record carries partials that may make the beacon."""
        s = self.s
        assert s.beacon is not None
        if isinstance(msg, Propose | Commit):
            for p in _record_partials(msg.proposal):
                try:
                    if s.beacon.add(p):
                        return self._beacon_known(now) + self.on_message(sender, msg, now)
                except ThresholdError:
                    continue  # a bad partial is the verifier's to name, with the record
        if sum(1 for k, _ in s.held if k == sender) >= _HELD_PER_SENDER:
            return [Note(f"dropped a message from {self._name(sender)}: too many held")]
        s.held.append((sender, msg))
        return []

    def on_trained(
        self,
        num_samples: int,
        update: bytes,
        metrics: dict[str, Any],
        now: float,
        consent: dict[str, Any] | None = None,
        erasures: list[Any] | None = None,
        testdata: TestDataCommitment | None = None,
        evaluations: Sequence[tuple[Evaluation, bytes]] = (),
    ) -> list[Action]:
        """Local training is done; `consent` commits to the records it used; `testdata` and
        `evaluations` (proofs with their artifacts) go to the leader with the update."""
        s = self.s
        if s.phase is not Phase.TRAINING:
            return [Note(f"round {s.round}: training finished in phase {s.phase.value}", "info")]
        self._from = s.phase
        s.local = _LocalResult(
            num_samples,
            update,
            metrics,
            None if consent is None else RoundCommitment.from_body(consent),
            tuple(Erasure.from_body(e) for e in erasures or []),
            testdata,
            tuple(evaluations),
        )
        if self.beacon is None:
            return []  # the update goes out once the beacon names the leader
        return self._after_training(Event.TRAINED, now)

    def _after_training(self, event: Event, now: float) -> list[Action]:
        """Trained and the leader known: lead the attempt, or send it the update."""
        s = self.s
        release = [] if self.settings.secure else self._release()
        if self.leader() == self.me:
            s.updates[self.me] = self._my_update()
            self._goto(event, Phase.COLLECTING)
            return [*release, *self._maybe_propose(event, now)]
        self._goto(event, Phase.AWAITING)
        return [*release, Send(self.leader(), self._my_update())]

    def _release(self) -> list[Action]:
        """`PersistRelease` once per round, before this node's update can first be seen."""
        s = self.s
        if s.released or s.privacy is None or s.local is None:
            return []
        s.released = True
        mine = reported_params(s.local.metrics)
        try:
            body = s.privacy.body(s.round, {self.me: mine} if mine is not None else {})
        except ConsortiumError:  # over budget: the leader will refuse to record it; count it
            return [Note(f"round {s.round}: releasing an update the budget would refuse")]
        return [PersistRelease(s.frontier.size, s.round, body)]

    def on_message(self, sender: str, msg: Message, now: float) -> list[Action]:
        """Handle a message from an authenticated member; refusals come back as Note actions."""
        if sender not in self._keys:
            return [Note(f"refused message from non-member {sender}")]
        name = type(msg).__name__.lower()
        if isinstance(msg, StartRun):
            return [Note(f"refused {name} from {self._name(sender)}: not a round message")]
        event = _MESSAGE_EVENTS[type(msg)]
        s = self.s
        if msg.run != self.settings.run_id:
            return [Note(f"refused {name} from {self._name(sender)}: for another run {msg.run!r}")]
        if msg.round != s.round:
            return self._other_round(sender, msg, name)
        if (s.phase, event) not in TRANSITIONS:
            return [
                Note(
                    f"refused {name} from {self._name(sender)}: round {s.round} is in phase "
                    f"{s.phase.value}",
                    "info" if s.phase is Phase.DONE else "warning",
                )
            ]
        self._from = s.phase
        try:
            if isinstance(msg, BeaconShare):
                return self._on_beacon(sender, msg, now)
            if self.beacon is None and s.beacon is not None:
                return self._hold(sender, msg, now)
            if isinstance(msg, Update):
                return self._on_update(sender, msg, now)
            if isinstance(msg, Propose):
                return self._on_propose(sender, msg)
            if isinstance(msg, Vote):
                return self._on_vote(sender, msg)
            if isinstance(msg, Commit):
                return self._on_commit(msg)
            if isinstance(msg, StorageAnswers):
                return self._on_storage(sender, msg, now)
            assert isinstance(msg, SecAgg)
            return self._on_secagg(sender, msg, now)
        except ConsortiumError as exc:
            return [Note(f"refused {name} from {self._name(sender)}: {exc}")]

    def _other_round(self, sender: str, msg: Message, name: str) -> list[Action]:
        s = self.s
        r = getattr(msg, "round", 0)
        if isinstance(msg, Update) and (r == s.round + 1):
            s.early[sender] = msg  # a faster node's next round: replayed when it begins
            return []
        if isinstance(msg, BeaconShare) and (r == s.round + 1):
            s.early_beacon[sender] = msg
            return []
        if isinstance(msg, Commit) and r > s.round:
            return [Note(f"commit for round {r} while at {s.round}: catch up needed", "info")]
        return [Note(f"ignored {name} from {self._name(sender)} for round {r}", "info")]

    def tick(self, now: float) -> list[Action]:
        s = self.s
        if s.phase is Phase.DONE:
            return []
        self._from = s.phase
        if self.beacon is None:
            return self._ask_beacon(now)
        if now >= s.attempt_started + self.settings.round_timeout:
            return self._next_attempt(now)
        if s.phase is Phase.COLLECTING:
            return self._maybe_propose(Event.TICK, now)
        if s.phase is Phase.SECURE:
            return self._secure_progress(Event.TICK, now)
        return []

    def _ask_beacon(self, now: float) -> list[Action]:
        """No failover without a leader order: ask the members for their partials now and then."""
        s = self.s
        if s.beacon is None or now < s.beacon_asked + self.settings.beacon_ask_after:
            return []
        s.beacon_asked = now
        mine = self._my_partial()
        if mine is None:
            return self._bare_ask()
        return [Broadcast(self._share_message(mine, ask=True))]

    # -- handlers -------------------------------------------------------------------------------

    def _on_update(self, sender: str, msg: Update, now: float) -> list[Action]:
        s = self.s
        if s.phase is Phase.DONE:
            return [Note(f"late update from {self._name(sender)}: round already done", "info")]
        if self.leader(msg.attempt) != self.me:
            raise ConsortiumError(
                f"update for attempt {msg.attempt}, which this node does not lead"
            )
        if msg.attempt < s.attempt:
            return [Note(f"stale update from {self._name(sender)} (attempt {msg.attempt})", "info")]
        if sender not in self.committee():
            raise ConsortiumError(
                f"an update from outside round {s.round}'s committee "
                "[rule participants-not-committee]"
            )
        self._check_update(sender, msg)
        actions: list[Action] = []
        if msg.attempt > s.attempt:  # the sender timed out before us: follow it
            actions += self._switch_attempt(Event.UPDATE, msg.attempt, now)
        if s.phase is Phase.VOTING and s.proposal is not None and sender not in s.votes:
            # A participant that was behind: it may vote now (its update came too late to count).
            prop = Propose(
                self.settings.run_id, s.round, s.attempt, s.proposal, tuple(s.reports.values())
            )
            return [*actions, Send(sender, prop)]
        if s.phase in (Phase.SECURE, Phase.VOTING):
            return [*actions, Note(f"late update from {self._name(sender)}", "info")]
        s.updates[sender] = msg
        if msg.report is not None:
            s.reports[sender] = msg.report
        if s.phase in (Phase.COLLECTING, Phase.TRAINING, Phase.AWAITING):
            actions += self._maybe_propose(Event.UPDATE, now)
        return actions

    def _check_update(self, sender: str, msg: Update) -> None:
        """An update's own fields, before it counts: consent, erasures, the signed vote report."""
        try:
            if msg.consent is not None:
                RoundCommitment.from_body(msg.consent)
            for e in msg.erasures:
                Erasure.from_body(e)
        except ConsortiumError as exc:
            raise ConsortiumError(f"malformed update: {exc}") from exc
        self._check_update_proofs(sender, msg)
        r = msg.report
        if r is not None:
            if (r.run, r.round, r.attempt, r.node) != (msg.run, msg.round, msg.attempt, sender):
                raise ConsortiumError("vote report is not the sender's, for this attempt")
            body = r.signed_body()
            if not is_valid_signature(
                self._keys[sender], Domain.ROUND, body, r.signature, self._digest
            ):
                raise ConsortiumError("vote report signature does not verify")

    def _check_update_proofs(self, sender: str, msg: Update) -> None:
        """The test-data commitment and proofs of evaluation an update carries: the leader
        checks them as voters will before it lists them (one bad proof would otherwise cost the
        whole attempt); an update with one that fails is refused, naming the rule."""
        s = self.s
        if msg.testdata is None and not msg.evaluations:
            return
        ps = s.proofs
        if ps is None:
            raise ConsortiumError("an update with proofs of evaluation in a run without them")
        try:
            if msg.testdata is not None:
                c = TestDataCommitment.from_body(msg.testdata)
                if sender in ps.committed or (c.settings, c.srs) != (ps.settings, ps.srs):
                    raise ConsortiumError(
                        "a test-data commitment made twice, or under other settings or SRS "
                        "than the run's [rule testdata-invalid]"
                    )
            rounds: set[int] = set()
            for item in msg.evaluations:
                ev = Evaluation.from_body(item["evaluation"])
                if ev.node != sender or ev.round in rounds:
                    raise ConsortiumError("a proof of evaluation of another node, or twice")
                rounds.add(ev.round)
                artifact = item["artifact"]
                verify_evaluation(
                    ev,
                    round_no=s.round,
                    proofs=ps,
                    genesis=self.genesis,
                    artifact=artifact,
                    cid_of=self._cid_of,
                )
        except RecordFormatError as exc:
            raise ConsortiumError(f"malformed update: {exc}") from exc

    def _maybe_propose(self, event: Event, now: float) -> list[Action]:
        s = self.s
        if s.local is None or self.leader() != self.me or s.proposal is not None:
            return []
        if s.phase is not Phase.COLLECTING:
            self._goto(event, Phase.COLLECTING)
        everyone = len(s.updates) == len(self.committee()) and self._answers_in()
        waited = now >= s.attempt_started + self.settings.collect_timeout
        bound = self._reported_bound(waited) if self.settings.secure else None
        if bound is not None:
            if not set(bound) <= set(s.updates):  # that set alone: wait for all of it
                return []
        elif len(s.updates) < self.min_contributors or not (everyone or waited):
            return []
        accepted = [p for p in self._reported_proposals() if self._is_valid_proposal(p)]
        if accepted:
            proposal = accepted[0]
            note = [Note(f"round {s.round}: re-proposing the entry a previous leader had proposed")]
        elif self.settings.secure:
            return self._start_secure(event, now)
        else:
            proposal = self._build_proposal(now)
            note = []
        return [*note, *self._propose(event, proposal)]

    def _propose(self, event: Event, proposal: Proposal) -> list[Action]:
        s = self.s
        s.proposal = proposal
        self._goto(event, Phase.VOTING)
        s.votes = {}
        reports = tuple(s.reports[k] for k in sorted(s.reports))
        msg = Propose(self.settings.run_id, s.round, s.attempt, proposal, reports)
        return [Broadcast(msg), *self._vote_for(proposal, self.me, reports, event)]

    def _reported_bound(self, waited: bool) -> tuple[str, ...] | None:
        """The set to start over when participants report being bound (see `_bound_set`): the
        smallest reported set; once the collect deadline passed, less leaders of earlier
        attempts whose updates did not come (a crashed leader; members check they may drop it).
        None when no one is bound."""
        s = self.s
        sets = sorted({u.bound for u in s.updates.values() if u.bound}, key=lambda b: (len(b), b))
        if not sets:
            return None
        if not waited:
            return sets[0]
        earlier_leaders = {self.leader(a) for a in range(s.attempt)}
        return tuple(p for p in sets[0] if p in s.updates or p not in earlier_leaders)

    def _reported_proposals(self) -> list[Proposal]:
        """Proposals that participants say they already cosigned, in a deterministic order."""
        found = {u.accepted.root: u.accepted for u in self.s.updates.values() if u.accepted}
        return [found[k] for k in sorted(found)]

    def _is_valid_proposal(self, p: Proposal) -> bool:
        try:
            self._check_proposal(p)
        except ConsortiumError:
            return False
        return True

    def _build_proposal(self, now: float) -> Proposal:
        s = self.s
        ups = sorted(s.updates.items())
        model = self._aggregate([(nid, u.num_samples, u.update) for nid, u in ups])
        parts = tuple(nid for nid, _ in ups)
        record = self._record(
            parts,
            samples={nid: u.num_samples for nid, u in ups},
            updates={nid: hashlib.sha256(u.update).digest() for nid, u in ups},
            model=model,
            secagg=None,
        )
        return self._sign_proposal(record, model, b"", now)

    def _record(
        self,
        parts: tuple[str, ...],
        samples: dict[str, int],
        updates: dict[str, bytes],
        model: bytes,
        secagg: SecAggSection | None,
        transcript: bytes = b"",
    ) -> RoundRecord:
        """The record of this attempt over contributors `parts` (all of whose updates arrived)."""
        s = self.s
        ups = {u: s.updates[u] for u in parts}
        privacy = None
        if s.privacy is not None:
            reported = {u: reported_params(up.metrics) for u, up in ups.items()}
            record = {u: r for u, r in reported.items() if r is not None}
            if s.privacy.config.record_level and len(record) != len(ups):
                raise ConsortiumError("a participant did not report its DP-SGD parameters")
            privacy = s.privacy.body(s.round, record)
        return RoundRecord(
            run=self.settings.run_id,
            round=s.round,
            attempt=s.attempt,
            leader=self.me,
            slot=s.frontier.size,  # the ledger index this record takes: unique across runs
            participants=parts,
            dropouts=tuple(m for m in self.committee() if m not in parts),
            samples=samples,
            updates=updates,
            metrics={u: up.metrics for u, up in ups.items()},
            model=self._cid_of(model),
            prev_model=self._cid_of(s.model),
            aggregation="secagg+" if secagg is not None else "fedavg",
            consent={
                u: RoundCommitment.from_body(up.consent)
                for u, up in ups.items()
                if up.consent is not None
            },
            erasures={
                u: tuple(Erasure.from_body(e) for e in up.erasures)
                for u, up in ups.items()
                if up.erasures
            },
            secagg=secagg,
            privacy=privacy,
            beacon=s.beacon.partials() if s.beacon is not None else (),
            storage=self._storage_section(model, secagg, transcript),
            testdata={
                u: TestDataCommitment.from_body(up.testdata)
                for u, up in ups.items()
                if up.testdata is not None and s.proofs is not None
            },
            evaluations=tuple(
                sorted(
                    (
                        Evaluation.from_body(e["evaluation"])
                        for up in ups.values()
                        for e in up.evaluations
                    ),
                    key=lambda e: (e.node, e.round),
                )
            )
            if s.proofs is not None
            else (),
            committee=self.settings.committee,
        )

    def _sign_proposal(
        self, record: RoundRecord, model: bytes, transcript: bytes, now: float
    ) -> Proposal:
        s = self.s
        ms = int(now * 1000)
        entry = make_record(self._identity, "round", record.to_body(), ms, self.genesis)
        data = entry.to_bytes()
        root = s.frontier.append(data).root()
        held = {
            cid_key(Evaluation.from_body(e["evaluation"]).proof): e["artifact"]
            for up in s.updates.values()
            for e in up.evaluations
        }
        proofs = tuple(held[cid_key(e.proof)] for e in record.evaluations)
        return Proposal(data, s.frontier.size + 1, root, ms, model, transcript, proofs)

    def _context(self, author: str, p: Proposal, *, voting: bool) -> RecordContext:
        """What this node knows to check a proposal; `voting` adds its own contribution."""
        s = self.s
        own = None
        if voting and s.local is not None:
            own = OwnContribution(
                self.me,
                s.local.num_samples,
                s.local.consent,
                s.local.erasures,
                reported_params(s.local.metrics),
                dict(s.sent),
                dict(s.proved),
                s.local.testdata,
                tuple(e for e, _ in s.local.evaluations),
            )
        return RecordContext(
            genesis=self.genesis,
            author=author,
            run_id=self.settings.run_id,
            round=s.round,
            slot=s.frontier.size,
            prev_model=s.model,
            model=p.model,
            cid_of=self._cid_of,
            secure=self.settings.secure,
            min_contributors=self.min_contributors,
            transcript=p.transcript,
            secagg_params=self._params_for,
            apply_delta=self._ops.apply if self._ops is not None else None,
            privacy=s.privacy,
            colluders=self._secagg.f,
            current_attempt=s.attempt if voting else None,
            own=own,
            storage=StorageRules(
                self.settings.replicas,
                self.settings.challenge_every,
                s.storage,
                self.settings.challenge_artifacts,
            )
            if self.settings.storage
            else None,
            proofs=s.proofs,
            artifacts={cid_key(self._cid_of(a)): a for a in p.proofs},
            committee=self.settings.committee,
            beacon_checked=None if s.beacon is None else (s.beacon.message, s.beacon.checked()),
        )

    def _check_proposal(self, p: Proposal, *, voting: bool = True) -> Entry:
        """Everything a node re-checks before cosigning (or appending) a proposal."""
        s = self.s
        entry = Entry.from_bytes(p.entry)
        entry.verify(self.genesis)
        try:
            record = RoundRecord.from_entry(entry)
        except RecordFormatError as exc:
            raise ConsortiumError(f"proposed entry: {exc}") from exc
        if p.size != s.frontier.size + 1 or p.root != s.frontier.append(p.entry).root():
            raise ConsortiumError("proposed tree head is not this ledger plus the entry")
        check_proof_artifacts(p.proofs, record.evaluations, self._cid_of)
        verify_round_record(record, self._context(entry.author, p, voting=voting))
        if voting:
            s.checked = (p, entry)
        return entry

    def _on_propose(self, sender: str, msg: Propose) -> list[Action]:
        s = self.s
        if msg.attempt != s.attempt:
            raise ConsortiumError(
                f"proposal for attempt {msg.attempt}, this node is at attempt {s.attempt} "
                "[rule attempt-not-current]"
            )
        if self.leader(msg.attempt) != sender:
            raise ConsortiumError(f"not the leader of round {s.round} attempt {msg.attempt}")
        self._check_proposal(msg.proposal)
        s.accepted = msg.proposal
        return self._vote_for(msg.proposal, sender, msg.reports)

    def _vote_for(
        self,
        p: Proposal,
        leader: str,
        reports: Sequence[VoteReport],
        event: Event = Event.PROPOSE,
    ) -> list[Action]:
        """Cosign `p` (persisting the vote first); `event` is the one being handled, under which
        a leader whose own vote completes the quorum moves to DONE."""
        s = self.s
        prior = self._voted.get(p.size)
        if prior is not None and prior.root != p.root:
            why = self._unlock_refusal(p, prior, reports)
            if why is not None:
                return [Note(f"refused to cosign a second head of size {p.size}: {why}")]
        author, record_attempt = _authorship(p)
        self._voted[p.size] = CastVote(p.root, s.attempt, author, record_attempt)
        sig = TreeHead(p.size, p.root, p.time).sign(self._identity, self.genesis).signature
        vote = Vote(self.settings.run_id, s.round, p.size, p.root, sig)
        persist = PersistVote(p.size, p.root, s.attempt, author, record_attempt)
        if leader == self.me:
            return [persist, *self._on_vote(self.me, vote, event)]
        return [persist, Send(leader, vote)]

    def _unlock_refusal(
        self, p: Proposal, prior: CastVote, reports: Sequence[VoteReport]
    ) -> str | None:
        """Why this node may not move its vote from `prior` to `p` (None: it may).

        Only in a later attempt than the earlier vote, and only when the signed vote reports of
        this attempt show that no head other than `p`'s can still reach quorum, even if up to f
        reporters lie: for every other head H, reports(H) + members without a report + f must
        stay below quorum. A member proven dishonest (it authored two different entries for one
        attempt: `p`'s and the prior one) counts as unreported and is taken off f."""
        s = self.s
        author, record_attempt = _authorship(p)
        proven = (
            {author} if (author, record_attempt) == (prior.author, prior.record_attempt) else set()
        )
        if prior.attempt >= s.attempt:
            return f"it cosigned another head in attempt {prior.attempt} (would equivocate)"
        counts: dict[bytes, int] = {}
        reporters: set[str] = set()
        for r in reports:
            if (r.run, r.round, r.attempt, r.size) != (
                self.settings.run_id,
                s.round,
                s.attempt,
                p.size,
            ):
                return "a vote report is for another run, round, attempt or size"
            if r.node not in self._keys or r.node in reporters:
                return "vote reports from a non-member or twice from one member"
            body = r.signed_body()
            if not is_valid_signature(
                self._keys[r.node], Domain.ROUND, body, r.signature, self._digest
            ):
                return f"invalid vote report from {self._name(r.node)}"
            reporters.add(r.node)
            if r.root and r.node not in proven:
                counts[r.root] = counts.get(r.root, 0) + 1
        unknown = len(self.members) - len(reporters - proven)
        liars = max(0, self._faulty - len(proven))
        counts.setdefault(prior.root, 0)
        for root, n in counts.items():
            if root != p.root and n + unknown + liars >= self.genesis.quorum:
                return (
                    f"{n} reported votes, {unknown} unreported members and up to {liars} "
                    "lying reporters could still make another head final"
                )
        return None

    def _on_vote(self, sender: str, msg: Vote, event: Event = Event.VOTE) -> list[Action]:
        s = self.s
        p = s.proposal
        assert p is not None  # VOTING always has a proposal
        if (msg.size, msg.root) != (p.size, p.root):
            raise ConsortiumError("vote for a different head")
        head = TreeHead(p.size, p.root, p.time).body()
        if not is_valid_signature(
            self._keys[sender], Domain.TREE_HEAD, head, msg.signature, self._digest
        ):
            raise ConsortiumError("invalid cosignature")
        s.votes[sender] = msg.signature
        if len(s.votes) < self.genesis.quorum:
            return []
        self._goto(event, Phase.DONE)
        votes = dict(s.votes)
        full = Commit(self.settings.run_id, s.round, p, votes)
        # Voters already hold the model and transcript from the Propose: send them the entry,
        # head and cosignatures only (the model was ~37% of a round's bytes when re-sent).
        light = Commit(self.settings.run_id, s.round, _light(p), votes)
        sends: list[Action] = [
            Send(m, light if m in votes else full) for m in self.members if m != self.me
        ]
        return [*sends, Committed(s.round, p, Entry.from_bytes(p.entry), votes)]

    def _on_commit(self, msg: Commit) -> list[Action]:
        s = self.s
        p = msg.proposal
        mine = s.accepted
        if not p.model and mine is not None and _light(mine) == p:
            p = mine  # a light commit of the proposal this node cosigned
        head = TreeHead(p.size, p.root, p.time).body()
        valid = valid_signatures(self._keys, Domain.TREE_HEAD, head, msg.cosignatures, self._digest)
        if len(valid) < self.genesis.quorum:
            raise ConsortiumError(
                f"commit has {len(valid)} valid cosignatures, quorum is {self.genesis.quorum}"
            )
        # A quorum made it final; still check it is a well-formed record of this ledger, unless
        # this node already checked these exact bytes as a voter this round: the voter's check
        # runs every rule this one does (and its own-contribution and attempt rules), against
        # the same round state (frontier, previous model, privacy, storage and proof states are
        # set when the round begins), so it would only repeat the same verifications (at 50
        # members, a sixth of a round's time outside the commitments).
        if s.checked is not None and s.checked[0] == p:
            entry = s.checked[1]
        else:
            entry = self._check_proposal(p, voting=False)
        self._goto(Event.COMMIT, Phase.DONE)
        return [Committed(s.round, p, entry, valid)]

    # -- failover -------------------------------------------------------------------------------

    def _next_attempt(self, now: float) -> list[Action]:
        s = self.s
        old = self.leader()
        actions: list[Action] = [
            Note(
                f"round {s.round}: leader {self._name(old)} missed its deadline; "
                f"{self._name(self.leader(s.attempt + 1))} takes over"
            )
        ]
        return actions + self._switch_attempt(Event.TIMEOUT, s.attempt + 1, now)

    def _switch_attempt(self, event: Event, attempt: int, now: float) -> list[Action]:
        s = self.s
        s.attempt = attempt
        s.attempt_started = now
        s.updates = {}
        s.reports = {}
        s.proposal = None
        s.votes = {}
        s.leading = None
        s.client = None
        answers = self._answer_challenges()  # this attempt's challenges, to its leader
        if s.local is None:
            self._goto(event, Phase.TRAINING)
            return answers
        if self.leader() == self.me:
            self._goto(event, Phase.COLLECTING)
            mine = self._my_update()
            s.updates[self.me] = mine
            if mine.report is not None:
                s.reports[self.me] = mine.report
            return answers
        self._goto(event, Phase.AWAITING)
        return [*answers, Send(self.leader(), self._my_update())]

    def _bound_set(self) -> tuple[str, ...] | None:
        """The survivor set this node signed last in an earlier attempt of this round, if any.

        Once signed, its masked input may have been unmasked within that set's sum, by that
        attempt's leader (who may withhold the result). A sum over a set with anyone else in it,
        or without anyone but such leaders, would let the difference of the two give an honest
        member's update away; so for the rest of the round this node joins only sums over that
        set minus leaders of attempts in which it signed (`_may_join`)."""
        s = self.s
        slot = s.frontier.size
        earlier = sorted((a, u) for (r, a), u in self._signed_sets.items() if r == slot)
        signed = [u for a, u in earlier if a != s.attempt]
        return signed[-1] if signed else None

    def _may_join(self, parts: Sequence[str]) -> bool:
        """Whether this node may contribute to a sum over `parts` in this attempt: any set if it
        signed none earlier in the round, else its last signed set minus leaders of attempts in
        which it signed (each of those learned at most its own update from the difference)."""
        bound = self._bound_set()
        if bound is None:
            return True
        s = self.s
        leaders = {
            self.leader(a)
            for (r, a) in self._signed_sets
            if r == s.frontier.size and a != s.attempt
        }
        missing = set(bound) - set(parts)
        return set(parts) <= set(bound) and missing <= leaders

    def _my_update(self) -> Update:
        s = self.s
        assert s.local is not None
        if not self.settings.secure:
            s.sent[s.attempt] = hashlib.sha256(s.local.update).digest()
        return Update(
            self.settings.run_id,
            s.round,
            s.attempt,
            s.local.num_samples,
            b"" if self.settings.secure else s.local.update,  # secure: never reveal the update
            published_metrics(s.local.metrics),
            s.accepted,
            None if s.local.consent is None else s.local.consent.to_body(),
            [e.to_body() for e in s.local.erasures],
            self._report(),
            self._bound_set() or (),
            None if s.local.testdata is None else s.local.testdata.to_body(),
            [{"evaluation": e.to_body(), "artifact": a} for e, a in s.local.evaluations],
        )

    def _report(self) -> VoteReport:
        """This node's signed report of what it cosigned at this round's ledger size."""
        s = self.s
        size = s.frontier.size + 1
        voted = self._voted.get(size)
        report = VoteReport(
            self.settings.run_id, s.round, s.attempt, self.me, size, voted.root if voted else b""
        )
        sig = self._identity.sign(Domain.ROUND, report.signed_body(), self._digest)
        return replace(report, signature=sig)

    # -- replication: retrievability challenges ---------------------------------------------------

    def _challenges(self, attempt: int) -> list[Challenged]:
        """Every (artifact, holder) this round's `attempt` challenges (none outside challenge
        rounds), from the attempt's beacon and what earlier records committed."""
        s, st = self.s, self.settings
        if not st.storage or not is_challenge_round(s.round, st.challenge_every):
            return []
        if attempt not in s.challenges:
            assert self.beacon is not None
            s.challenges[attempt] = s.storage.challenged(
                attempt_beacon(self.beacon, attempt), st.challenge_artifacts
            )
        return s.challenges[attempt]

    def _scope(self, attempt: int) -> AnswerScope:
        """What a holder's signed answer in `attempt` is bound to (`protocol/storage.py`)."""
        return AnswerScope(self._digest, self.settings.run_id, self.s.round, attempt, self._keys)

    def _answer_challenges(self) -> list[Action]:
        """As a holder: prove this attempt's challenges from this node's own copies, to the
        attempt's leader (also when it can prove none: then the leader need not wait for it)."""
        s = self.s
        mine = [c for c in self._challenges(s.attempt) if c.holder == self.me]
        if not mine:
            return []
        answers: list[HolderAnswer] = []
        notes: list[Action] = []
        for c in mine:
            data = self._read_artifact(c.artifact) if self._read_artifact is not None else None
            answer = answer_challenge(data, c) if data is not None else None
            if answer is None:
                notes.append(
                    Note(f"round {s.round}: this node cannot prove {c.artifact}: its copy is lost")
                )
            else:
                answers.append(sign_answer(self._identity, self._scope(s.attempt), answer, c.root))
        s.proved[s.attempt] = frozenset((a.artifact, a.holder) for a in answers)
        msg = StorageAnswers(self.settings.run_id, s.round, s.attempt, tuple(answers))
        if self.leader() == self.me:
            return [*notes, *self._take_answers(self.me, msg)]
        return [*notes, Send(self.leader(), msg)]

    def _on_storage(self, sender: str, msg: StorageAnswers, now: float) -> list[Action]:
        s = self.s
        if msg.attempt < s.attempt:
            return [Note(f"stale storage answers from {self._name(sender)}", "info")]
        if msg.attempt > s.attempt + len(self.members) or self.leader(msg.attempt) != self.me:
            raise ConsortiumError(
                f"storage answers for attempt {msg.attempt}, which this node does not lead"
            )
        actions = self._take_answers(sender, msg)
        if s.phase is Phase.COLLECTING and msg.attempt == s.attempt:
            actions += self._maybe_propose(Event.STORAGE, now)
        return actions

    def _take_answers(self, sender: str, msg: StorageAnswers) -> list[Action]:
        """As leader: keep each answer of `sender` that proves a challenge it was given."""
        s = self.s
        wanted = {(c.artifact, c.holder): c for c in self._challenges(msg.attempt)}
        if not any(h == sender for _, h in wanted):
            raise ConsortiumError("storage answers from a member this attempt does not challenge")
        s.answered_by.setdefault(msg.attempt, set()).add(sender)
        got = s.answers.setdefault(msg.attempt, {})
        notes: list[Action] = []
        for a in msg.answers:
            c = wanted.get((a.artifact, a.holder))
            if c is None or a.holder != sender:
                notes.append(Note(f"{self._name(sender)} answered a challenge it was not given"))
                continue
            try:
                check_answer(c.root, c.size, c.indices, a.proofs)
                check_answer_signature(self._scope(msg.attempt), a, c.root)
            except ConsortiumError as exc:
                notes.append(Note(f"{self._name(sender)}'s proof of {a.artifact}: {exc}"))
                continue
            got[(a.artifact, a.holder)] = a
        return notes

    def _answers_in(self) -> bool:
        """As leader: every holder this attempt challenges has sent its answers."""
        s = self.s
        holders = {c.holder for c in self._challenges(s.attempt)}
        return holders <= s.answered_by.get(s.attempt, set())

    def _storage_section(
        self, model: bytes, secagg: SecAggSection | None, transcript: bytes
    ) -> StorageSection | None:
        """As leader: the commitments of what this attempt made (and what earlier records owe),
        and in a challenge round every challenge, answered or missing."""
        s, st = self.s, self.settings
        if not st.storage:
            return None
        assert self.beacon is not None
        value = attempt_beacon(self.beacon, s.attempt)
        made = [(artifact_name(self._cid_of(model)), model)]
        if secagg is not None:
            made.append((artifact_name(secagg.transcript), transcript))
        commitments = tuple(
            commit_artifact(value, cid, data, self.me, self.members, st.replicas)
            for cid, data in made
        )
        got = s.answers.get(s.attempt, {})
        pairs = [(c.artifact, c.holder) for c in self._challenges(s.attempt)]
        return StorageSection(
            commitments + s.storage.owed,
            tuple(got[p] for p in pairs if p in got),
            tuple(p for p in pairs if p not in got),
        )

    # -- secure aggregation (SecAgg+) -----------------------------------------------------------

    def _start_secure(self, event: Event, now: float) -> list[Action]:
        """As leader: open SecAgg+ among the participants whose updates arrived."""
        s = self.s
        parts = sorted(s.updates)
        waited = now >= s.attempt_started + self.settings.collect_timeout
        bound = self._reported_bound(waited)
        if bound is not None:  # members bound to a set: only that sum may be recomputed
            parts = list(bound)
        params = self._secagg_params(s.attempt, parts)
        s.leading = LeaderAggregation(
            params, now, self._secagg_verify, self._min_inputs(len(parts))
        )
        s.secagg_samples = {p: s.updates[p].num_samples for p in parts}
        self._goto(event, Phase.SECURE)
        start = {START: {"participants": parts, "samples": s.secagg_samples}}
        actions: list[Action] = [Send(p, self._secagg_msg(start)) for p in parts if p != self.me]
        if self.me in parts:  # a leader sitting the round out only relays and sums
            actions += self._client_start(params, s.secagg_samples)
        return actions + self._secure_progress(event, now)

    def _client_dp(self, n: int) -> tuple[float, ClientNoisePlan] | None:
        """(client clip, noise plan) under client-level DP with n participants, else None."""
        pv = self.s.privacy
        if pv is None or not pv.config.client_level:
            return None
        params = self._secagg_params(self.s.attempt, [f"p{i}" for i in range(n)])
        plan = client_plan(pv, n, params.scale, self.settings.model_size, self._secagg.f)
        return pv.config.client_clip, plan

    def _secagg_params(self, attempt: int, parts: list[str]) -> SecAggParams:
        """The SecAgg+ parameters every node derives alike for this attempt and participants."""
        assert self.beacon is not None  # secure aggregation starts after the leader is known
        return self._params_for(self.beacon, attempt, parts)

    def _params_for(self, beacon: bytes, attempt: int, parts: list[str]) -> SecAggParams:
        st = self.settings
        return round_params(
            st.run_id,
            self.s.round,
            beacon,
            attempt,
            parts,
            st.model_size,
            st.clip,
            self.s.privacy,
            self._secagg,
        )

    @property
    def min_contributors(self) -> int:
        """Plaintext: the run's minimum; SecAgg+: also the floor sized for colluders."""
        st = self.settings
        return rule_min_contributors(st.min_updates, st.secure, self._secagg)

    def _secagg_sign(self, statement: dict[str, Any]) -> bytes:
        return self._identity.sign(Domain.MESSAGE, statement, self._digest)

    def _secagg_verify(self, node: str, statement: dict[str, Any], signature: bytes) -> bool:
        key = self._keys.get(node)
        if key is None:
            return False
        # A certificate is one statement signed by up to n members: encode it once. The cache
        # holds the statement itself, so its id cannot be reused while it is cached.
        if self._statement[0] is not statement:
            self._statement = (statement, signing_payload(Domain.MESSAGE, statement, self._digest))
        return check_payload(key, self._statement[1], signature)

    def _min_inputs(self, n: int) -> int:
        """Masked inputs the sum needs to carry the noise it is accounted with."""
        dp = self._client_dp(n)
        return 0 if dp is None else dp[1].n_expected - dp[1].max_dropouts

    def _secagg_msg(self, body: dict[str, Any]) -> SecAgg:
        return SecAgg(self.settings.run_id, self.s.round, self.s.attempt, body)

    def _client_start(self, params: SecAggParams, samples: dict[str, int]) -> list[Action]:
        """As participant: build this node's weighted vector and advertise SecAgg+ keys."""
        s = self.s
        assert s.local is not None and self._ops is not None
        if samples.get(self.me) != s.local.num_samples:
            raise ConsortiumError("secure aggregation start misstates this node's sample count")
        delta = self._ops.delta(s.model, s.local.update)
        dp = self._client_dp(len(samples))
        # Every member weighs the same (1/n): a self-reported sample count inside the masked
        # vector would let a dishonest member weigh its own update as it likes, unseen.
        weight = 1.0 / len(samples)
        auth = (self._secagg_sign, self._secagg_verify)
        words = None
        bound = self._bound_set()
        if bound is not None and tuple(sorted(samples)) == bound:
            # The same sum again: the very same words, so it is released bit for bit again.
            if s.words is None:
                raise ConsortiumError(
                    "this node signed a survivor set earlier in the round and cannot reproduce "
                    "its input (restarted): it sits the round out [rule one-sum-per-update]"
                )
            words = s.words
        if dp is None:
            vector = weighted_vector(delta, self.settings.clip, weight)
            s.client = ParticipantAggregation(
                params, self.me, vector, self._random, *auth, words=words
            )
        else:  # client-level DP: the clipped delta plus a share of the noise
            clip, plan = dp
            vector = weighted_vector(delta, clip, weight)
            s.client = ParticipantAggregation(
                params, self.me, vector, self._random, *auth, noise=plan, words=words
            )
        return self._to_leader(s.client.start())

    def _client_on(self, body: dict[str, Any]) -> list[Action]:
        """As participant: answer the aggregator; remember the masked input this node sent; sign
        at most one survivor set per attempt and reveal in at most one attempt per round, each
        persisted before the answer leaves."""
        s = self.s
        assert s.client is not None
        key = (s.frontier.size, s.attempt)
        before: list[Action] = []
        survivors: tuple[str, ...] | None = None
        if body.get("type") == SurvivorSet.TYPE:
            survivors = SurvivorSet.from_body(body).survivors
            prior = self._signed_sets.get(key)
            if prior is not None and prior != survivors:
                raise SecAggError(
                    "it already signed another survivor set for this attempt "
                    "[rule one-set-per-attempt]"
                )
            if not self._may_join(survivors):
                raise SecAggError(
                    "it signed another survivor set earlier in this round [rule one-sum-per-update]"
                )
        reply = s.client.on(body)
        if survivors is not None:  # signed (the client's own checks passed): bound from now on
            self._signed_sets[key] = survivors
            before += self._release()
            before.append(PersistSurvivorSet(s.frontier.size, s.attempt, survivors))
        if s.client.input_hash is not None:
            s.sent[s.attempt] = s.client.input_hash
        if s.client.words is not None:
            s.words = s.client.words  # reused if this round's sum must be recomputed
        return [*before, *self._to_leader(reply)] if reply is not None else before

    def _to_leader(self, body: dict[str, Any]) -> list[Action]:
        s = self.s
        if s.leading is not None:  # this node leads: deliver to its own aggregator
            try:
                s.leading.receive(self.me, body)
            except SecAggError as exc:
                return [Note(f"round {s.round}: own secure-aggregation message refused: {exc}")]
            return []
        return [Send(self.leader(), self._secagg_msg(body))]

    def _on_secagg(self, sender: str, msg: SecAgg, now: float) -> list[Action]:
        s = self.s
        if msg.attempt != s.attempt:
            return [Note(f"stale secure-aggregation message from {self._name(sender)}", "info")]
        if s.phase is Phase.SECURE:
            if s.leading is None:
                return [Note(f"secure aggregation of round {s.round} was aborted", "info")]
            try:
                s.leading.receive(sender, msg.body)
            except SecAggError as exc:
                return [
                    Note(
                        f"round {s.round}: secure aggregation refused {self._name(sender)}: {exc}"
                    ),
                    *self._secure_progress(Event.SECAGG, now),
                ]
            return self._secure_progress(Event.SECAGG, now)
        if sender != self.leader(msg.attempt):
            raise ConsortiumError("secure-aggregation message from a node that does not lead")
        if START in msg.body:
            start = msg.body[START]
            if not isinstance(start, dict):
                raise ConsortiumError("malformed secure-aggregation start")
            parts, samples = start.get("participants"), start.get("samples")
            if (
                not isinstance(parts, list)
                or not isinstance(samples, dict)
                or len(parts) > len(self.members)
                or not all(isinstance(x, str) for x in parts)
                or not all(isinstance(k, str) and _count(v) for k, v in samples.items())
            ):
                raise ConsortiumError("malformed secure-aggregation start")
            if self.me not in parts or sorted(samples) != sorted(parts):
                raise ConsortiumError("secure-aggregation start leaves this node out")
            if s.client is not None:
                raise ConsortiumError("a second secure-aggregation start in one attempt")
            outsiders = [p for p in parts if p not in self._keys]
            if outsiders or len(set(parts)) < self.min_contributors:
                raise ConsortiumError(
                    f"secure-aggregation start names {len(set(parts))} participants "
                    f"({len(outsiders)} not members); the floor is {self.min_contributors} "
                    "members [rule participant-floor]"
                )
            if not self._may_join(parts):
                raise ConsortiumError(
                    "secure-aggregation start differs from the survivor set this node signed "
                    "earlier in the round [rule one-sum-per-update]"
                )
            params = self._secagg_params(s.attempt, parts)
            return self._client_start(params, samples)
        if s.client is None:
            raise ConsortiumError("secure-aggregation message before its start")
        try:
            return self._client_on(msg.body)
        except SecAggError as exc:
            return [Note(f"round {s.round}: secure aggregation: {exc}")]

    def _secure_progress(self, event: Event, now: float) -> list[Action]:
        """As leader: close every stage that is complete (or past its deadline)."""
        s = self.s
        lead = s.leading
        actions: list[Action] = []
        while lead is not None and s.phase is Phase.SECURE and lead.stage_name != "done":
            if not lead.ready(now, self.settings.collect_timeout):
                return actions
            try:
                out = lead.advance(now)
            except SecAggError as exc:
                s.leading = None
                return [*actions, Note(f"round {s.round}: secure aggregation aborted: {exc}")]
            for recipient, body in out:
                if recipient == self.me:
                    if s.client is not None:
                        try:
                            actions += self._client_on(body)
                        except SecAggError as exc:  # its own refusal: never escape a tick
                            actions.append(
                                Note(f"round {s.round}: this node's client refused: {exc}")
                            )
                else:
                    actions.append(Send(recipient, self._secagg_msg(body)))
        if lead is not None and lead.stage_name == "done" and s.phase is Phase.SECURE:
            try:
                proposal = self._secure_proposal(lead, now)
            except ConsortiumError as exc:
                s.leading = None
                return [*actions, Note(f"round {s.round}: no proposal this attempt: {exc}")]
            actions += self._propose(event, proposal)
        return actions

    def _secure_proposal(self, lead: LeaderAggregation, now: float) -> Proposal:
        s = self.s
        assert self._ops is not None
        transcript = encode(lead.agg.transcript().to_body())
        mean, tr = recompute_mean_delta(lead.params, transcript, self._secagg_verify)
        contributors = tuple(tr.survivors)
        if len(contributors) < self.min_contributors:
            raise ConsortiumError(
                f"{len(contributors)} contributors survived, the run needs {self.min_contributors}"
            )
        model = self._ops.apply(s.model, mean)
        record = self._record(
            contributors,
            samples={u: s.secagg_samples[u] for u in contributors},
            updates=dict(tr.input_hashes),
            model=model,
            secagg=SecAggSection(params_body(lead.params), self._cid_of(transcript)),
            transcript=transcript,
        )
        return self._sign_proposal(record, model, transcript, now)

    def _name(self, node_id: str) -> str:
        for m in self.genesis.members:
            if m.node_id == node_id:
                return m.name
        return node_id[:12]


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**40


def published_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What of a node's local metrics leaves it: its DP-SGD parameters only. Loss, accuracy and
    any other figure computed from its data stay on the node (they are outside the privacy
    accounting); see docs/architecture.md, "Per-node figures that may be published"."""
    return {k: v for k, v in metrics.items() if k in PUBLISHED_METRICS}


def _light(p: Proposal) -> Proposal:
    """`p` without what voters already hold: the model, transcript and proof artifacts."""
    return replace(p, model=b"", transcript=b"", proofs=())


def _authorship(p: Proposal) -> tuple[str, int]:
    """(author, attempt) of a proposal's entry (already verified by the caller)."""
    entry = Entry.from_bytes(p.entry)
    return entry.author, RoundRecord.from_entry(entry).attempt


def _record_partials(p: Proposal) -> tuple[BeaconPartial, ...]:
    """The beacon partials a proposal's record carries (none if it is malformed)."""
    try:
        return RoundRecord.from_entry(Entry.from_bytes(p.entry)).beacon
    except (ConsortiumError, ValueError, TypeError):
        return ()

"""One node's view of the training rounds of a run, as a sans-I/O state machine.

Theory of operation
-------------------
Round r starts on every node when round r-1 is committed (round 1 when the run starts). Each node
trains locally (the `Train` action; the node feeds the result back with `on_trained`) and sends its
`Update` to the leader of the current attempt, which `schedule.leader_for` derives from the latest
final tree head alone. The leader waits for every member's update, or for `collect_timeout` with at
least `min_updates`, aggregates, and broadcasts a `Propose`: a signed "round" ledger entry, the tree
head the ledger has once it is appended, and the new model. Each participant re-checks everything
(the entry's signature and fields, its own update's hash, the model's CID, the head = its own ledger
plus this entry) and answers with a `Vote`, its cosignature of that head. With a quorum of
cosignatures the head is final: the leader broadcasts `Commit` and every node appends the entry.

Failover: when an attempt is not committed within `round_timeout`, every node moves to attempt a+1,
whose leader is the next member in the schedule's order, and re-sends its update there. Safety: an
honest node never cosigns two different heads of the same size, so at most one entry can become
final for a ledger position; a node that already voted reports the proposal it accepted in its next
`Update`, and a new leader re-proposes such a proposal instead of a new one, so a leader that died
after collecting votes does not leave the round stuck.

Transitions (phase x event -> phase), all in this file:
    TRAINING   on_trained            → COLLECTING (leader) | AWAITING (others, Update sent)
    COLLECTING Update / tick         → COLLECTING | VOTING (proposal broadcast)
    VOTING     Vote (quorum reached) → DONE (Commit broadcast, Committed action)
    AWAITING   Propose (valid)       → AWAITING (Vote sent)
    any        Commit (valid)        → DONE (Committed action)
    any≠DONE   tick past deadline    → next attempt: COLLECTING (new leader) | AWAITING
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from multiformats import CID

from consortium.core.encoding import Domain, encode
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity, is_valid_signature
from consortium.ledger.entries import Entry, make_record
from consortium.ledger.frontier import Frontier
from consortium.ledger.heads import TreeHead
from consortium.privacy.client_dp import ClientNoisePlan
from consortium.protocol.messages import (
    Commit,
    Message,
    Proposal,
    Propose,
    SecAgg,
    Update,
    Vote,
)
from consortium.protocol.privacy_round import (
    RecordParams,
    RoundPrivacy,
    client_plan,
    client_scale,
    reported_params,
)
from consortium.protocol.schedule import leader_for
from consortium.protocol.secagg import SecAggError, SecAggParams
from consortium.protocol.secure_round import (
    START,
    LeaderAggregation,
    ParticipantAggregation,
    make_params,
    params_body,
    params_from_body,
    recompute_mean_delta,
    secagg_round_id,
    weighted_vector,
)

#: Aggregates (node id, sample count, update bytes) into the new model's bytes. Pure compute.
Aggregator = Callable[[Sequence[tuple[str, int, bytes]]], bytes]
#: The CID the store will give these bytes (computed without storing them).
CidOf = Callable[[bytes], CID]


class Phase(enum.Enum):
    TRAINING = "training"
    COLLECTING = "collecting"
    SECURE = "secure-aggregation"
    VOTING = "voting"
    AWAITING = "awaiting"
    DONE = "done"


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
class Committed:
    round: int
    proposal: Proposal
    entry: Entry
    cosignatures: dict[str, bytes]


@dataclass(frozen=True)
class Note:
    text: str


@dataclass(frozen=True)
class Stopped:
    """This node must not train any more in this run (its privacy budget), for `reason`."""

    reason: str


Action = Send | Broadcast | Train | Committed | Note | Stopped


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
    #: Number of model parameters (the secure vector has one more word: the weight).
    model_size: int = 0


class SecureOps(Protocol):
    """Pure model arithmetic the machine needs under secure aggregation (given by the node)."""

    def delta(self, global_model: bytes, local_model: bytes) -> npt.NDArray[np.float32]: ...

    def apply(self, global_model: bytes, delta: npt.NDArray[np.float64]) -> bytes: ...


@dataclass
class _LocalResult:
    num_samples: int
    update: bytes
    metrics: dict[str, Any]
    consent: dict[str, Any] | None = None
    erasures: list[Any] = field(default_factory=list)


@dataclass
class _State:
    round: int = 0
    attempt: int = 0
    phase: Phase = Phase.DONE
    frontier: Frontier = field(default_factory=Frontier.empty)
    head_root: bytes = b""
    attempt_started: float = 0.0
    local: _LocalResult | None = None
    updates: dict[str, Update] = field(default_factory=dict)
    proposal: Proposal | None = None
    votes: dict[str, bytes] = field(default_factory=dict)
    accepted: Proposal | None = None
    early: dict[str, Update] = field(default_factory=dict)  # next round's updates, held back
    model: bytes = b""  # the global model this round starts from
    leading: LeaderAggregation | None = None  # secure aggregation, as this attempt's leader
    client: ParticipantAggregation | None = None  # secure aggregation, as a participant
    secagg_samples: dict[str, int] = field(default_factory=dict)
    privacy: RoundPrivacy | None = None  # this round's differential-privacy state


class RoundMachine:
    def __init__(
        self,
        identity: NodeIdentity,
        genesis: Genesis,
        settings: RoundSettings,
        aggregate: Aggregator,
        cid_of: CidOf,
        secure_ops: SecureOps | None = None,
    ) -> None:
        if settings.secure and secure_ops is None:
            raise ConsortiumError("secure aggregation needs the node's model operations")
        self.me = identity.node_id
        self._identity = identity
        self.genesis = genesis
        self.settings = settings
        self._aggregate = aggregate
        self._cid_of = cid_of
        self._ops = secure_ops
        self.members = sorted(m.node_id for m in genesis.members)
        self._keys = {m.node_id: m.public_key for m in genesis.members}
        self._voted: dict[int, bytes] = {}  # ledger size -> root this node cosigned
        self.s = _State()

    # -- queries -------------------------------------------------------------------------------

    @property
    def round(self) -> int:
        return self.s.round

    @property
    def phase(self) -> Phase:
        return self.s.phase

    def leader(self, attempt: int | None = None) -> str:
        a = self.s.attempt if attempt is None else attempt
        return leader_for(self.s.head_root, self.s.round, a, self.members)

    # -- events ---------------------------------------------------------------------------------

    def begin(
        self,
        round_no: int,
        frontier: Frontier,
        head_root: bytes,
        now: float,
        model: bytes = b"",
        privacy: RoundPrivacy | None = None,
        my_dp: RecordParams | None = None,
    ) -> list[Action]:
        """Start round `round_no` from global `model` on a ledger whose right edge is `frontier`;
        with `privacy`, first check this node's next spend (`my_dp`: its DP-SGD parameters)."""
        early = {k: u for k, u in self.s.early.items() if u.round == round_no}
        self.s = _State(
            round=round_no,
            phase=Phase.TRAINING,
            frontier=frontier,
            head_root=head_root,
            attempt_started=now,
            model=model,
            privacy=privacy,
        )
        if privacy is not None:
            reason = privacy.stop_reason(round_no, self.me, my_dp)
            if reason is not None:
                self.s.phase = Phase.DONE
                return [Stopped(reason)]
        actions: list[Action] = [Train(round_no)]
        for sender, upd in early.items():
            actions += self._on_update(sender, upd, now)
        return actions

    def on_trained(
        self,
        num_samples: int,
        update: bytes,
        metrics: dict[str, Any],
        now: float,
        consent: dict[str, Any] | None = None,
        erasures: list[Any] | None = None,
    ) -> list[Action]:
        """Local training is done; `consent` commits to the records it used."""
        s = self.s
        if s.phase is Phase.DONE:
            return []
        s.local = _LocalResult(num_samples, update, metrics, consent, list(erasures or []))
        if self.leader() == self.me:
            s.updates[self.me] = self._my_update()
            s.phase = Phase.COLLECTING
            return self._maybe_propose(now)
        s.phase = Phase.AWAITING
        return [Send(self.leader(), self._my_update())]

    def on_message(self, sender: str, msg: Message, now: float) -> list[Action]:
        """Handle a message from an authenticated member; refusals come back as Note actions."""
        if sender not in self._keys:
            return [Note(f"refused message from non-member {sender}")]
        try:
            if isinstance(msg, Update):
                return self._on_update(sender, msg, now)
            if isinstance(msg, Propose):
                return self._on_propose(sender, msg)
            if isinstance(msg, Vote):
                return self._on_vote(sender, msg, now)
            if isinstance(msg, Commit):
                return self._on_commit(sender, msg)
            if isinstance(msg, SecAgg):
                return self._on_secagg(sender, msg, now)
        except ConsortiumError as exc:
            return [Note(f"refused {type(msg).__name__.lower()} from {self._name(sender)}: {exc}")]
        return []

    def tick(self, now: float) -> list[Action]:
        s = self.s
        if s.phase is Phase.DONE:
            return []
        if now >= s.attempt_started + self.settings.round_timeout:
            return self._next_attempt(now)
        if s.phase is Phase.COLLECTING:
            return self._maybe_propose(now)
        if s.phase is Phase.SECURE:
            return self._secure_progress(now)
        return []

    # -- handlers -------------------------------------------------------------------------------

    def _on_update(self, sender: str, msg: Update, now: float) -> list[Action]:
        s = self.s
        if msg.run != self.settings.run_id:
            raise ConsortiumError(f"update for another run {msg.run!r}")
        if msg.round == s.round + 1 or (msg.round == s.round and s.phase is Phase.DONE):
            s.early[sender] = msg
            return []
        if msg.round != s.round:
            return []  # stale
        if self.leader(msg.attempt) != self.me:
            raise ConsortiumError(
                f"update for attempt {msg.attempt}, which this node does not lead"
            )
        if msg.attempt > s.attempt:  # the sender timed out before us: follow it
            actions = self._switch_attempt(msg.attempt, now)
        elif msg.attempt < s.attempt:
            return []
        else:
            actions = []
        s.updates[sender] = msg
        if s.phase in (Phase.COLLECTING, Phase.TRAINING, Phase.AWAITING):
            actions += self._maybe_propose(now)
        return actions

    def _maybe_propose(self, now: float) -> list[Action]:
        s = self.s
        if s.local is None or self.leader() != self.me or s.proposal is not None:
            return []
        s.phase = Phase.COLLECTING
        everyone = len(s.updates) == len(self.members)
        waited = now >= s.attempt_started + self.settings.collect_timeout
        # SecAgg+ needs at least 3 participants (with 2, each would learn the other's update).
        need = max(self.settings.min_updates, 3 if self.settings.secure else 1)
        if len(s.updates) < need or not (everyone or waited):
            return []
        accepted = [p for p in self._reported_proposals() if self._is_valid_proposal(p)]
        if accepted:
            proposal = accepted[0]
            note = [Note(f"round {s.round}: re-proposing the entry a previous leader had proposed")]
        elif self.settings.secure:
            return self._start_secure(now)
        else:
            proposal = self._build_proposal(now)
            note = []
        return [*note, *self._propose(proposal, now)]

    def _propose(self, proposal: Proposal, now: float) -> list[Action]:
        s = self.s
        s.proposal = proposal
        s.phase = Phase.VOTING
        s.votes = {}
        msg = Propose(self.settings.run_id, s.round, s.attempt, proposal)
        return [Broadcast(msg), *self._vote_for(proposal, self.me, now)]

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
        body: dict[str, Any] = {
            "run": self.settings.run_id,
            "round": s.round,
            "attempt": s.attempt,
            "leader": self.me,
            "participants": [nid for nid, _ in ups],
            "dropouts": [m for m in self.members if m not in s.updates],
            "samples": {nid: u.num_samples for nid, u in ups},
            "updates": {nid: hashlib.sha256(u.update).digest() for nid, u in ups},
            "metrics": {nid: u.metrics for nid, u in ups},
            "model": self._cid_of(model),
            "prev_model": self._cid_of(s.model),
            "aggregation": "fedavg",
        }
        return self._sign_proposal(body, model, b"", now)

    def _sign_proposal(
        self, body: dict[str, Any], model: bytes, transcript: bytes, now: float
    ) -> Proposal:
        s = self.s
        ups = {u: s.updates[u] for u in body["participants"] if u in s.updates}
        body["slot"] = s.frontier.size  # the ledger index this record takes: unique across runs
        body["consent"] = {u: up.consent for u, up in ups.items() if up.consent is not None}
        body["erasures"] = {u: up.erasures for u, up in ups.items() if up.erasures}
        if s.privacy is not None:
            reported = {u: reported_params(up.metrics) for u, up in ups.items()}
            record = {u: r for u, r in reported.items() if r is not None}
            if s.privacy.config.record_level and len(record) != len(ups):
                raise ConsortiumError("a participant did not report its DP-SGD parameters")
            body["privacy"] = s.privacy.body(s.round, record)
        if s.round == 1:
            body["config"] = self.settings.config
        ms = int(now * 1000)
        entry = make_record(self._identity, "round", body, ms, self.genesis)
        data = entry.to_bytes()
        root = s.frontier.append(data).root()
        return Proposal(data, s.frontier.size + 1, root, ms, model, transcript)

    def _check_proposal(self, p: Proposal) -> Entry:
        """Everything a participant re-checks before cosigning; raises on the first problem."""
        s = self.s
        entry = Entry.from_bytes(p.entry)
        entry.verify(self.genesis)
        if entry.kind != "round":
            raise ConsortiumError(f"proposed entry is a {entry.kind!r}, not a round record")
        body = entry.body
        if body.get("run") != self.settings.run_id or body.get("round") != s.round:
            raise ConsortiumError("proposed record is for another run or round")
        if entry.author != body.get("leader"):
            raise ConsortiumError("record author is not the leader it names")
        if p.size != s.frontier.size + 1 or p.root != s.frontier.append(p.entry).root():
            raise ConsortiumError("proposed tree head is not this ledger plus the entry")
        if body.get("model") != self._cid_of(p.model):
            raise ConsortiumError("model bytes do not match the model CID in the record")
        if body.get("slot") != s.frontier.size:
            raise ConsortiumError("the record names another ledger slot than the one it takes")
        consent = body.get("consent")
        if not isinstance(consent, dict) or not isinstance(body.get("erasures"), dict):
            raise ConsortiumError("record lacks its consent commitments or erasures")
        if s.local is not None and self.me in body.get("participants", []):
            if consent.get(self.me) != s.local.consent:
                raise ConsortiumError("the record misstates this node's consent commitment")
            if body["erasures"].get(self.me, []) != s.local.erasures:
                raise ConsortiumError("the record misstates this node's erasures")
        self._check_privacy(body)
        if body.get("prev_model") != self._cid_of(s.model):
            raise ConsortiumError("the record starts from another global model than this round's")
        samples, hashes = body.get("samples"), body.get("updates")
        if not isinstance(samples, dict) or not isinstance(hashes, dict):
            raise ConsortiumError("record lacks sample counts or update commitments")
        if sorted(samples) != sorted(hashes) or sorted(samples) != body.get("participants"):
            raise ConsortiumError("participants, sample counts and commitments disagree")
        local = s.local
        if self.settings.secure:
            self._check_secure(p, body, hashes)
        elif body.get("aggregation") != "fedavg":
            raise ConsortiumError("the record's aggregation is not this run's (fedavg)")
        elif (
            local is not None
            and self.me in hashes
            and hashes[self.me] != hashlib.sha256(local.update).digest()
        ):
            raise ConsortiumError("the record commits to an update this node did not send")
        if local is not None and samples.get(self.me, local.num_samples) != local.num_samples:
            raise ConsortiumError("the record misstates this node's sample count")
        if s.round == 1 and body.get("config") != self.settings.config:
            raise ConsortiumError("round 1 record does not carry the agreed run config")
        return entry

    def _on_propose(self, sender: str, msg: Propose) -> list[Action]:
        s = self.s
        if msg.run != self.settings.run_id or msg.round != s.round or s.phase is Phase.DONE:
            return []
        if self.leader(msg.attempt) != sender:
            raise ConsortiumError(f"not the leader of round {s.round} attempt {msg.attempt}")
        self._check_proposal(msg.proposal)
        s.accepted = msg.proposal
        return self._vote_for(msg.proposal, sender, None)

    def _vote_for(self, p: Proposal, leader: str, now: float | None) -> list[Action]:
        prior = self._voted.get(p.size)
        if prior is not None and prior != p.root:
            return [Note(f"refused to cosign a second head of size {p.size} (would equivocate)")]
        self._voted[p.size] = p.root
        sig = TreeHead(p.size, p.root, p.time).sign(self._identity, self.genesis).signature
        vote = Vote(self.settings.run_id, self.s.round, p.size, p.root, sig)
        if leader == self.me:
            return self._on_vote(self.me, vote, now if now is not None else 0.0)
        return [Send(leader, vote)]

    def _on_vote(self, sender: str, msg: Vote, now: float) -> list[Action]:
        s = self.s
        p = s.proposal
        if p is None or s.phase is not Phase.VOTING or msg.round != s.round:
            return []
        if (msg.size, msg.root) != (p.size, p.root):
            raise ConsortiumError("vote for a different head")
        head = TreeHead(p.size, p.root, p.time).body()
        if not is_valid_signature(
            self._keys[sender], Domain.TREE_HEAD, head, msg.signature, self.genesis.digest()
        ):
            raise ConsortiumError("invalid cosignature")
        s.votes[sender] = msg.signature
        if len(s.votes) < self.genesis.quorum:
            return []
        s.phase = Phase.DONE
        votes = dict(s.votes)
        full = Commit(self.settings.run_id, s.round, p, votes)
        # Voters already hold the model and transcript from the Propose: send them the entry,
        # head and cosignatures only (the model was ~37% of a round's bytes when re-sent).
        light = Commit(self.settings.run_id, s.round, replace(p, model=b"", transcript=b""), votes)
        sends: list[Action] = [
            Send(m, light if m in votes else full) for m in self.members if m != self.me
        ]
        return [*sends, Committed(s.round, p, Entry.from_bytes(p.entry), votes)]

    def _on_commit(self, sender: str, msg: Commit) -> list[Action]:
        s = self.s
        if msg.run != self.settings.run_id or msg.round != s.round or s.phase is Phase.DONE:
            if msg.round > s.round:
                return [Note(f"commit for round {msg.round} while at {s.round}: catch up needed")]
            return []
        p = msg.proposal
        mine = s.accepted
        if not p.model and mine is not None and replace(mine, model=b"", transcript=b"") == p:
            p = mine  # a light commit of the proposal this node cosigned
        head = TreeHead(p.size, p.root, p.time).body()
        valid = {
            nid: sig
            for nid, sig in msg.cosignatures.items()
            if nid in self._keys
            and is_valid_signature(
                self._keys[nid], Domain.TREE_HEAD, head, sig, self.genesis.digest()
            )
        }
        if len(valid) < self.genesis.quorum:
            raise ConsortiumError(
                f"commit has {len(valid)} valid cosignatures, quorum is {self.genesis.quorum}"
            )
        entry = self._check_proposal(p)
        s.phase = Phase.DONE
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
        return actions + self._switch_attempt(s.attempt + 1, now)

    def _switch_attempt(self, attempt: int, now: float) -> list[Action]:
        s = self.s
        s.attempt = attempt
        s.attempt_started = now
        s.updates = {}
        s.proposal = None
        s.votes = {}
        s.leading = None
        s.client = None
        if s.local is None:
            s.phase = Phase.TRAINING
            return []
        if self.leader() == self.me:
            s.phase = Phase.COLLECTING
            s.updates[self.me] = self._my_update()
            return []
        s.phase = Phase.AWAITING
        return [Send(self.leader(), self._my_update())]

    def _my_update(self) -> Update:
        s = self.s
        assert s.local is not None
        return Update(
            self.settings.run_id,
            s.round,
            s.attempt,
            s.local.num_samples,
            b"" if self.settings.secure else s.local.update,  # secure: never reveal the update
            s.local.metrics,
            s.accepted,
            s.local.consent,
            s.local.erasures,
        )

    def _check_privacy(self, body: dict[str, Any]) -> None:
        """A voter recomputes the round's privacy spend from the history and the reports."""
        s = self.s
        if s.privacy is None:
            if body.get("privacy") is not None:
                raise ConsortiumError("the record claims a privacy spend in a run without DP")
            return
        claimed = body.get("privacy")
        if not isinstance(claimed, dict):
            raise ConsortiumError("the record lacks the round's privacy spend")
        record = {}
        for u, r in (claimed.get("record") or {}).items():
            params = reported_params({"dp": r})
            if params is None:
                raise ConsortiumError("malformed DP-SGD parameters in the record")
            record[u] = params
        mine = reported_params(s.local.metrics) if s.local is not None else None
        if self.me in record and record[self.me] != mine:
            raise ConsortiumError("the record misstates this node's DP-SGD parameters")
        try:
            expected = s.privacy.body(s.round, record)
        except ConsortiumError as exc:
            raise ConsortiumError(f"the round would break the privacy budget: {exc}") from exc
        if claimed != expected:
            raise ConsortiumError("the record's privacy spend is not what the ledger implies")

    # -- secure aggregation (SecAgg+) -----------------------------------------------------------

    def _start_secure(self, now: float) -> list[Action]:
        """As leader: open SecAgg+ among the participants whose updates arrived."""
        s = self.s
        parts = sorted(s.updates)
        params = self._secagg_params(s.attempt, parts)
        s.leading = LeaderAggregation(params, now, self._min_inputs(len(parts)))
        s.secagg_samples = {p: s.updates[p].num_samples for p in parts}
        s.phase = Phase.SECURE
        start = {START: {"participants": parts, "samples": s.secagg_samples}}
        actions: list[Action] = [Send(p, self._secagg_msg(start)) for p in parts if p != self.me]
        actions += self._client_start(params, s.secagg_samples)
        return actions + self._secure_progress(now)

    def _client_dp(self, n: int) -> tuple[float, ClientNoisePlan] | None:
        """(client clip, noise plan) under client-level DP with n participants, else None."""
        pv = self.s.privacy
        if pv is None or not pv.config.client_level:
            return None
        params = self._secagg_params(self.s.attempt, [f"p{i}" for i in range(n)])
        return pv.config.client_clip, client_plan(pv, n, params.scale, self.settings.model_size)

    def _secagg_params(self, attempt: int, parts: list[str]) -> SecAggParams:
        """The SecAgg+ parameters every node derives alike for this attempt and participants."""
        s = self.s
        rid = secagg_round_id(self.settings.run_id, s.round, attempt)
        pv = s.privacy
        if pv is None or not pv.config.client_level:
            return make_params(rid, parts, self.settings.model_size, self.settings.clip)
        clip = pv.config.client_clip
        scale = client_scale(pv, len(parts), self.settings.model_size)
        return make_params(rid, parts, self.settings.model_size, clip, scale=scale)

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
        if dp is None:
            weight = s.local.num_samples / sum(samples.values())
            vector = weighted_vector(delta, self.settings.clip, weight)
            s.client = ParticipantAggregation(params, self.me, vector)
        else:  # client-level DP: uniform weights, clipped delta, a share of the noise
            clip, plan = dp
            vector = weighted_vector(delta, clip, 1.0 / len(samples))
            s.client = ParticipantAggregation(params, self.me, vector, noise=plan)
        return self._to_leader(s.client.start())

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
        if msg.run != self.settings.run_id or msg.round != s.round or s.phase is Phase.DONE:
            return []
        if msg.attempt != s.attempt:
            return []
        if s.leading is not None and sender != self.me:
            try:
                s.leading.receive(sender, msg.body)
            except SecAggError as exc:
                return [
                    Note(
                        f"round {s.round}: secure aggregation refused {self._name(sender)}: {exc}"
                    ),
                    *self._secure_progress(now),
                ]
            return self._secure_progress(now)
        if sender != self.leader(msg.attempt):
            raise ConsortiumError("secure-aggregation message from a node that does not lead")
        if START in msg.body:
            start = msg.body[START]
            if s.local is None or not isinstance(start, dict):
                return []
            parts, samples = start.get("participants"), start.get("samples")
            if not isinstance(parts, list) or not isinstance(samples, dict):
                raise ConsortiumError("malformed secure-aggregation start")
            if self.me not in parts or sorted(samples) != sorted(parts):
                return []
            params = self._secagg_params(s.attempt, parts)
            s.phase = Phase.AWAITING
            return self._client_start(params, samples)
        if s.client is None:
            return []
        try:
            reply = s.client.on(msg.body)
        except SecAggError as exc:
            return [Note(f"round {s.round}: secure aggregation: {exc}")]
        return self._to_leader(reply) if reply is not None else []

    def _secure_progress(self, now: float) -> list[Action]:
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
                        reply = s.client.on(body)
                        if reply is not None:
                            actions += self._to_leader(reply)
                else:
                    actions.append(Send(recipient, self._secagg_msg(body)))
        if lead is not None and lead.stage_name == "done" and s.phase is Phase.SECURE:
            actions += self._propose(self._secure_proposal(lead, now), now)
        return actions

    def _secure_proposal(self, lead: LeaderAggregation, now: float) -> Proposal:
        s = self.s
        assert self._ops is not None
        transcript = encode(lead.agg.transcript().to_body())
        mean, tr = recompute_mean_delta(lead.params, transcript)
        model = self._ops.apply(s.model, mean)
        contributors = list(tr.survivors)
        body: dict[str, Any] = {
            "run": self.settings.run_id,
            "round": s.round,
            "attempt": s.attempt,
            "leader": self.me,
            "participants": contributors,
            "dropouts": [m for m in self.members if m not in contributors],
            "samples": {u: s.secagg_samples[u] for u in contributors},
            "updates": dict(tr.input_hashes),
            "metrics": {u: s.updates[u].metrics for u in contributors if u in s.updates},
            "model": self._cid_of(model),
            "prev_model": self._cid_of(s.model),
            "aggregation": "secagg+",
            "secagg": {**params_body(lead.params), "transcript": self._cid_of(transcript)},
        }
        return self._sign_proposal(body, model, transcript, now)

    def _check_secure(self, p: Proposal, body: dict[str, Any], hashes: dict[str, Any]) -> None:
        """A voter recomputes the model from the published SecAgg+ transcript."""
        s = self.s
        assert self._ops is not None
        info = body.get("secagg")
        if body.get("aggregation") != "secagg+" or not isinstance(info, dict):
            raise ConsortiumError("the record is not securely aggregated, as this run requires")
        params = params_from_body(info)
        attempt = body.get("attempt")
        if not isinstance(attempt, int):
            raise ConsortiumError("record lacks its attempt number")
        expected = self._secagg_params(attempt, list(params.participants))
        if params_body(params) != params_body(expected):
            raise ConsortiumError("secure-aggregation parameters differ from the agreed ones")
        if info.get("transcript") != self._cid_of(p.transcript):
            raise ConsortiumError("transcript bytes do not match the transcript CID")
        mean, tr = recompute_mean_delta(params, p.transcript)
        if list(tr.survivors) != body.get("participants") or dict(tr.input_hashes) != hashes:
            raise ConsortiumError("record and transcript disagree on contributors")
        if self._ops.apply(s.model, mean) != p.model:
            raise ConsortiumError("the model is not the global model plus the secure aggregate")
        mine = s.client.input_hash if s.client is not None else None
        if mine is not None and self.me in hashes and hashes[self.me] != mine:
            raise ConsortiumError("the record commits to a masked input this node did not send")

    def _name(self, node_id: str) -> str:
        for m in self.genesis.members:
            if m.node_id == node_id:
                return m.name
        return node_id[:12]

"""`verify_round_record`: the one check a round record must pass, for voters and auditors alike.

A member calls it before cosigning a proposal; `audit` calls it on every stored record. It is a
pure function of the record and a `RecordContext` that carries everything the caller fetched
(genesis, the previous and proposed models, the SecAgg+
transcript, the run's configuration and privacy history) plus, for a voter, what the voter itself
did in this round. A check therefore exists for both callers or for neither.

Each refusal is a `RecordRejected` whose `rule` names the rule broken (the constants below), so
tests, logs and audit reports say which rule a record broke, not only that it failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from multiformats import CID

from consortium.consent.commitments import RoundCommitment
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis
from consortium.core.threshold import ThresholdError
from consortium.privacy.errors import BudgetExceeded
from consortium.protocol.beacon import (
    BeaconPartial,
    attempt_beacon,
    beacon_message,
    value_from_partials,
)
from consortium.protocol.committee import committee_for
from consortium.protocol.privacy_round import (
    RecordParams,
    RoundPrivacy,
    missing_shares,
    record_params_of,
)
from consortium.protocol.record import (
    Erasure,
    Evaluation,
    FinalRecord,
    RoundRecord,
    TestDataCommitment,
)
from consortium.protocol.schedule import leader_for
from consortium.protocol.secagg import SecAggParams
from consortium.protocol.secure_round import (
    member_verifier,
    params_body,
    params_from_body,
    recompute_mean_delta,
)
from consortium.protocol.storage import (
    CHALLENGE_ARTIFACTS,
    AnswerScope,
    StorageState,
    artifact_name,
    check_answers,
    commit_artifact,
    is_challenge_round,
)
from consortium.store.cid import cid_key
from consortium.zk import errors as zk

if TYPE_CHECKING:
    from consortium.zk.proof import EvalClaims

# Rule names (stable: tests and audit reports refer to them).
RUN = "run"  # the record is for another run, round or ledger slot
BEACON = "beacon-invalid"  # the record's partials do not prove the round's beacon
ATTEMPT = "attempt-not-current"  # the record's attempt is ahead of the voter's current attempt
LEADER = "author-not-attempt-leader"  # the author did not lead the attempt the record names
MEMBERS = "participants-not-members"  # a participant or dropout is not a genesis member
CONTRIBUTORS = "too-few-contributors"  # fewer contributors than the run's minimum
SHAPE = "inconsistent-record"  # participants, samples, commitments, metrics disagree
OWN_MISSING = "own-update-missing"  # the voter sent its update, the record leaves it out
OWN_MISSTATED = "own-update-misstated"  # the record misstates the voter's own contribution
PREV_MODEL = "prev-model-mismatch"  # the round does not start from this round's global model
MODEL = "model-mismatch"  # the model bytes do not match the record's CID
AGGREGATION = "aggregation-mismatch"  # plaintext record in a secure run, or the reverse
SUM = "sum-mismatch"  # the model is not the previous model plus the published secure sum
PRIVACY = "privacy-mismatch"  # the privacy spend is not what the ledger and reports imply
CONSENT = "consent-mismatch"  # consent commitments or erasures of non-participants
CONFIG = "config-mismatch"  # a run no quorum agreed to (checked where runs are read: audit)
METRICS = "metrics-in-the-clear"  # per-node figures other than DP parameters
STORAGE_COMMITMENT = "storage-commitment-mismatch"  # roots, sizes or holders not as recomputed
STORAGE_PROOF = "storage-proof-invalid"  # answers and missing are not the challenges, proved
OWN_ANSWER = "own-answer-missing"  # the voter answered its challenge, the record leaves it out
TESTDATA = "testdata-invalid"  # a test-data commitment out of place (issue 18)
EVALUATION = "evaluation-invalid"  # a listed proof of evaluation that does not verify
OWN_PROOF = "own-proof-missing"  # the voter's proof or test-data commitment left out
COMMITTEE = "participants-not-committee"  # contributors outside the beacon's committee

#: The only per-node metrics a record may carry: DP-SGD parameters (public, and accounted).
PUBLISHED_METRICS = frozenset({"dp"})


class RecordRejected(ConsortiumError):
    """A round record broke `rule`; the message says how."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} [rule {rule}]")
        self.rule = rule


@dataclass(frozen=True)
class OwnContribution:
    """What the verifying member contributed to this round (voters only)."""

    node: str
    num_samples: int
    consent: RoundCommitment | None
    erasures: tuple[Erasure, ...]
    dp: RecordParams | None
    #: attempt -> commitment to what this node sent that attempt's leader (sha256 of its update
    #: in plaintext runs, of its masked input under SecAgg+).
    sent: Mapping[int, bytes] = field(default_factory=dict)
    #: attempt -> the (artifact, holder) challenges this node answered with valid proofs to
    #: that attempt's leader (rule own-answer-missing).
    answered: Mapping[int, frozenset[tuple[str, str]]] = field(default_factory=dict)
    #: The test-data commitment and the proofs of evaluation this node sent with its update.
    testdata: TestDataCommitment | None = None
    evaluations: tuple[Evaluation, ...] = ()


@dataclass(frozen=True)
class StorageRules:
    """A run's replication settings and what its earlier records committed."""

    replicas: int
    challenge_every: int
    state: StorageState = field(default_factory=StorageState)
    #: Artifacts a challenge round challenges at most (drawn from its beacon).
    challenge_artifacts: int = CHALLENGE_ARTIFACTS


#: check(evaluation, the node's committed test data, the proof artifact's bytes) -> the claims
#: the proof was verified for; raises a ZkError naming the zk rule otherwise.
CheckEvaluation = Callable[[Evaluation, TestDataCommitment, bytes], "EvalClaims"]


@dataclass(frozen=True)
class ProofState:
    """A run with proofs of evaluation (issue 18), as the ledger stands before the record:
    the agreed proof parameters, each node's committed test data, the proofs already listed,
    the models of the run's committed rounds, and the caller's proof check (EZKL, I/O)."""

    prove_every: int
    rounds: int
    s: int
    settings: str  # sha256 of the pinned circuit settings
    srs: str  # sha256 of the agreed SRS
    test_only: bool
    committed: Mapping[str, tuple[int, TestDataCommitment]]  # node -> (round, commitment)
    listed: frozenset[tuple[str, int]]  # (node, round) of proofs already on the ledger
    models: Mapping[int, CID]  # round -> model CID of this run's committed rounds
    check: CheckEvaluation

    def proves(self, round_no: int) -> bool:
        return round_no % self.prove_every == 0 or round_no == self.rounds


@dataclass(frozen=True)
class RecordContext:
    genesis: Genesis
    author: str  # the entry's (signature-checked) author
    run_id: str
    round: int
    slot: int  # the ledger index the record takes
    prev_model: bytes  # the global model the round starts from
    model: bytes  # the proposed model's bytes
    cid_of: Callable[[bytes], CID]
    secure: bool
    min_contributors: int
    transcript: bytes = b""
    #: SecAgg+ parameters every node derives for (beacon, attempt, participants).
    secagg_params: Callable[[bytes, int, list[str]], SecAggParams] | None = None
    apply_delta: Callable[[bytes, npt.NDArray[np.float64]], bytes] | None = None
    privacy: RoundPrivacy | None = None
    #: f, the colluders the noise of a client-level DP sum is sized against.
    colluders: int = 0
    #: The voter's current attempt (None for an auditor, who checks a record after the fact).
    current_attempt: int | None = None
    own: OwnContribution | None = None
    #: Replication with retrievability challenges; None in a run without (no storage section).
    storage: StorageRules | None = None
    #: Proofs of evaluation: None in a run without them.
    proofs: ProofState | None = None
    #: Proof artifacts the caller holds (a proposal's, or the store's), by CID string.
    artifacts: Mapping[str, bytes] = field(default_factory=dict)
    #: K, the run's committee size (0: every member contributes to every round).
    committee: int = 0
    #: (beacon message, partials on it) the caller already verified (a voter's own collector):
    #: a record's partial equal to one of them, for the same message, is not verified again.
    beacon_checked: tuple[bytes, frozenset[BeaconPartial]] | None = None


def _require(ok: bool, rule: str, message: str) -> None:
    if not ok:
        raise RecordRejected(rule, message)


def verify_round_record(record: RoundRecord, ctx: RecordContext) -> None:
    """Raise RecordRejected naming the first rule `record` breaks in `ctx`."""
    members = sorted(m.node_id for m in ctx.genesis.members)
    _require(
        (record.run, record.round, record.slot) == (ctx.run_id, ctx.round, ctx.slot),
        RUN,
        f"the record is for run {record.run!r} round {record.round} slot {record.slot}, "
        f"expected run {ctx.run_id!r} round {ctx.round} slot {ctx.slot}",
    )
    beacon = record_beacon(record, ctx.genesis, ctx.beacon_checked)
    _require(
        record.committee == ctx.committee,
        COMMITTEE,
        f"the record states a committee of {record.committee or 'every member'}, the run's is "
        f"{ctx.committee or 'every member'}",
    )
    committee = round_committee(beacon, members, ctx.committee)
    _check_leader(record, ctx, committee, beacon)
    _check_participants(record, ctx, members, committee)
    if ctx.own is not None:
        _check_own(record, ctx.own)
    _require(
        record.prev_model == ctx.cid_of(ctx.prev_model),
        PREV_MODEL,
        "the record starts from another global model than this round's",
    )
    _require(
        record.model == ctx.cid_of(ctx.model),
        MODEL,
        "the model bytes do not match the model CID in the record",
    )
    expected = "secagg+" if ctx.secure else "fedavg"
    _require(
        record.aggregation == expected and (record.secagg is not None) == ctx.secure,
        AGGREGATION,
        f"the record's aggregation is {record.aggregation!r}, this run's is {expected!r}",
    )
    if ctx.secure:
        _check_secure_sum(record, ctx, beacon)
    _check_privacy(record, ctx)
    _check_storage(record, ctx, members, beacon)
    _check_proofs(record, ctx)


def record_beacon(
    record: RoundRecord,
    genesis: Genesis,
    checked: tuple[bytes, frozenset[BeaconPartial]] | None = None,
) -> bytes:
    """The round's beacon, from the t partials the record carries, each checked against its
    member's verification key; any t valid partials give the same value, so the leader cannot
    choose it by choosing which partials to include. `checked`: (message, partials) the caller
    verified already; used only when it is this record's message."""
    message = beacon_message(genesis.digest(), record.run, record.round)
    known = checked[1] if checked is not None and checked[0] == message else frozenset()
    try:
        return value_from_partials(genesis.group_key(), message, record.beacon, known)
    except ThresholdError as exc:
        raise RecordRejected(BEACON, f"the record's beacon does not verify: {exc}") from exc


def round_committee(beacon: bytes, members: list[str], k: int) -> list[str]:
    """The members who may contribute to (and lead) the round whose beacon is `beacon`: the
    committee of `k` drawn from it, or every member when `k` is 0."""
    return committee_for(beacon, members, k) if k else list(members)


def _check_leader(
    record: RoundRecord, ctx: RecordContext, committee: list[str], beacon: bytes
) -> None:
    if ctx.current_attempt is not None:
        _require(
            record.attempt <= ctx.current_attempt,
            ATTEMPT,
            f"the record is for attempt {record.attempt}, this node is at attempt "
            f"{ctx.current_attempt}",
        )
    leader = leader_for(beacon, record.round, record.attempt, committee)
    # A re-proposed record keeps its author: it must be the leader of the attempt it names,
    # which for a re-proposal is an earlier attempt of this round.
    _require(
        ctx.author == record.leader == leader,
        LEADER,
        f"the record of attempt {record.attempt} is authored by {_name(ctx, ctx.author)} "
        f"(naming {_name(ctx, record.leader)}), but {_name(ctx, leader)} leads that attempt",
    )


def _check_participants(
    record: RoundRecord, ctx: RecordContext, members: list[str], committee: list[str]
) -> None:
    parts = set(record.participants)
    outsiders = sorted(parts - set(members))
    _require(
        not outsiders,
        MEMBERS,
        f"participants {', '.join(p[:16] for p in outsiders)} are not consortium members",
    )
    if ctx.committee:
        strangers = sorted(parts - set(committee))
        _require(
            not strangers,
            COMMITTEE,
            f"participants {', '.join(_name(ctx, p) for p in strangers)} are not in the "
            f"committee of {ctx.committee} that round {record.round}'s beacon draws",
        )
        _require(
            list(record.dropouts) == [m for m in committee if m not in parts],
            COMMITTEE,
            "dropouts are not exactly the committee members that did not contribute",
        )
    else:
        _require(
            list(record.dropouts) == [m for m in members if m not in parts],
            MEMBERS,
            "dropouts are not exactly the members that did not contribute",
        )
    _require(
        len(parts) >= ctx.min_contributors,
        CONTRIBUTORS,
        f"{len(parts)} contributors, the run needs at least {ctx.min_contributors}",
    )
    _require(
        sorted(record.samples) == sorted(record.updates) == list(record.participants),
        SHAPE,
        "participants, sample counts and update commitments disagree",
    )
    _require(
        set(record.metrics) <= parts,
        SHAPE,
        "the record carries metrics of nodes that did not contribute",
    )
    clear = sorted({k for m in record.metrics.values() for k in m} - PUBLISHED_METRICS)
    _require(
        not clear,
        METRICS,
        f"the record publishes per-node {', '.join(clear)} in the clear",
    )
    _require(
        set(record.consent) <= parts and set(record.erasures) <= parts,
        CONSENT,
        "the record carries consent commitments or erasures of nodes that did not contribute",
    )


def _check_own(record: RoundRecord, own: OwnContribution) -> None:
    me = own.node
    sent = own.sent.get(record.attempt)
    if me not in record.participants:
        _require(
            sent is None,
            OWN_MISSING,
            f"this node sent its contribution to attempt {record.attempt}, "
            "and the record leaves it out",
        )
        return
    _require(
        sent is None or record.updates[me] == sent,
        OWN_MISSTATED,
        "the record commits to an update this node did not send",
    )
    _require(
        record.samples[me] == own.num_samples,
        OWN_MISSTATED,
        "the record misstates this node's sample count",
    )
    _require(
        record.consent.get(me) == own.consent,
        OWN_MISSTATED,
        "the record misstates this node's consent commitment",
    )
    _require(
        tuple(record.erasures.get(me, ())) == own.erasures,
        OWN_MISSTATED,
        "the record misstates this node's erasures",
    )
    _require(
        own.testdata is None or record.testdata.get(me) == own.testdata,
        OWN_PROOF,
        "this node sent its test-data commitment with its update, and the record leaves it out "
        "or misstates it",
    )
    dropped = [e.round for e in own.evaluations if e not in record.evaluations]
    _require(
        not dropped,
        OWN_PROOF,
        f"this node sent its proof of evaluation of round(s) {dropped} with its update, and "
        "the record leaves it out or misstates it",
    )


def _check_proofs(record: RoundRecord, ctx: RecordContext) -> None:
    """The test-data commitments and proofs of evaluation a record carries (issue 18)."""
    ps = ctx.proofs
    if ps is None:
        _require(not record.testdata, TESTDATA, "a test-data commitment in a run without proofs")
        _require(not record.evaluations, EVALUATION, "proofs of evaluation in a run without proofs")
        return
    for node, c in record.testdata.items():
        _require(
            node in record.participants,
            TESTDATA,
            f"a test-data commitment of {_name(ctx, node)}, which did not contribute",
        )
        _require(
            node not in ps.committed,
            TESTDATA,
            f"{_name(ctx, node)} committed to its test data before in this run (round "
            f"{ps.committed[node][0] if node in ps.committed else 0})",
        )
        _require(
            (c.settings, c.srs) == (ps.settings, ps.srs),
            TESTDATA,
            f"{_name(ctx, node)}'s test-data commitment is under other circuit settings or "
            "another SRS than the run's",
        )
    keys = [(e.node, e.round) for e in record.evaluations]
    _require(
        keys == sorted(set(keys)),
        EVALUATION,
        "evaluations must be sorted by (node, round) and distinct",
    )
    for ev in record.evaluations:
        _check_evaluation(record, ctx, ps, ev)


def _check_evaluation(
    record: RoundRecord, ctx: RecordContext, ps: ProofState, ev: Evaluation
) -> None:
    verify_evaluation(
        ev,
        round_no=record.round,
        proofs=ps,
        genesis=ctx.genesis,
        artifact=ctx.artifacts.get(cid_key(ev.proof)),
        cid_of=ctx.cid_of,
    )


def verify_evaluation(
    ev: Evaluation,
    *,
    round_no: int,
    proofs: ProofState,
    genesis: Genesis,
    artifact: bytes | None,
    cid_of: Callable[[bytes], CID],
) -> None:
    """Refuse (`evaluation-invalid`, with the zk rule in the message) a proof of evaluation that
    a record of round `round_no` may not list: the leader runs it on each proof it receives
    before listing it, voters and `audit` on each listed one."""
    ps = proofs
    who = f"{member_name(genesis, ev.node)}'s proof of round {ev.round}"

    def bad(rule: str, message: str) -> RecordRejected:
        return RecordRejected(EVALUATION, f"{who}: {rule}: {message}")

    if ev.node not in {m.node_id for m in genesis.members}:
        raise bad(zk.MODEL_MISMATCH, "the node is not a member")
    if (ev.node, ev.round) in ps.listed:
        raise bad(zk.PROOF_MALFORMED, "already listed in an earlier record of this run")
    if not ps.proves(ev.round) or ev.round + 1 >= round_no:
        raise bad(
            zk.MODEL_MISMATCH,
            f"round {ev.round}'s model is not proved in this run, or not yet: its sample comes "
            f"from the beacon of round {ev.round + 1}, which must be on the ledger",
        )
    if ps.models.get(ev.round) != ev.model:
        raise bad(zk.MODEL_MISMATCH, f"the listed model is not round {ev.round}'s model")
    found = ps.committed.get(ev.node)
    if found is None or found[0] > ev.round:
        raise bad(
            zk.COMMITMENT_MISMATCH,
            f"the node committed no test data in this run by round {ev.round}",
        )
    if (ev.s, ev.test_only) != (ps.s, ps.test_only):
        raise bad(zk.SETTINGS_MISMATCH, "a sample size or SRS label other than the run's")
    if artifact is None or cid_of(artifact) != ev.proof:
        raise bad(zk.PROOF_MALFORMED, f"the proof artifact {ev.proof} is not at hand")
    try:
        claims = ps.check(ev, found[1], artifact)
    except ConsortiumError as exc:
        raise RecordRejected(EVALUATION, f"{who}: {exc}") from exc
    if claims.model != cid_key(ev.model):
        raise bad(zk.MODEL_MISMATCH, f"the proof is for model {claims.model}")
    if claims.correct != ev.correct:
        raise bad(
            zk.ACCURACY_MISMATCH,
            f"the record lists {ev.correct} correct of {ev.s}, the proof shows {claims.correct}",
        )
    if claims.s != ev.s or claims.test_only != ev.test_only:
        raise bad(zk.SETTINGS_MISMATCH, "the record misstates the proof's s or SRS label")
    if (claims.testdata_root, claims.testdata_size) != (found[1].root, found[1].size):
        raise bad(zk.COMMITMENT_MISMATCH, "the proof is on another test-data commitment")


def final_beacon(record: FinalRecord, genesis: Genesis) -> bytes:
    """The beacon the final model's sample is drawn from: "round R + 1"'s value (R the run's
    last round), from the t partials a run-final record carries, each checked, taken at
    attempt 0 (no attempt of round R + 1 ever runs)."""
    message = beacon_message(genesis.digest(), record.run, record.round + 1)
    try:
        value = value_from_partials(genesis.group_key(), message, record.beacon)
    except ThresholdError as exc:
        raise RecordRejected(BEACON, f"the run-final beacon does not verify: {exc}") from exc
    return attempt_beacon(value, 0)


def check_proof_artifacts(
    artifacts: Sequence[bytes], evaluations: Sequence[Evaluation], cid_of: Callable[[bytes], CID]
) -> None:
    """The proof artifacts a proposal carries are exactly the listed proofs, in order: every
    member stores them with the entry, so a leader may not ride anything else along (or leave
    a listed one out). Raises RecordRejected (`evaluation-invalid`)."""
    carried = [cid_key(cid_of(a)) for a in artifacts]
    listed = [cid_key(e.proof) for e in evaluations]
    _require(
        carried == listed,
        EVALUATION,
        f"the proposal carries {len(carried)} proof artifact(s) that are not exactly the "
        f"{len(listed)} listed proof(s)",
    )


def verify_final_record(
    record: FinalRecord,
    *,
    run_id: str,
    proofs: ProofState,
    genesis: Genesis,
    artifacts: Mapping[str, bytes],
    cid_of: Callable[[bytes], CID],
    own: tuple[Evaluation, ...] | None = None,
) -> None:
    """Refuse, naming the rule, a run-final record (the proofs of a run's final model, issue
    18): for this run, after its last round (whose model the proofs must be of), with t valid
    partials of round R + 1's beacon, its proofs sorted by node, each passing
    `verify_evaluation` as in a round record. `own`: the voter's own proofs of the final model
    (sent, or being made): a record that leaves one out is refused (`own-proof-missing`), so no
    proposer can drop a node's proof. Voters run it before cosigning, `audit` on the entry."""
    last = proofs.rounds
    _require(
        record.run == run_id and record.round == last and last in proofs.models,
        RUN,
        f"a run-final record for run {record.run!r} round {record.round}: expected run "
        f"{run_id!r} after its last round {last}, committed",
    )
    final_beacon(record, genesis)
    if own is not None:
        dropped = [e.round for e in own if e not in record.evaluations]
        _require(
            not dropped,
            OWN_PROOF,
            f"this node's proof of the final model (round {last}) is left out or misstated",
        )
    keys = [e.node for e in record.evaluations]
    _require(keys == sorted(set(keys)), EVALUATION, "evaluations must be sorted by node, distinct")
    for ev in record.evaluations:
        _require(
            ev.round == last,
            EVALUATION,
            f"a run-final record lists a proof of round {ev.round}, not of the final model "
            f"(round {last})",
        )
        verify_evaluation(
            ev,
            round_no=last + 2,
            proofs=proofs,
            genesis=genesis,
            artifact=artifacts.get(cid_key(ev.proof)),
            cid_of=cid_of,
        )


def _check_secure_sum(record: RoundRecord, ctx: RecordContext, beacon: bytes) -> None:
    assert record.secagg is not None
    if ctx.secagg_params is None or ctx.apply_delta is None:
        raise ConsortiumError("verifying a secure round needs the model arithmetic")
    try:
        params = params_from_body(dict(record.secagg.params))
    except ConsortiumError as exc:
        raise RecordRejected(SUM, str(exc)) from exc
    expected = ctx.secagg_params(beacon, record.attempt, list(params.participants))
    _require(
        params_body(params) == params_body(expected),
        SUM,
        "secure-aggregation parameters differ from the ones every node derives",
    )
    _require(
        record.secagg.transcript == ctx.cid_of(ctx.transcript),
        SUM,
        "the transcript bytes do not match the transcript CID",
    )
    try:
        mean, tr = recompute_mean_delta(params, ctx.transcript, member_verifier(ctx.genesis))
    except ConsortiumError as exc:
        raise RecordRejected(SUM, str(exc)) from exc
    _require(
        list(tr.survivors) == list(record.participants)
        and dict(tr.input_hashes) == dict(record.updates),
        SUM,
        "the record and the transcript disagree on contributors",
    )
    pv = ctx.privacy
    if pv is not None and pv.config.client_level:
        n = len(params.participants)
        try:
            need = n - missing_shares(pv, n, ctx.colluders)
        except ConsortiumError as exc:
            raise RecordRejected(PRIVACY, str(exc)) from exc
        _require(
            len(record.participants) >= need,
            PRIVACY,
            f"{len(record.participants)} noise shares in the sum, it was sized for {need}",
        )
    try:
        model = ctx.apply_delta(ctx.prev_model, mean)
    except ConsortiumError as exc:
        raise RecordRejected(SUM, str(exc)) from exc
    _require(
        model == ctx.model,
        SUM,
        "the model is not the previous global model plus the secure aggregate",
    )


def _check_privacy(record: RoundRecord, ctx: RecordContext) -> None:
    if ctx.privacy is None:
        _require(
            record.privacy is None, PRIVACY, "the record claims a privacy spend in a run without DP"
        )
        return
    _require(record.privacy is not None, PRIVACY, "the record lacks the round's privacy spend")
    assert record.privacy is not None
    try:
        params = record_params_of(record.privacy)
    except ConsortiumError as exc:
        raise RecordRejected(PRIVACY, str(exc)) from exc
    if ctx.privacy.config.record_level:
        _require(
            sorted(params) == list(record.participants),
            PRIVACY,
            "the record-level spend does not cover exactly the contributors",
        )
    own = ctx.own
    if own is not None and own.node in params:
        _require(
            params[own.node] == own.dp,
            PRIVACY,
            "the record misstates this node's DP-SGD parameters",
        )
    try:
        expected = ctx.privacy.body(record.round, params)
    except BudgetExceeded as exc:
        raise RecordRejected(PRIVACY, f"the round would break the privacy budget: {exc}") from exc
    _require(
        dict(record.privacy) == expected,
        PRIVACY,
        "the record's privacy spend is not what the ledger implies",
    )


def _check_storage(
    record: RoundRecord, ctx: RecordContext, members: list[str], beacon: bytes
) -> None:
    """The storage section: the commitments recomputed from the artifacts' bytes and the
    beacon (and the re-commitments earlier records owe), then the challenge answers."""
    rules, section = ctx.storage, record.storage
    if rules is None:
        _require(
            section is None,
            STORAGE_COMMITMENT,
            "the record carries a storage section in a run without replication",
        )
        return
    _require(
        section is not None, STORAGE_COMMITMENT, "the record lacks the round's storage section"
    )
    assert section is not None
    value = attempt_beacon(beacon, record.attempt)
    made = [(artifact_name(record.model), ctx.model)]
    if record.secagg is not None:
        made.append((artifact_name(record.secagg.transcript), ctx.transcript))
    expected = [
        commit_artifact(value, cid, data, record.leader, members, rules.replicas)
        for cid, data in made
    ] + list(rules.state.owed)
    got = list(section.commitments)
    _require(
        [c.artifact for c in got] == [c.artifact for c in expected],
        STORAGE_COMMITMENT,
        f"the record commits artifacts {[c.artifact for c in got]}, the round owes "
        f"{[c.artifact for c in expected]}",
    )
    for g, e in zip(got, expected, strict=True):
        _require(
            (g.root, g.size) == (e.root, e.size),
            STORAGE_COMMITMENT,
            f"the committed root or size of {g.artifact} is not that of its bytes",
        )
        _require(
            g.holders == e.holders,
            STORAGE_COMMITMENT,
            f"the holders of {g.artifact} are not the ones the beacon picks",
        )
    listed = {(a.artifact, a.holder) for a in section.answers}
    own = ctx.own
    if own is not None:
        for artifact, holder in sorted(own.answered.get(record.attempt, ())):
            _require(
                (artifact, holder) in listed,
                OWN_ANSWER,
                f"this node answered its challenge on {artifact}, and the record "
                + (
                    "lists it missing" if (artifact, holder) in section.missing else "leaves it out"
                ),
            )
    challenged = (
        rules.state.challenged(value, rules.challenge_artifacts)
        if is_challenge_round(record.round, rules.challenge_every)
        else []
    )
    scope = AnswerScope(
        ctx.genesis.digest(),
        record.run,
        record.round,
        record.attempt,
        {m.node_id: m.public_key for m in ctx.genesis.members},
    )
    try:
        check_answers(challenged, section.answers, section.missing, scope)
    except ConsortiumError as exc:
        raise RecordRejected(STORAGE_PROOF, str(exc)) from exc


def storage_after(state: StorageState, record: RoundRecord, genesis: Genesis) -> StorageState:
    """The storage state once `record` (already verified) is committed: what the next round's
    challenges and re-commitments are computed from, alike by voters, the node and `audit`."""
    section = record.storage
    if section is None:
        return state
    members = sorted(m.node_id for m in genesis.members)
    # The beacon picks replacement holders only when a holder was named missing.
    value = (
        attempt_beacon(record_beacon(record, genesis), record.attempt)
        if section.missing
        else bytes(32)
    )
    return state.after(value, section.commitments, section.answers, section.missing, members)


def _name(ctx: RecordContext, node_id: str) -> str:
    return member_name(ctx.genesis, node_id)


def member_name(genesis: Genesis, node_id: str) -> str:
    """The genesis name of member `node_id` (what refusals and reports show), else the first 16
    characters of the id."""
    for m in genesis.members:
        if m.node_id == node_id:
            return m.name
    return node_id[:16]

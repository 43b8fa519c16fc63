"""The round record: the typed, versioned body of a "round" ledger entry, and its one codec.

Every reader of a round record (the round machine, the node, the privacy budget, consent receipts,
the demo, `audit`) goes through `RoundRecord.from_body`, which shape-checks every field with
explicit bounds and refuses unknown fields, so nothing outside this module reads a record field
by string. The verifier that decides whether a record may be cosigned (or passes audit) is
`protocol.verifier.verify_round_record`; it works on this type.

Layout (version 2). Core fields are always present; optional sections appear only when the run
uses them:

    v            2
    run, round, attempt, leader, slot
    beacon       t members' partials of the round's beacon, with proofs (`protocol/beacon.py`):
                 they prove the value the leader order and the SecAgg+ graph derive from
    participants sorted member ids whose contribution is in the model
    dropouts     the other members (sorted)
    samples      node -> sample count          updates  node -> 32-byte commitment
    metrics      node -> small map (reported by the node itself)
    model, prev_model  CIDs                    aggregation  "fedavg" | "secagg+"
    consent      node -> {root, count, purpose} (no identifiers)
    erasures     node -> [{records, at}]
    secagg       (optional) SecAgg+ parameters and the transcript's CID
    privacy      (optional) the round's spend; its codec is `privacy.budget`
    storage      (optional: runs with `replicas` or `challenge_every`) the Merkle roots and
                 holders of the artifacts the round made, and in a challenge round the holders'
                 proofs and who failed to answer (`protocol/storage.py`)
    testdata     (optional) node -> {root, size, settings, srs}: a contributor's commitment to
                 its test records for proofs of evaluation, made once per run
    evaluations  (optional) [{node, round, proof, model, s, correct, test_only}]: proofs of
                 evaluation of earlier rounds' models (the proof artifact is in the store)
    committee    (optional: runs with `committee_size`) K, the size of the round's committee,
                 which every reader recomputes from the beacon (`protocol/committee.py`);
                 participants are within it and dropouts are the rest of it

The run a record belongs to was agreed before its first round: a "run-config" entry (`RunRecord`,
below) cosigned by a quorum, whose configuration hashes to the run id every record names.

Later issues add sections (proofs of evaluation, a consent-history head): each is
a new optional key with its own typed section here and its own rule in the verifier; a reader of
this version refuses keys it does not know, so no section can ride along unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from multiformats import CID

from consortium.consent.commitments import RoundCommitment
from consortium.consent.erasure import RoundRef
from consortium.core.errors import ConsortiumError
from consortium.core.threshold import ThresholdError
from consortium.ledger.entries import Entry
from consortium.privacy.budget import spend_purpose
from consortium.protocol.beacon import BeaconPartial, partials_body, partials_from_body
from consortium.protocol.storage import MAX_ENTRIES, Commitment, HolderAnswer

if TYPE_CHECKING:
    from consortium.ledger.log import Ledger

#: 2: the beacon's partials (version 1 scheduled from the ledger root, which leaders could grind).
RECORD_VERSION = 2
#: Version of the run-config and run-stop bodies.
RUN_RECORD_VERSION = 1
ROUND_KIND = "round"
Aggregation = Literal["fedavg", "secagg+"]
_AGGREGATIONS = ("fedavg", "secagg+")
_CORE = frozenset(
    {
        "v",
        "run",
        "round",
        "attempt",
        "leader",
        "slot",
        "beacon",
        "participants",
        "dropouts",
        "samples",
        "updates",
        "metrics",
        "model",
        "prev_model",
        "aggregation",
        "consent",
        "erasures",
    }
)
_OPTIONAL = frozenset({"secagg", "privacy", "storage", "testdata", "evaluations", "committee"})
_MAX_EVALUATIONS = 10_000
_MAX_MEMBERS = 10_000
_MAX_METRICS = 64


class RecordFormatError(ConsortiumError):
    """A round record is malformed: a missing, extra or wrongly typed field."""


def _fail(message: str) -> RecordFormatError:
    return RecordFormatError(f"malformed round record: {message}")


def _int(b: Mapping[str, Any], key: str, lo: int = 0) -> int:
    v = b.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v < 2**63:
        raise _fail(f"{key!r} must be an integer >= {lo}")
    return v


def _str(v: Any, what: str, max_len: int = 256) -> str:
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise _fail(f"{what} must be a non-empty string of at most {max_len} characters")
    return v


def _cid(v: Any, what: str) -> CID:
    if not isinstance(v, CID):
        raise _fail(f"{what} must be a CID")
    return v


def _ids(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > _MAX_MEMBERS:
        raise _fail(f"{what} must be a list of node ids")
    ids = tuple(_str(x, f"an entry of {what}") for x in v)
    if list(ids) != sorted(set(ids)):
        raise _fail(f"{what} must be sorted and distinct")
    return ids


def _by_node(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or len(v) > _MAX_MEMBERS:
        raise _fail(f"{what} must be a map from node id")
    for k in v:
        _str(k, f"a key of {what}")
    return v


@dataclass(frozen=True)
class Erasure:
    """Records a node erased (crypto-shredded) since its previous round, and when (ms)."""

    records: int
    at: int

    def to_body(self) -> dict[str, Any]:
        return {"records": self.records, "at": self.at}

    @classmethod
    def from_body(cls, b: Any) -> Erasure:
        if not isinstance(b, dict) or set(b) != {"records", "at"}:
            raise _fail("an erasure must be {records, at}")
        return cls(_int(b, "records", 1), _int(b, "at"))


@dataclass(frozen=True)
class SecAggSection:
    """The SecAgg+ parameters of the attempt and the CID of its published transcript."""

    params: Mapping[str, Any]
    transcript: CID

    def to_body(self) -> dict[str, Any]:
        return {**self.params, "transcript": self.transcript}

    @classmethod
    def from_body(cls, b: Any) -> SecAggSection:
        if not isinstance(b, dict) or "transcript" not in b:
            raise _fail("'secagg' must be a map with a transcript CID")
        params = {k: v for k, v in b.items() if k != "transcript"}
        return cls(params, _cid(b["transcript"], "secagg transcript"))


def _sha256_hex(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise _fail(f"{what} must be a sha256 in lowercase hex")
    return v


@dataclass(frozen=True)
class TestDataCommitment:
    """A node's commitment to its test records (issue 18): the Merkle root over per-record
    KZG commitments and their number, under the run's circuit settings and SRS (their sha256).
    Made once per run, in a record before any beacon that could sample it."""

    __test__ = False  # not a pytest class

    root: bytes
    size: int
    settings: str
    srs: str

    def to_body(self) -> dict[str, Any]:
        return {"root": self.root, "size": self.size, "settings": self.settings, "srs": self.srs}

    @classmethod
    def from_body(cls, b: Any) -> TestDataCommitment:
        if not isinstance(b, dict) or set(b) != {"root", "size", "settings", "srs"}:
            raise _fail("a test-data commitment must be {root, size, settings, srs}")
        if not isinstance(b["root"], bytes) or len(b["root"]) != 32:
            raise _fail("a test-data root must be 32 bytes")
        return cls(
            b["root"],
            _int(b, "size", 1),
            _sha256_hex(b["settings"], "settings"),
            _sha256_hex(b["srs"], "srs"),
        )


@dataclass(frozen=True)
class Evaluation:
    """A listed proof of evaluation: `node` proved the model of round `round` (CID `model`)
    correct on `correct` of `s` sampled committed test records; the artifact is `proof`."""

    node: str
    round: int
    proof: CID
    model: CID
    s: int
    correct: int
    test_only: bool

    def to_body(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "round": self.round,
            "proof": self.proof,
            "model": self.model,
            "s": self.s,
            "correct": self.correct,
            "test_only": self.test_only,
        }

    @classmethod
    def from_body(cls, b: Any) -> Evaluation:
        keys = {"node", "round", "proof", "model", "s", "correct", "test_only"}
        if not isinstance(b, dict) or set(b) != keys:
            raise _fail(f"an evaluation must be {{{', '.join(sorted(keys))}}}")
        s, correct = _int(b, "s", 1), _int(b, "correct")
        if correct > s or not isinstance(b["test_only"], bool):
            raise _fail("an evaluation needs correct <= s and a boolean test_only")
        return cls(
            _str(b["node"], "an evaluation's node"),
            _int(b, "round", 1),
            _cid(b["proof"], "an evaluation's proof"),
            _cid(b["model"], "an evaluation's model"),
            s,
            correct,
            b["test_only"],
        )


@dataclass(frozen=True)
class StorageSection:
    """Replication with retrievability challenges (docs/architecture.md): the commitments of
    the artifacts this round made (and re-commitments of re-replicated ones), and in a challenge
    round every challenged holder's answer, or its (artifact, holder) pair under `missing`."""

    commitments: tuple[Commitment, ...] = ()
    answers: tuple[HolderAnswer, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {
            "commitments": [c.to_body() for c in self.commitments],
            "answers": [a.to_body() for a in self.answers],
            "missing": [{"artifact": a, "holder": h} for a, h in self.missing],
        }

    @classmethod
    def from_body(cls, b: Any) -> StorageSection:
        if not isinstance(b, dict) or set(b) != {"commitments", "answers", "missing"}:
            raise _fail("'storage' must be {commitments, answers, missing}")
        for key in ("commitments", "answers", "missing"):
            if not isinstance(b[key], list) or len(b[key]) > MAX_ENTRIES:
                raise _fail(f"storage {key} must be a list of at most {MAX_ENTRIES}")
        try:
            commitments = tuple(Commitment.from_body(c) for c in b["commitments"])
            answers = tuple(HolderAnswer.from_body(a) for a in b["answers"])
        except ConsortiumError as exc:
            raise _fail(str(exc)) from exc
        missing = []
        for m in b["missing"]:
            if not isinstance(m, dict) or set(m) != {"artifact", "holder"}:
                raise _fail("a missing storage answer is {artifact, holder}")
            missing.append((_str(m["artifact"], "an artifact"), _str(m["holder"], "a holder")))
        return cls(commitments, answers, tuple(missing))


@dataclass(frozen=True)
class RoundRecord:
    """The body of one "round" ledger entry. Frozen: build a new one with `dataclasses.replace`."""

    run: str
    round: int
    attempt: int
    leader: str
    slot: int
    participants: tuple[str, ...]
    dropouts: tuple[str, ...]
    samples: Mapping[str, int]
    updates: Mapping[str, bytes]
    metrics: Mapping[str, Mapping[str, Any]]
    model: CID
    prev_model: CID
    aggregation: Aggregation
    consent: Mapping[str, RoundCommitment] = field(default_factory=dict)
    erasures: Mapping[str, tuple[Erasure, ...]] = field(default_factory=dict)
    secagg: SecAggSection | None = None
    privacy: Mapping[str, Any] | None = None
    beacon: tuple[BeaconPartial, ...] = ()
    storage: StorageSection | None = None
    testdata: Mapping[str, TestDataCommitment] = field(default_factory=dict)
    evaluations: tuple[Evaluation, ...] = ()
    #: K of a run with committees (0: every member contributes; the section is left out).
    committee: int = 0
    version: int = RECORD_VERSION

    # -- codec -----------------------------------------------------------------------------------

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": self.version,
            "run": self.run,
            "round": self.round,
            "attempt": self.attempt,
            "leader": self.leader,
            "slot": self.slot,
            "beacon": partials_body(self.beacon),
            "participants": list(self.participants),
            "dropouts": list(self.dropouts),
            "samples": dict(self.samples),
            "updates": dict(self.updates),
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "model": self.model,
            "prev_model": self.prev_model,
            "aggregation": self.aggregation,
            "consent": {k: c.to_body() for k, c in self.consent.items()},
            "erasures": {k: [e.to_body() for e in v] for k, v in self.erasures.items()},
        }
        if self.secagg is not None:
            body["secagg"] = self.secagg.to_body()
        if self.privacy is not None:
            body["privacy"] = dict(self.privacy)
        if self.storage is not None:
            body["storage"] = self.storage.to_body()
        if self.testdata:
            body["testdata"] = {k: c.to_body() for k, c in self.testdata.items()}
        if self.evaluations:
            body["evaluations"] = [e.to_body() for e in self.evaluations]
        if self.committee:
            body["committee"] = self.committee
        return body

    @classmethod
    def from_body(cls, b: Any) -> RoundRecord:
        """Parse and shape-check a record body (from a peer or the ledger: hostile either way)."""
        if not isinstance(b, dict):
            raise _fail("the body is not a map")
        if b.get("v") != RECORD_VERSION:
            raise _fail(f"unsupported version {b.get('v')!r} (this node reads {RECORD_VERSION})")
        missing = sorted(_CORE - set(b))
        extra = sorted(set(b) - _CORE - _OPTIONAL)
        if missing:
            raise _fail(f"missing {', '.join(missing)}")
        if extra:
            raise _fail(f"unknown field(s) {', '.join(extra)}")
        samples = _by_node(b["samples"], "samples")
        for v in samples.values():
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**40:
                raise _fail("sample counts must be positive integers")
        updates = _by_node(b["updates"], "updates")
        if not all(isinstance(h, bytes) and len(h) == 32 for h in updates.values()):
            raise _fail("update commitments must be 32-byte hashes")
        metrics = _by_node(b["metrics"], "metrics")
        if not all(isinstance(m, dict) and len(m) <= _MAX_METRICS for m in metrics.values()):
            raise _fail(f"metrics must be maps of at most {_MAX_METRICS} entries")
        aggregation = b["aggregation"]
        if aggregation not in _AGGREGATIONS:
            raise _fail(f"unknown aggregation {aggregation!r}")
        try:
            raw = _by_node(b["consent"], "consent")
            consent = {k: RoundCommitment.from_body(c) for k, c in raw.items()}
        except ConsortiumError as exc:
            raise _fail(f"consent commitment: {exc}") from exc
        erasures: dict[str, tuple[Erasure, ...]] = {}
        for k, v in _by_node(b["erasures"], "erasures").items():
            if not isinstance(v, list) or not v or len(v) > 10_000:
                raise _fail("erasures must be non-empty lists")
            erasures[k] = tuple(Erasure.from_body(e) for e in v)
        privacy = b.get("privacy")
        if privacy is not None and not isinstance(privacy, dict):
            raise _fail("'privacy' must be a map")
        try:
            beacon = partials_from_body(b["beacon"], _MAX_MEMBERS)
        except ThresholdError as exc:
            raise _fail(str(exc)) from exc
        testdata = {
            k: TestDataCommitment.from_body(c)
            for k, c in _by_node(b.get("testdata", {}), "testdata").items()
        }
        if "testdata" in b and not testdata:
            raise _fail("'testdata' is left out when empty")
        evaluations = b.get("evaluations", [])
        if (
            not isinstance(evaluations, list)
            or len(evaluations) > _MAX_EVALUATIONS
            or ("evaluations" in b and not evaluations)
        ):
            raise _fail("'evaluations' must be a non-empty list (left out when empty)")
        committee = _int(b, "committee", 1) if "committee" in b else 0
        return cls(
            run=_str(b["run"], "run"),
            round=_int(b, "round", 1),
            attempt=_int(b, "attempt"),
            leader=_str(b["leader"], "leader"),
            slot=_int(b, "slot", 1),
            participants=_ids(b["participants"], "participants"),
            dropouts=_ids(b["dropouts"], "dropouts"),
            samples=samples,
            updates=updates,
            metrics=metrics,
            model=_cid(b["model"], "model"),
            prev_model=_cid(b["prev_model"], "prev_model"),
            aggregation=aggregation,
            consent=consent,
            erasures=erasures,
            secagg=None if b.get("secagg") is None else SecAggSection.from_body(b["secagg"]),
            privacy=privacy,
            beacon=beacon,
            storage=None if b.get("storage") is None else StorageSection.from_body(b["storage"]),
            testdata=testdata,
            evaluations=tuple(Evaluation.from_body(e) for e in evaluations),
            committee=committee,
        )

    @classmethod
    def from_entry(cls, entry: Entry) -> RoundRecord:
        if entry.kind != ROUND_KIND:
            raise RecordFormatError(f"entry is a {entry.kind!r}, not a round record")
        return cls.from_body(entry.body)

    # -- derived ---------------------------------------------------------------------------------

    @property
    def secure(self) -> bool:
        return self.aggregation == "secagg+"

    def ref(self) -> RoundRef:
        """What consent erasure needs of this record."""
        return RoundRef(self.slot, self.run, self.prev_model)

    def dp_params(self, node: str) -> Mapping[str, Any] | None:
        """The DP-SGD parameters `node` reported with its update (in its metrics), if any."""
        dp = self.metrics.get(node, {}).get("dp")
        return dp if isinstance(dp, dict) else None


RUN_KIND = "run-config"


@dataclass(frozen=True)
class RunRecord:
    """The body of a "run-config" entry: the configuration every member agreed to (its hash is
    the run id). A run starts only from such an entry cosigned by a quorum of members."""

    run: str
    config: Mapping[str, Any]
    version: int = RUN_RECORD_VERSION

    def to_body(self) -> dict[str, Any]:
        return {"v": self.version, "run": self.run, "config": dict(self.config)}

    @classmethod
    def from_body(cls, b: Any) -> RunRecord:
        if not isinstance(b, dict) or set(b) != {"v", "run", "config"}:
            raise RecordFormatError("malformed run-config record: need exactly v, run, config")
        if b["v"] != RUN_RECORD_VERSION:
            raise RecordFormatError(f"unsupported run-config version {b['v']!r}")
        if not isinstance(b["config"], dict):
            raise RecordFormatError("malformed run-config record: 'config' must be a map")
        return cls(_str(b["run"], "run"), b["config"])

    @classmethod
    def from_entry(cls, entry: Entry) -> RunRecord:
        if entry.kind != RUN_KIND:
            raise RecordFormatError(f"entry is a {entry.kind!r}, not a run-config record")
        return cls.from_body(entry.body)


STOP_KIND = "run-stop"


@dataclass(frozen=True)
class StopRecord:
    """The body of a "run-stop" entry: the members agreed to stop run `run`, for `reason`."""

    run: str
    reason: str
    version: int = RUN_RECORD_VERSION

    def to_body(self) -> dict[str, Any]:
        return {"v": self.version, "run": self.run, "reason": self.reason}

    @classmethod
    def from_body(cls, b: Any) -> StopRecord:
        if not isinstance(b, dict) or set(b) != {"v", "run", "reason"} or b["v"] != 1:
            raise RecordFormatError("malformed run-stop record: need exactly v (1), run, reason")
        reason = b["reason"]
        if not isinstance(reason, str) or len(reason) > 500:
            raise RecordFormatError("malformed run-stop record: reason of at most 500 characters")
        return cls(_str(b["run"], "run"), reason)

    @classmethod
    def from_entry(cls, entry: Entry) -> StopRecord:
        if entry.kind != STOP_KIND:
            raise RecordFormatError(f"entry is a {entry.kind!r}, not a run-stop record")
        return cls.from_body(entry.body)


def run_configs(entries: Any) -> list[tuple[int, RunRecord]]:
    """(ledger index, record) of every agreed run configuration in `(index, Entry)` pairs."""
    return [(i, RunRecord.from_entry(e)) for i, e in entries if e.kind == RUN_KIND]


def round_records(entries: Any) -> list[tuple[int, RoundRecord]]:
    """(ledger index, record) of every round entry in `(index, Entry)` pairs, parsed."""
    return [(i, RoundRecord.from_entry(e)) for i, e in entries if e.kind == ROUND_KIND]


def privacy_history(records: Iterable[RoundRecord], purpose: str) -> list[Mapping[str, Any]]:
    """The privacy spends charged to `purpose`, in ledger order: the budget's history."""
    return [
        r.privacy for r in records if r.privacy is not None and spend_purpose(r.privacy) == purpose
    ]


def latest_run(records: list[tuple[int, RoundRecord]]) -> list[tuple[int, RoundRecord]]:
    """The records of the latest run (the last one that has a round 1), in order."""
    out: list[tuple[int, RoundRecord]] = []
    run: str | None = None
    for idx, rec in records:
        if rec.round == 1:
            run, out = rec.run, []
        if rec.run == run:
            out.append((idx, rec))
    return out


def latest_agreed_run(entries: Any) -> tuple[RunRecord | None, list[RoundRecord]]:
    """The latest agreed run configuration on a ledger and that run's round records."""
    pairs = list(entries)
    runs = run_configs(pairs)
    if not runs:
        return None, []
    run = runs[-1][1]
    return run, [r for _, r in round_records(pairs) if r.run == run.run]


def run_records(ledger: Ledger) -> list[RoundRecord]:
    """Round records of the latest agreed run on this ledger, in order (the caller's ledger,
    read as `latest_agreed_run` reads its entries: this module never opens one)."""
    return latest_agreed_run(enumerate(ledger.iter_entries()))[1]


class RunIndex:
    """`run_records` of one node's ledger, kept up to date by reading only the entries appended
    since the last call (the ledger is append-only). A node asks at every commit and round start;
    re-reading and decoding the whole ledger each time cost a node O(ledger) per round (at 50
    members, 3.6 s of a 3-round bench run). Same answer as `run_records`: the records whose run
    is that of the last run-config entry, in ledger order."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._reset()

    def _reset(self) -> None:
        self._size = 0
        self._run: str | None = None
        self._by_run: dict[str, list[RoundRecord]] = {}

    def records(self) -> list[RoundRecord]:
        size = self._ledger.size
        if size < self._size:  # not this index's ledger any more: start over
            self._reset()
        for entry in self._ledger.iter_entries(self._size, size):
            if entry.kind == RUN_KIND:
                self._run = RunRecord.from_entry(entry).run
            elif entry.kind == ROUND_KIND:
                r = RoundRecord.from_entry(entry)
                self._by_run.setdefault(r.run, []).append(r)
        self._size = size
        return [] if self._run is None else list(self._by_run.get(self._run, []))


def stopped_runs(entries: Any) -> dict[str, str]:
    """run id -> reason, for every run the members agreed to stop."""
    return {
        s.run: s.reason
        for s in (StopRecord.from_entry(e) for _, e in entries if e.kind == STOP_KIND)
    }


FINAL_KIND = "run-final"


@dataclass(frozen=True)
class FinalRecord:
    """The body of a "run-final" entry (issue 18): after a run's last round `round` (R), the
    t beacon partials of "round R + 1" (`beacon`: the beacon the final model's sample is drawn
    from, which honest members release only once round R is final) and the nodes' proofs of
    the final model (`evaluations`, each of round R). A quorum cosigns it, as a run-stop."""

    run: str
    round: int
    beacon: tuple[BeaconPartial, ...]
    evaluations: tuple[Evaluation, ...]
    version: int = RUN_RECORD_VERSION

    def to_body(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "run": self.run,
            "round": self.round,
            "beacon": partials_body(self.beacon),
            "evaluations": [e.to_body() for e in self.evaluations],
        }

    @classmethod
    def from_body(cls, b: Any) -> FinalRecord:
        keys = {"v", "run", "round", "beacon", "evaluations"}
        if not isinstance(b, dict) or set(b) != keys or b["v"] != RUN_RECORD_VERSION:
            raise RecordFormatError(
                "malformed run-final record: need exactly v (1), run, round, beacon, evaluations"
            )
        evaluations = b["evaluations"]
        if not isinstance(evaluations, list) or len(evaluations) > _MAX_EVALUATIONS:
            raise RecordFormatError("malformed run-final record: evaluations must be a list")
        try:
            beacon = partials_from_body(b["beacon"], _MAX_MEMBERS)
        except ConsortiumError as exc:
            raise RecordFormatError(f"malformed run-final record: {exc}") from exc
        return cls(
            _str(b["run"], "run"),
            _int(b, "round", 1),
            beacon,
            tuple(Evaluation.from_body(e) for e in evaluations),
        )

    @classmethod
    def from_entry(cls, entry: Entry) -> FinalRecord:
        if entry.kind != FINAL_KIND:
            raise RecordFormatError(f"entry is a {entry.kind!r}, not a run-final record")
        return cls.from_body(entry.body)

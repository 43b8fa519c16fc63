"""Messages of the round protocol: small immutable classes with canonical bodies.

Every message travels as canonical dag-cbor of `to_body()`; `decode_message` is the only way in,
and it shape-checks every field, because every message from a peer is treated as hostile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError
from consortium.protocol.storage import HolderAnswer

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Proofs of evaluation a message may carry, and the size of one artifact (a proof of a
#: small circuit is tens of KB, with its settings).
MAX_PROOFS = 1024
MAX_PROOF_BYTES = 4 * 1024 * 1024


class ProtocolError(ConsortiumError):
    """A peer sent a malformed, out-of-place or unverifiable protocol message."""


def _int(body: dict[str, Any], key: str, lo: int = 0, hi: int = 2**63) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v < hi:
        raise ProtocolError(f"field {key!r} must be an integer in [{lo}, {hi})")
    return v


def _bytes(body: dict[str, Any], key: str, max_len: int = MAX_MESSAGE_BYTES) -> bytes:
    v = body.get(key)
    if not isinstance(v, bytes) or len(v) > max_len:
        raise ProtocolError(f"field {key!r} must be bytes of at most {max_len}")
    return v


def _str(body: dict[str, Any], key: str, max_len: int = 256) -> str:
    v = body.get(key)
    if not isinstance(v, str) or len(v) > max_len:
        raise ProtocolError(f"field {key!r} must be a string of at most {max_len} characters")
    return v


def _dict(body: dict[str, Any], key: str) -> dict[str, Any]:
    v = body.get(key)
    if not isinstance(v, dict):
        raise ProtocolError(f"field {key!r} must be a map")
    return v


@dataclass(frozen=True)
class Proposal:
    """A leader's proposed ledger entry, the tree head it yields, the new model's bytes and, under
    secure aggregation, the SecAgg+ transcript the model was computed from."""

    entry: bytes
    size: int
    root: bytes
    time: int
    model: bytes
    transcript: bytes = b""
    #: The artifacts of the proofs of evaluation the record lists (issue 18), in its order.
    proofs: tuple[bytes, ...] = ()

    def to_body(self) -> dict[str, Any]:
        body = {
            "entry": self.entry,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "model": self.model,
            "transcript": self.transcript,
        }
        if self.proofs:
            body["proofs"] = list(self.proofs)
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Proposal:
        proofs = b.get("proofs", [])
        if (
            not isinstance(proofs, list)
            or len(proofs) > MAX_PROOFS
            or not all(isinstance(p, bytes) and len(p) <= MAX_PROOF_BYTES for p in proofs)
        ):
            raise ProtocolError(f"field 'proofs' must be at most {MAX_PROOFS} proof artifacts")
        return cls(
            _bytes(b, "entry", 4 * 1024 * 1024),
            _int(b, "size", 1),
            _bytes(b, "root", 32),
            _int(b, "time"),
            _bytes(b, "model"),
            _bytes(b, "transcript"),
            tuple(proofs),
        )


@dataclass(frozen=True)
class VoteReport:
    """A member's signed statement, on moving to `attempt` of a round, of the head it has
    cosigned at ledger size `size` in this round (`root`, or b"" for none).

    A quorum-sized set of these proves that no head of an earlier attempt can still reach
    quorum, which is what lets an honest node cosign another head of the same size after an
    equivocating or crashed leader (see `RoundMachine` and docs/architecture.md)."""

    run: str
    round: int
    attempt: int
    node: str
    size: int
    root: bytes
    signature: bytes = b""

    def signed_body(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "attempt": self.attempt,
            "node": self.node,
            "size": self.size,
            "root": self.root,
        }

    def to_body(self) -> dict[str, Any]:
        return {**self.signed_body(), "signature": self.signature}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> VoteReport:
        root = _bytes(b, "root", 32)
        if len(root) not in (0, 32):
            raise ProtocolError("field 'root' must be 32 bytes or empty")
        return cls(
            _str(b, "run"),
            _int(b, "round", 1),
            _int(b, "attempt"),
            _str(b, "node"),
            _int(b, "size", 1),
            root,
            _bytes(b, "signature", 64),
        )


def _reports(b: dict[str, Any]) -> list[VoteReport]:
    raw = b.get("reports", [])
    if not isinstance(raw, list) or len(raw) > 10_000:
        raise ProtocolError("field 'reports' must be a list of vote reports")
    out = []
    for r in raw:
        if not isinstance(r, dict):
            raise ProtocolError("a vote report must be a map")
        out.append(VoteReport.from_body(r))
    return out


@dataclass(frozen=True)
class StartRun:
    """Asks every member to start the run described by `config` (committed in round 1's record)."""

    TYPE: ClassVar[str] = "start-run"
    config: dict[str, Any]

    def to_body(self) -> dict[str, Any]:
        return {"config": self.config}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> StartRun:
        return cls(_dict(b, "config"))


@dataclass(frozen=True)
class Update:
    """A participant's local result for one round, sent to that attempt's leader."""

    TYPE: ClassVar[str] = "update"
    run: str
    round: int
    attempt: int
    num_samples: int
    update: bytes
    metrics: dict[str, Any]
    accepted: Proposal | None = None
    #: This node's consent commitment for the round (root, count, purpose, head): no identifiers.
    consent: dict[str, Any] | None = None
    #: Erasures this node carried out since its last round (counts and times only).
    erasures: list[Any] = field(default_factory=list)
    #: What this node has cosigned in this round so far (signed), for the attempt's leader.
    report: VoteReport | None = None
    #: The survivor set this node signed earlier in the round: it joins no other sum.
    bound: tuple[str, ...] = ()
    #: Its commitment to its test data (issue 18), until a record of the run carries it.
    testdata: dict[str, Any] | None = None
    #: Its finished proofs of evaluation not yet on the ledger: {evaluation, artifact} each.
    evaluations: list[Any] = field(default_factory=list)

    def to_body(self) -> dict[str, Any]:
        zk: dict[str, Any] = {}
        if self.testdata is not None:
            zk["testdata"] = self.testdata
        if self.evaluations:
            zk["evaluations"] = list(self.evaluations)
        return zk | {
            "run": self.run,
            "round": self.round,
            "attempt": self.attempt,
            "num_samples": self.num_samples,
            "update": self.update,
            "metrics": self.metrics,
            "accepted": None if self.accepted is None else self.accepted.to_body(),
            "consent": self.consent,
            "erasures": list(self.erasures),
            "report": None if self.report is None else self.report.to_body(),
            "bound": list(self.bound),
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Update:
        acc = b.get("accepted")
        report = b.get("report")
        bound = b.get("bound", [])
        if (
            not isinstance(bound, list)
            or len(bound) > 10_000
            or not all(isinstance(x, str) and len(x) <= 256 for x in bound)
            or bound != sorted(set(bound))
        ):
            raise ProtocolError("field 'bound' must be a sorted list of distinct node ids")
        consent = b.get("consent")
        erasures = b.get("erasures", [])
        if consent is not None and not isinstance(consent, dict):
            raise ProtocolError("field 'consent' must be a map")
        if not isinstance(erasures, list) or len(erasures) > 10_000:
            raise ProtocolError("field 'erasures' must be a list")
        testdata = b.get("testdata")
        if testdata is not None and not isinstance(testdata, dict):
            raise ProtocolError("field 'testdata' must be a map")
        evaluations = b.get("evaluations", [])
        if (
            not isinstance(evaluations, list)
            or len(evaluations) > MAX_PROOFS
            or not all(
                isinstance(e, dict)
                and set(e) == {"evaluation", "artifact"}
                and isinstance(e["artifact"], bytes)
                and len(e["artifact"]) <= MAX_PROOF_BYTES
                for e in evaluations
            )
        ):
            raise ProtocolError(
                f"field 'evaluations' must be at most {MAX_PROOFS} {{evaluation, artifact}} maps"
            )
        return cls(
            _str(b, "run"),
            _int(b, "round", 1),
            _int(b, "attempt"),
            _int(b, "num_samples", 1, 2**40),
            _bytes(b, "update"),
            _dict(b, "metrics"),
            None if acc is None else Proposal.from_body(_dict(b, "accepted")),
            consent,
            erasures,
            None if report is None else VoteReport.from_body(_dict(b, "report")),
            tuple(bound),
            testdata,
            evaluations,
        )


@dataclass(frozen=True)
class Propose:
    TYPE: ClassVar[str] = "propose"
    run: str
    round: int
    attempt: int
    proposal: Proposal
    #: The vote reports this attempt's leader collected: proof for voters that cosigned another
    #: head of this size in an earlier attempt that no such head can still reach quorum.
    reports: tuple[VoteReport, ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "attempt": self.attempt,
            "proposal": self.proposal.to_body(),
            "reports": [r.to_body() for r in self.reports],
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Propose:
        return cls(
            _str(b, "run"),
            _int(b, "round", 1),
            _int(b, "attempt"),
            Proposal.from_body(_dict(b, "proposal")),
            tuple(_reports(b)),
        )


@dataclass(frozen=True)
class Vote:
    """A participant's cosignature on the proposed tree head."""

    TYPE: ClassVar[str] = "vote"
    run: str
    round: int
    size: int
    root: bytes
    signature: bytes

    def to_body(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "size": self.size,
            "root": self.root,
            "signature": self.signature,
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Vote:
        return cls(
            _str(b, "run"),
            _int(b, "round", 1),
            _int(b, "size", 1),
            _bytes(b, "root", 32),
            _bytes(b, "signature", 64),
        )


@dataclass(frozen=True)
class Commit:
    """A final round: the entry, its tree head and at least a quorum of cosignatures."""

    TYPE: ClassVar[str] = "commit"
    run: str
    round: int
    proposal: Proposal
    cosignatures: dict[str, bytes]

    def to_body(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "proposal": self.proposal.to_body(),
            "cosignatures": dict(self.cosignatures),
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Commit:
        sigs = _dict(b, "cosignatures")
        if len(sigs) > 10_000 or not all(
            isinstance(k, str) and isinstance(v, bytes) and len(v) == 64 for k, v in sigs.items()
        ):
            raise ProtocolError("cosignatures must map node ids to 64-byte signatures")
        return cls(
            _str(b, "run"), _int(b, "round", 1), Proposal.from_body(_dict(b, "proposal")), sigs
        )


@dataclass(frozen=True)
class SecAgg:
    """One SecAgg+ message of a round's secure aggregation (or the leader's start notice)."""

    TYPE: ClassVar[str] = "secagg"
    run: str
    round: int
    attempt: int
    body: dict[str, Any]

    def to_body(self) -> dict[str, Any]:
        return {"run": self.run, "round": self.round, "attempt": self.attempt, "body": self.body}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAgg:
        return cls(_str(b, "run"), _int(b, "round", 1), _int(b, "attempt"), _dict(b, "body"))


@dataclass(frozen=True)
class BeaconShare:
    """A member's partial of a round's beacon (`protocol/beacon.py`), broadcast when it begins the
    round. `ask`: the sender is still missing partials; members answer with theirs. A member
    outside the beacon group has no partial: it only asks, with empty `sigma` and `proof`."""

    TYPE: ClassVar[str] = "beacon"
    run: str
    round: int
    sigma: bytes
    proof: bytes
    ask: bool = False

    def to_body(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "sigma": self.sigma,
            "proof": self.proof,
            "ask": self.ask,
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> BeaconShare:
        ask = b.get("ask")
        if not isinstance(ask, bool):
            raise ProtocolError("field 'ask' must be a boolean")
        sigma, proof = _bytes(b, "sigma", 33), _bytes(b, "proof", 64)
        bare = ask and not sigma and not proof  # a request from outside the beacon group
        if not bare and (len(sigma) != 33 or len(proof) != 64):
            raise ProtocolError(
                "a beacon share is a 33-byte point and a 64-byte proof (or, asking, neither)"
            )
        return cls(_str(b, "run"), _int(b, "round", 1), sigma, proof, ask)


#: Answers one holder may send for one attempt at most (artifacts it holds in the run).
MAX_ANSWERS = 10_000


@dataclass(frozen=True)
class StorageAnswers:
    """A holder's answers to this attempt's retrievability challenges, sent to its leader
    (`protocol/storage.py`): one `HolderAnswer` body per challenged artifact it can prove (it
    sends the message even when it can prove none, so the leader need not wait for it)."""

    TYPE: ClassVar[str] = "storage"
    run: str
    round: int
    attempt: int
    answers: tuple[HolderAnswer, ...]

    def to_body(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "attempt": self.attempt,
            "answers": [a.to_body() for a in self.answers],
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> StorageAnswers:
        answers = b.get("answers")
        if not isinstance(answers, list) or len(answers) > MAX_ANSWERS:
            raise ProtocolError(f"field 'answers' must be a list of at most {MAX_ANSWERS}")
        try:
            parsed = tuple(HolderAnswer.from_body(a) for a in answers)
        except ConsortiumError as exc:
            raise ProtocolError(f"malformed storage answer: {exc}") from exc
        return cls(_str(b, "run"), _int(b, "round", 1), _int(b, "attempt"), parsed)


Message = StartRun | Update | Propose | Vote | Commit | SecAgg | BeaconShare | StorageAnswers
_TYPES: dict[str, Any] = {
    c.TYPE: c
    for c in (StartRun, Update, Propose, Vote, Commit, SecAgg, BeaconShare, StorageAnswers)
}


def encode_message(msg: Message) -> bytes:
    return encode({"type": msg.TYPE, "body": msg.to_body()})


def decode_message(data: bytes) -> Message:
    """Parse and shape-check a message from a peer; raise ProtocolError on anything else."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = decode(data)
    except ConsortiumError as exc:
        raise ProtocolError(f"undecodable message: {exc}") from exc
    if (
        not isinstance(obj, dict)
        or set(obj) != {"type", "body"}
        or not isinstance(obj["body"], dict)
    ):
        raise ProtocolError("message must be a map {type, body}")
    cls = _TYPES.get(obj["type"]) if isinstance(obj["type"], str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {obj['type']!r}")
    msg: Message = cls.from_body(obj["body"])
    return msg

"""Proofs of evaluation in a run (issue 18, slice 2): what a node proves, and how voters and
`audit` check what a record lists.

- **Pinning** (`zk_settings`): the run's circuit settings are calibrated from the task's initial
  model (fixed by the run's seed, so every member gets the same bytes) for s = `proof_sample`;
  their sha256 is the run config's `zk_settings_sha256`. A member refuses a run whose pinned
  hash it cannot reproduce (`zk-settings`), or whose SRS it does not hold (`zk-srs`: node.toml
  `[zk] srs`, a file whose sha256 is the run's `srs_sha256`).
- **Proving** (`RunProver`): at run start the node makes the circuit's keys and its commitment
  to its test records (kept in DIR/zk/, as `consortium zk prove` does) in its `ProofQueue`;
  the commitment goes with its next update, and a record lists it. After round r + 1 commits,
  for every r the run proves, the node proves round r's model on the sample drawn from round
  r + 1's beacon, again in the queue: the round goes on meanwhile. A finished proof goes with the
  node's next update (CID, claims and the artifact), until a committed record lists it.
- **Checking** (`EvaluationChecker`): the `ProofState.check` of voters and `audit`: the model at
  the listed CID from the store, the beacon of the round after it from the ledger, the node's
  committed root from the ledger, and `zk.proof.verify`, which recomputes the weight commitment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from multiformats import CID
from torch import nn

from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis
from consortium.learning.adapter import set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.learning.task import Examples, build_model, load_data
from consortium.node.config import NodeConfig, RunConfig
from consortium.protocol.beacon import attempt_beacon
from consortium.protocol.record import Evaluation, FinalRecord, RoundRecord, TestDataCommitment
from consortium.protocol.verifier import (
    CheckEvaluation,
    ProofState,
    RecordRejected,
    final_beacon,
    record_beacon,
)
from consortium.store.blockstore import BlockStore
from consortium.store.cid import cid_key
from consortium.store.objects import get_bytes, put_bytes
from consortium.store.unixfs import Profile
from consortium.zk.errors import SAMPLE_MISMATCH, SETTINGS_MISMATCH, ZkError

if TYPE_CHECKING:
    from consortium.zk.circuit import Keys, Shape
    from consortium.zk.evm import ChainCheck
    from consortium.zk.proof import EvalClaims
    from consortium.zk.srs import Srs
    from consortium.zk.testdata import CommittedTestData

log = logging.getLogger("consortium.node")
T = TypeVar("T")

ZK_DIR = "zk"


def _model(run: RunConfig, weights: bytes | None = None) -> nn.Module:
    model, like = build_model(run.load_task(), run.seed)
    if weights is not None:
        set_weights(model, weights_from_bytes(weights, like))
    return model.eval()


def _feature_shape(test: Examples) -> tuple[int, ...]:
    return tuple(int(d) for d in test.x.shape[1:])


def zk_settings(run: RunConfig, test: Examples) -> bytes:
    """The circuit settings a run pins: calibrated from the task's initial model (the run's
    seed) for s = `proof_sample`, canonical bytes (their sha256 is `zk_settings_sha256`)."""
    from consortium.zk.circuit import calibrate, shape_of

    model = _model(run)
    return calibrate(model, shape_of(model, _feature_shape(test), run.proof_sample))


def _srs(run: RunConfig, config: NodeConfig) -> Srs:
    from consortium.zk.srs import Srs, load_srs

    if config.zk.srs is None:
        raise ZkError(
            "srs-missing",
            "the run proves evaluations: set [zk] srs in node.toml to the run's SRS file "
            f"(sha256 {run.srs_sha256})",
        )
    srs = load_srs(Path(config.zk.srs), run.srs_sha256)
    return Srs(srs.path, srs.sha256, srs.logrows, test_only=run.srs_test_only)


def _test_examples(run: RunConfig, config: NodeConfig, name: str) -> Examples:
    _, test = load_data(run.load_task(), config.data.context(name))
    if len(test) < run.proof_sample:
        raise ZkError(
            SAMPLE_MISMATCH,
            f"{len(test)} test examples here, fewer than the run's sample of {run.proof_sample}",
        )
    return test


def member_refusals(
    run: RunConfig, config: NodeConfig, name: str, *, settings: bool = True
) -> list[str]:
    """Why this member cannot take part in `run`'s proofs (empty: it can, or the run has none):
    no EZKL, not the run's SRS, or (unless `settings` is False: the quick check a member makes
    when the run starts, after it answered the vote) circuit settings other than the pinned
    ones. A member that cannot check proofs could not cosign records that list them."""
    if not run.proofs:
        return []
    try:
        from consortium.zk.errors import require_ezkl, require_onnx

        require_ezkl()
        require_onnx()
    except ZkError as exc:
        return [f"{exc} [rule zk-srs]"]
    try:
        _srs(run, config)
    except ZkError as exc:
        return [f"{exc} [rule zk-srs]"]
    if not settings:
        return []
    try:
        pinned = zk_settings(run, _test_examples(run, config, name))
    except ConsortiumError as exc:
        return [f"cannot build the evaluation circuit: {exc} [rule zk-settings]"]
    here = hashlib.sha256(pinned).hexdigest()
    if here != run.zk_settings_sha256:
        return [
            f"the circuit settings here hash to {here}, the run pins {run.zk_settings_sha256} "
            "[rule zk-settings]"
        ]
    return []


def with_proofs(
    run: RunConfig,
    config: NodeConfig,
    name: str,
    *,
    prove_every: int,
    sample: int,
    srs_test_only: bool = False,
) -> RunConfig:
    """`run` with proofs of evaluation on: the SRS hash of this node's `[zk] srs` and the hash
    of the settings it calibrates (what `run start` proposes)."""
    from consortium.zk.srs import file_sha256

    if config.zk.srs is None:
        raise ZkError("srs-missing", "set [zk] srs in node.toml to the run's SRS file")
    run = run.model_copy(
        update={
            "prove_every": prove_every,
            "proof_sample": sample,
            "srs_sha256": file_sha256(Path(config.zk.srs)),
            "srs_test_only": srs_test_only,
        }
    )
    settings = zk_settings(run, _test_examples(run, config, name))
    return run.model_copy(update={"zk_settings_sha256": hashlib.sha256(settings).hexdigest()})


def sample_beacon(after: RoundRecord, genesis: Genesis) -> bytes:
    """The beacon a proof of round `after.round - 1`'s model samples from: that of the attempt
    that committed the round after it, recomputed from its record's partials."""
    return attempt_beacon(record_beacon(after, genesis), after.attempt)


class EvaluationChecker:
    """`ProofState.check` for one run: verify a listed proof against the model at its CID (from
    the store), the beacon of the round after it (from the ledger records noted here) and the
    node's committed test data. Results are cached by (proof, model, root)."""

    def __init__(
        self,
        run: RunConfig,
        genesis: Genesis,
        store: BlockStore,
        config: NodeConfig,
        name: str,
        keys_cache: Path,
    ) -> None:
        self.run, self.genesis, self.store = run, genesis, store
        self.config, self.name, self.keys_cache = config, name, keys_cache
        self.records: dict[int, RoundRecord] = {}
        #: round R + 1 -> its beacon, from a run-final record's partials (R the last round).
        self.final: dict[int, bytes] = {}
        self._done: dict[tuple[str, str, bytes, int], EvalClaims] = {}
        self._shape: tuple[int, ...] | None = None

    def note(self, records: Iterable[RoundRecord]) -> None:
        for r in records:
            if r.run == self.run.run_id():
                self.records[r.round] = r

    def note_final(self, record: FinalRecord) -> None:
        """The beacon a run-final record's partials make (after the run's last round, no
        round record carries it); nothing if they do not verify (the verifier refuses it)."""
        if record.run == self.run.run_id():
            with contextlib.suppress(RecordRejected):
                self.final[record.round + 1] = final_beacon(record, self.genesis)

    def feature_shape(self) -> tuple[int, ...]:
        """The records' feature shape, from this folder's test data (the task's data)."""
        if self._shape is None:
            self._shape = _feature_shape(_test_examples(self.run, self.config, self.name))
        return self._shape

    def check(self, ev: Evaluation, committed: TestDataCommitment, artifact: bytes) -> EvalClaims:
        from consortium.zk.circuit import keys_for, settings_logrows, shape_of
        from consortium.zk.proof import EvalProof, verify

        # The round fixes the sampling beacon: the same proof listed for another round of the
        # same model must be checked against that round's beacon, not answered from here.
        key = (cid_key(ev.proof), cid_key(ev.model), committed.root, ev.round)
        if key in self._done:
            return self._done[key]
        proof = EvalProof.from_bytes(artifact)
        after = self.records.get(ev.round + 1)
        beacon = sample_beacon(after, self.genesis) if after else self.final.get(ev.round + 1)
        if beacon is None:
            raise ZkError(SAMPLE_MISMATCH, f"round {ev.round + 1}'s beacon is not on the ledger")
        if hashlib.sha256(proof.settings).hexdigest() != self.run.zk_settings_sha256:
            raise ZkError(SETTINGS_MISMATCH, "the proof's circuit settings are not the run's")
        model = _model(self.run, get_bytes(self.store, ev.model))
        shape = shape_of(model, self.feature_shape(), self.run.proof_sample)
        srs = _srs(self.run, self.config)
        srs.check_serves(settings_logrows(proof.settings))
        keys = keys_for(model, shape, proof.settings, srs, self.keys_cache)
        claims = verify(
            proof,
            model=model,
            model_cid=cid_key(ev.model),
            shape=shape,
            keys=keys,
            testdata=(committed.root, committed.size),
            beacon=beacon,
        )
        self._done[key] = claims
        return claims

    def on_chain(
        self,
        proof_cid: CID | str,
        model_cid: CID | str,
        testdata: tuple[bytes, int],
        cache: Path,
        solcjs: Path | None = None,
    ) -> ChainCheck:
        """Check the proof at `proof_cid` on this process's embedded chain
        (`zk.evm.check_on_chain`), bound to the model at `model_cid` (its weight commitment
        recomputed here) and the node's committed test data `testdata` (root, size)."""
        from consortium.zk.circuit import keys_for, settings_logrows, shape_of
        from consortium.zk.evm import check_on_chain
        from consortium.zk.proof import EvalProof

        artifact = get_bytes(self.store, proof_cid)
        proof = EvalProof.from_bytes(artifact)
        if hashlib.sha256(proof.settings).hexdigest() != self.run.zk_settings_sha256:
            raise ZkError(SETTINGS_MISMATCH, "the proof's circuit settings are not the run's")
        model = _model(self.run, get_bytes(self.store, model_cid))
        shape = shape_of(model, self.feature_shape(), self.run.proof_sample)
        srs = _srs(self.run, self.config)
        srs.check_serves(settings_logrows(proof.settings))
        keys = keys_for(model, shape, proof.settings, srs, self.keys_cache)
        return check_on_chain(proof, model=model, shape=shape, keys=keys, testdata=testdata,
                              cache=cache, solcjs=solcjs)  # fmt: skip


def proof_state(
    run: RunConfig, records: Iterable[RoundRecord], check: CheckEvaluation
) -> ProofState:
    """The proofs of evaluation of `run` as its committed `records` (in order) stand."""
    committed: dict[str, tuple[int, TestDataCommitment]] = {}
    listed: set[tuple[str, int]] = set()
    models: dict[int, CID] = {}
    for r in records:
        if r.run != run.run_id():
            continue
        models[r.round] = r.model
        for node, c in r.testdata.items():
            committed.setdefault(node, (r.round, c))
        listed.update((e.node, e.round) for e in r.evaluations)
    return ProofState(
        prove_every=run.prove_every,
        rounds=run.rounds,
        s=run.proof_sample,
        settings=run.zk_settings_sha256,
        srs=run.srs_sha256,
        test_only=run.srs_test_only,
        committed=committed,
        listed=frozenset(listed),
        models=models,
        check=check,
    )


_CHILD: ProcessPoolExecutor | None = None
_CHILD_LOCK = threading.Lock()


def in_child(fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` in this process's prover child and wait for it. EZKL holds the GIL for
    a whole proof (measured: a 5.6 s proof stalled the calling process's other threads for
    5.6 s), so proving in a thread would stop the node's event loop, and with it its rounds'
    deadlines; a child process does not. One child per process (spawned on first use): proofs
    are one at a time per machine anyway (`ProverLock`)."""
    global _CHILD
    with _CHILD_LOCK:
        if _CHILD is None:
            _CHILD = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        child = _CHILD
    try:
        return child.submit(fn, *args).result()
    except BrokenProcessPool as exc:
        with _CHILD_LOCK:
            if _CHILD is child:
                _CHILD = None
        raise ZkError("proof-invalid", f"the prover process died: {exc}") from exc


def _setup_job(
    directory: Path, run: RunConfig, config: NodeConfig, name: str, initial: bytes
) -> _Setup:
    """In the prover child: the pinned settings (refused if they are not the run's), the
    circuit's keys and the commitment to this node's test records (kept in DIR/zk/)."""
    from consortium.node.proofs import _committed
    from consortium.zk.circuit import keys_for, settings_logrows, shape_of

    test = _test_examples(run, config, name)
    settings = zk_settings(run, test)
    if hashlib.sha256(settings).hexdigest() != run.zk_settings_sha256:
        raise ZkError(SETTINGS_MISMATCH, "the settings here are not the run's pinned ones")
    model = _model(run, initial)
    shape = shape_of(model, _feature_shape(test), run.proof_sample)
    srs = _srs(run, config)
    srs.check_serves(settings_logrows(settings))
    keys = keys_for(model, shape, settings, srs, directory / ZK_DIR / "keys")
    tree, vectors, _ = _committed(directory, keys, test)
    commitment = TestDataCommitment(tree.root, tree.size, run.zk_settings_sha256, run.srs_sha256)
    return _Setup(shape, keys, tree, vectors, commitment)


def _prove_job(
    directory: Path,
    run: RunConfig,
    config: NodeConfig,
    name: str,
    setup: _Setup,
    weights: bytes,
    beacon: bytes,
    model_cid: str,
) -> bytes:
    """In the prover child: the proof of the model `weights` on the sample `beacon` draws from
    the committed test records (less those whose consent was withdrawn); its artifact."""
    from consortium.node.proofs import _withdrawn
    from consortium.zk.proof import prove
    from consortium.zk.testdata import sample_indices

    test = _test_examples(run, config, name)
    model = _model(run, weights)
    withdrawn = _withdrawn(directory, run, test)
    sample = sample_indices(beacon, setup.tree.size, run.proof_sample, withdrawn)
    proof = prove(
        model,
        setup.shape,
        setup.keys,
        setup.tree,
        [setup.vectors[i] for i in sample.indices],
        sample,
        beacon=beacon,
        model_cid=model_cid,
    )
    return proof.to_bytes()


@dataclass
class _Setup:
    shape: Shape
    keys: Keys
    tree: CommittedTestData
    vectors: list[list[float]]
    commitment: TestDataCommitment


@dataclass
class RunProver:
    """This node's proofs of evaluation in one run: the setup and each proof run in the node's
    `ProofQueue` (one at a time per machine, off the round's critical path); what is finished
    waits here until a committed record lists it."""

    directory: Path
    run: RunConfig
    config: NodeConfig
    name: str
    node_id: str
    genesis: Genesis
    store: BlockStore
    unixfs: Profile
    submit: Callable[[Callable[[], object]], Future[object]]
    setup: Future[object] | None = None
    #: The round whose record carries this node's test-data commitment (None: none yet).
    committed_round: int | None = None
    models: dict[int, CID] = field(default_factory=dict)
    jobs: list[Future[object]] = field(default_factory=list)
    ready: dict[int, tuple[Evaluation, bytes]] = field(default_factory=dict)
    listed: set[int] = field(default_factory=set)
    #: The proof of the final model (after the last round: run-final entry), once queued.
    final: Future[object] | None = None

    def start(self, initial: bytes, records: Iterable[RoundRecord] = ()) -> None:
        """Set up (keys, commitment) in the queue; `records`: the run's committed ones (a
        resumed run), noted without proving again."""
        for r in records:
            self._note(r)
        args = (self.directory, self.run, self.config, self.name, initial)
        self.setup = self.submit(lambda: in_child(_setup_job, *args))
        self.setup.add_done_callback(self._log_failure("setting up its proofs of evaluation"))

    def _log_failure(self, what: str) -> Callable[[Future[object]], None]:
        def done(f: Future[object]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("%s: %s failed: %s (no proof this time)", self.name, what, f.exception())

        return done

    def _ready_setup(self) -> _Setup | None:
        if self.setup is None or not self.setup.done() or self.setup.exception() is not None:
            return None
        result = self.setup.result()
        assert isinstance(result, _Setup)
        return result

    def idle(self) -> bool:
        """No setup or proof in the queue or running."""
        pending = [self.setup, *self.jobs]
        return all(f is None or f.done() for f in pending)

    def outgoing(self) -> tuple[TestDataCommitment | None, list[tuple[Evaluation, bytes]]]:
        """What goes with this node's next update: its test-data commitment until a record
        carries it, and its finished proofs until records list them."""
        done = self._ready_setup()
        commitment = done.commitment if done is not None and self.committed_round is None else None
        proofs = [self.ready[r] for r in sorted(self.ready) if r not in self.listed]
        return commitment, proofs

    def _note(self, record: RoundRecord) -> None:
        if record.run != self.run.run_id():
            return
        self.models[record.round] = record.model
        if self.node_id in record.testdata and self.committed_round is None:
            self.committed_round = record.round
        for e in record.evaluations:
            if e.node == self.node_id:
                self.listed.add(e.round)
                self.ready.pop(e.round, None)

    def on_committed(self, record: RoundRecord) -> None:
        """A record of the run committed: what it lists of ours is done; and when the round
        after a proved round committed, prove that round's model (sampled from its beacon),
        if this node had committed to its test data by then."""
        self._note(record)
        r = record.round - 1
        model_cid = self.models.get(r)
        if (
            r >= 1
            and self.run.proves(r)
            and model_cid is not None
            and self.committed_round is not None
            and self.committed_round <= r
        ):
            beacon = sample_beacon(record, self.genesis)
            job = self.submit(lambda: self._prove(r, model_cid, beacon))
            job.add_done_callback(self._log_failure(f"proving round {r}'s model"))
            self.jobs.append(job)

    def can_prove(self, round_no: int) -> bool:
        """Whether this node proves round `round_no`'s model: it committed to its test data
        by then, and the round is on its ledger."""
        c = self.committed_round
        return c is not None and c <= round_no and round_no in self.models

    def prove_final(self, beacon: bytes) -> Future[object]:
        """Queue the proof of the final model (round R = the run's last), sampled from
        `beacon` (round R + 1's, made of the members' partials after round R); the Future's
        result is the `Evaluation` (artifact in `ready`)."""
        last = self.run.rounds
        model_cid = self.models[last]
        self.final = self.submit(lambda: self._prove(last, model_cid, beacon))
        self.final.add_done_callback(self._log_failure("proving the final model"))
        return self.final

    def own_final(self) -> tuple[tuple[Evaluation, ...], bool]:
        """This node's proof of the final model as a voter on a run-final record sees it:
        (the finished proof, if any, not yet listed; whether it is still being made)."""
        last = self.run.rounds
        if last in self.listed:
            return (), False
        pending = self.final is not None and not self.final.done()
        return ((self.ready[last][0],) if last in self.ready else ()), pending

    def note_final(self, record: FinalRecord) -> None:
        """A committed run-final record: what it lists of ours is done."""
        for e in record.evaluations:
            if e.node == self.node_id and record.run == self.run.run_id():
                self.listed.add(e.round)
                self.ready.pop(e.round, None)

    def _prove(self, round_no: int, model_cid: CID, beacon: bytes) -> Evaluation:
        from consortium.zk.proof import EvalProof

        setup = self._ready_setup()
        if setup is None:
            raise ZkError(SETTINGS_MISMATCH, "the circuit's setup failed: no proofs this run")
        weights = get_bytes(self.store, model_cid)
        artifact = in_child(
            _prove_job, self.directory, self.run, self.config, self.name, setup, weights,
            beacon, cid_key(model_cid),
        )  # fmt: skip
        proof = EvalProof.from_bytes(artifact)
        cid = put_bytes(self.store, artifact, self.unixfs)
        c = proof.claims
        ev = Evaluation(self.node_id, round_no, cid, model_cid, c.s, c.correct, c.test_only)
        self.ready[round_no] = (ev, artifact)
        log.info(
            "%s: proved round %d's model: %d of %d sampled test records correct%s",
            self.name,
            round_no,
            c.correct,
            c.s,
            " (TEST ONLY SRS)" if c.test_only else "",
        )
        return ev

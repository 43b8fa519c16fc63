"""A running node: the I/O around the sans-I/O round machine.

The node owns the side effects the protocol asks for: it trains (in a worker thread), sends
messages through its transport, appends committed entries to its SQLite ledger, stores models in
its content-addressed store, and answers peers' catch-up requests (`sync`, `artifact`).

Crash consistency: the node never records a ledger entry whose artifacts (the models and
transcripts it references) are not in its store. A commit stores them before its entry; a
catch-up fetches and re-hashes them before it appends the entries and their heads in one
transaction. On every start the node re-checks that its store holds everything its ledger
references and fetches what is missing (a folder written before this rule, or damaged). In a run
with `replicas` < members, a node later drops the artifacts it does not hold (`_drop_unheld`),
and a start does not fetch those back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from multiformats import CID

from consortium.consent.registry import ConsentRegistry
from consortium.consent.rounds import begin_round
from consortium.core.encoding import decode, encode
from consortium.core.errors import (
    ConfigError,
    ConsortiumError,
    IntegrityError,
    LedgerError,
    TransportError,
)
from consortium.core.files import atomic_write
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import NodeIdentity
from consortium.core.layout import CONSENT_FILE, LEDGER_FILE, STATUS_FILE, STORE_DIR
from consortium.learning.serialize import weights_from_bytes, weights_to_bytes
from consortium.ledger.heads import Cosignature, CosignedHead, TreeHead
from consortium.ledger.log import Ledger
from consortium.ledger.replica import apply as apply_extension
from consortium.ledger.replica import verify_extension
from consortium.node.agreement import RunAgreement
from consortium.node.anchoring import Anchorer
from consortium.node.config import NodeConfig, RunConfig, load_node_config, run_refusals
from consortium.node.evaluations import (
    ZK_DIR,
    EvaluationChecker,
    RunProver,
    member_refusals,
    proof_state,
)
from consortium.node.generator_cache import warm_generators
from consortium.node.learner import Learner, initial_weights
from consortium.node.lock import FolderLock
from consortium.privacy.budget import Budget
from consortium.protocol.messages import (
    Commit,
    Proposal,
    ProtocolError,
    StartRun,
    decode_message,
    encode_message,
)
from consortium.protocol.privacy_round import (
    RecordParams,
    RoundPrivacy,
    client_noise_multiplier,
    record_noise_multiplier,
)
from consortium.protocol.randomness import Randomness
from consortium.protocol.record import (
    ROUND_KIND,
    Evaluation,
    RoundRecord,
    RunIndex,
    StopRecord,
    latest_agreed_run,
    privacy_history,
    round_records,
    stopped_runs,
)
from consortium.protocol.requests import ArtifactRequest, SyncRequest
from consortium.protocol.round import (
    Action,
    Broadcast,
    CastVote,
    Committed,
    Note,
    PersistRelease,
    PersistSurvivorSet,
    PersistVote,
    RoundMachine,
    RoundSettings,
    Send,
    Stopped,
    Train,
)
from consortium.protocol.storage import StorageState, artifact_name
from consortium.protocol.verifier import storage_after
from consortium.store.blockstore import BlockStore
from consortium.store.cid import as_cid, cid_for
from consortium.store.gateway import start_gateway
from consortium.store.objects import get_bytes, is_complete, put_bytes, put_verified, walk
from consortium.store.unixfs import Profile, profile
from consortium.transport.base import Transport
from consortium.zk.queue import ProofQueue

log = logging.getLogger("consortium.node")


def model_cid(data: bytes, store: BlockStore, prof: Profile) -> CID:
    """The CID the store gives `data` under the consortium's profile: computed directly for one
    raw leaf, else by storing it."""
    if prof.raw_leaves and len(data) <= prof.chunk_size:
        return cid_for(data, "raw")
    return put_bytes(store, data, prof)


def open_node_state(directory: Path) -> tuple[Genesis, Ledger, BlockStore]:
    """Open (creating on first start) this node's ledger and store."""
    genesis = Genesis.load_verified(directory / GENESIS_FILE)
    path = directory / LEDGER_FILE
    ledger = Ledger.open(path) if path.exists() else Ledger.create(path, genesis)
    if ledger.genesis().digest() != genesis.digest():
        raise LedgerError(f"{path} belongs to another consortium than {GENESIS_FILE}")
    return genesis, ledger, BlockStore(directory / STORE_DIR)


#: Sync requests a catch-up has in flight at once.
CATCH_UP_FANOUT = 32


class _Snapshot:
    """A peer's ledger as one sync reply, seen through the replica's LedgerSource protocol."""

    def __init__(self, reply: dict[str, Any], start: int) -> None:
        self._size = int(reply["size"])
        self._start = start
        self._entries = list(reply["entries"])
        self._heads = [CosignedHead.from_dict(h) for h in reply["heads"]]
        self._proof = (int(reply["proof_old"]), int(reply["proof_new"]), list(reply["proof"]))

    def size(self) -> int:
        return self._size

    def entries(self, start: int, end: int) -> list[bytes]:
        return self._entries[start - self._start : end - self._start]

    def cosigned_heads(self) -> list[CosignedHead]:
        return self._heads

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        if (old, new) != self._proof[:2]:
            raise LedgerError(f"peer sent a proof for {self._proof[:2]}, needed {(old, new)}")
        return self._proof[2]


class Node(RunAgreement):
    def __init__(
        self,
        directory: Path,
        identity: NodeIdentity,
        transport: Transport,
        config: NodeConfig | None = None,
        clock: Callable[[], float] = time.time,
        randomness: Randomness | None = None,
    ) -> None:
        """`randomness`: injected by tests for exact replays; a real node draws from the OS."""
        self.dir = Path(directory)
        self.identity = identity
        self.transport = transport
        self.config = config or load_node_config(self.dir)
        self.clock = clock
        self.randomness = randomness
        self._lock = FolderLock.acquire(self.dir)  # before any write: one writer per folder
        try:
            self.genesis, self.ledger, self.store = open_node_state(self.dir)
            self._runs = RunIndex(self.ledger)
            self.registry = self._open_registry()
        except BaseException:
            self._lock.release()
            raise
        self.name = identity.name
        #: How this consortium's files become blocks (genesis `unixfs_profile`): every member
        #: must cut a model alike, since voters recompute its CID from its bytes.
        self.unixfs = profile(self.genesis.unixfs_profile)
        self._members = frozenset(m.node_id for m in self.genesis.members)
        self.peers = [m.node_id for m in self.genesis.members if m.node_id != identity.node_id]
        self.machine: RoundMachine | None = None
        self.run: RunConfig | None = None
        self.learner: Learner | None = None
        self.global_model: bytes = b""
        self._dp: tuple[float, float] | None = None  # (client z, record z) of the current run
        self.stopped = ""  # why this node stopped training in the current run, if it did
        self.finished = asyncio.Event()
        self.anchorer = Anchorer(self.dir, identity, self.genesis)
        self._anchoring: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._training = False
        self._catch_up_lock = asyncio.Lock()
        self._catch_up_wanted = False
        self._catch_up_task: asyncio.Task[Any] | None = None
        self._gateway: web.AppRunner | None = None  # the store's IPFS gateway, if configured
        self.gateway_port = 0
        #: Proofs of evaluation of the current run (issue 18): this node's proving, in its
        #: proof queue (started on first use), and the check of the proofs records list.
        self.prover: RunProver | None = None
        self.checker: EvaluationChecker | None = None
        self._proof_queue: ProofQueue | None = None
        self._final_proofs: dict[str, tuple[Evaluation, bytes]] = {}

    def _open_registry(self) -> ConsentRegistry | None:
        path = self.dir / CONSENT_FILE
        if path.exists():
            return ConsentRegistry(path)
        if self.config.consent == "required":
            raise ConfigError(
                f"no consent registry at {path}: import the data subjects' consent with "
                '`consortium consent import`, or set consent = "off" in node.toml for data '
                "about no one"
            )
        return None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.transport.start(self._handle)
        if self.config.gateway is not None:  # node.toml `gateway = "host:port"`
            host, _, port = self.config.gateway.rpartition(":")
            self._gateway, self.gateway_port = await start_gateway(
                self.store, host.strip("[]"), int(port)
            )
            log.info("%s: serving its store at http://%s/ipfs/", self.name, self.config.gateway)
        self._ticker = asyncio.create_task(self._tick_loop())
        await self.recover()
        self._resume()
        self._write_status()

    async def recover(self) -> int:
        """What a start does before resuming: make the store hold everything the ledger
        references (fetching what is missing), then catch up from peers. Returns the number of
        entries appended."""
        await self.repair_store()
        return await self.catch_up()

    async def stop(self) -> None:
        if self._anchoring:  # let anchors in flight land: they are the run's public record
            await asyncio.wait(self._anchoring, timeout=60)
        if self._ticker:
            self._ticker.cancel()
        for t in list(self._tasks):
            t.cancel()
        await self.transport.stop()
        if self._gateway is not None:
            await self._gateway.cleanup()
        if self._proof_queue is not None:  # queued proofs are dropped; one being made finishes
            if self.prover is not None:
                for job in self.prover.jobs:
                    job.cancel()
            await asyncio.to_thread(self._proof_queue.close)
        self.ledger.close()
        if self.registry is not None:
            self.registry.close()
        self.anchorer.close()
        self._lock.release()

    # -- run control -----------------------------------------------------------------------------

    def _stopped_by_agreement(self, stop: StopRecord) -> None:
        self.stopped = f"stopped by agreement of the members: {stop.reason}"
        log.warning("%s: run %s %s", self.name, stop.run, self.stopped)
        self.finished.set()
        self._write_status()

    def start_run(self, run: RunConfig, *, late: bool = False) -> None:
        """Start `run`, whose run-config entry this ledger holds (see `propose_run`); `late`:
        after a restart or catch-up, when the others' beacon partials went out before."""
        self.genesis.purpose(run.purpose)  # ConsortiumError if not a declared purpose
        if self.machine is not None and not self.finished.is_set():
            raise ConfigError("a run is already in progress on this node")
        if run.initial_model:  # e.g. retraining from a checkpoint after an erasure
            try:
                model = get_bytes(self.store, run.initial_model)
            except ConsortiumError as exc:
                raise ConfigError(
                    f"cannot start from model {run.initial_model}: {exc}; it must be a model "
                    "of this consortium's ledger (fetch it with a catch-up first)"
                ) from exc
        self._setup_run(run)
        if run.initial_model:
            assert self.learner is not None
            weights_from_bytes(model, self.learner.like)  # the right architecture, or refuse
            self.global_model = model
        else:
            assert self.learner is not None
            self.global_model = weights_to_bytes(initial_weights(run, self.learner.task))
        put_bytes(self.store, self.global_model, self.unixfs)
        if self.prover is not None:
            self.prover.start(self.global_model)
        self._write_status()
        self._begin(1, late=late)

    def _setup_run(self, run: RunConfig) -> None:
        self.run = run
        self._dp = None
        self.stopped = ""
        self.learner = Learner(self.config.data, run, name=self.name)
        settings = RoundSettings(
            run_id=run.run_id(),
            config=run.body(),
            min_updates=run.min_updates,
            collect_timeout=run.collect_timeout,
            round_timeout=run.round_timeout,
            secure=run.secure_aggregation == "secagg+",
            clip=run.clip_norm,
            model_size=self.learner.model_size,
            min_honest=run.min_honest,
            corrupt_fraction=run.secagg_corrupt_fraction,
            replicas=run.replicas,
            challenge_every=run.challenge_every,
            challenge_artifacts=run.challenge_artifacts,
            committee=run.committee_size,
        )
        self._storage = (0, StorageState())
        if settings.secure:
            # The commitment generators (hash-to-curve, ~0.4 ms each; kept per process and in
            # the machine's cache folder) are loaded or derived while the first round trains,
            # not when the masked input is due.
            words = settings.model_size + 1
            threading.Thread(
                target=warm_generators, args=(words,), name="generators", daemon=True
            ).start()
        votes = {size: CastVote(*vote) for size, vote in self.ledger.my_votes().items()}
        done = self.ledger.my_secagg()
        self.machine = RoundMachine(
            self.identity,
            self.genesis,
            settings,
            self.learner.aggregate,
            lambda data: model_cid(data, self.store, self.unixfs),
            self.learner,
            randomness=self.randomness or Randomness.from_os(),
            votes=votes,
            signed_sets={(r, a): tuple(decode(d)) for r, a, kind, d in done if kind == "set"},
            read_artifact=self._read_artifact,
        )
        self.prover, self.checker = None, None
        self._final_proofs = {}
        if run.proofs:
            keys = self.dir / ZK_DIR / "keys"
            self.checker = EvaluationChecker(
                run, self.genesis, self.store, self.config, self.name, keys
            )
            if self._proof_queue is None:
                self._proof_queue = ProofQueue()
            self.prover = RunProver(
                self.dir,
                run,
                self.config,
                self.name,
                self.identity.node_id,
                self.genesis,
                self.store,
                self.unixfs,
                self._proof_queue.submit,
            )
        self.finished.clear()

    def _resume(self) -> None:
        """After a restart: continue the latest run from the ledger, if it is not finished."""
        entries = list(enumerate(self.ledger.iter_entries()))
        agreed, records = latest_agreed_run(entries)
        if agreed is None:
            return
        stops = stopped_runs(entries)
        if agreed.run in stops:
            self._stopped_by_agreement(StopRecord(agreed.run, stops[agreed.run]))
            return
        run = RunConfig.from_body(dict(agreed.config))
        if run_refusals(run, self.genesis, self.config.policy) or member_refusals(
            run, self.config, self.name, settings=False
        ):
            return  # this member sits the run out
        if not records:
            self.start_run(run, late=True)  # agreed, but its first round never committed here
            return
        last = records[-1]
        self._setup_run(run)
        self.global_model = get_bytes(self.store, last.model)
        if last.round >= run.rounds:
            self.finished.set()
            if self.prover is not None and self._final_on_ledger(run.run_id()) is None:
                self.prover.start(self.global_model, records)  # then the final model's proof
                self._spawn(self.finalize_run())
            return
        if self.prover is not None:
            self.prover.start(self.global_model, records)
        log.info("%s: resuming run %s at round %d", self.name, run.run_id(), last.round + 1)
        self._begin(last.round + 1, late=True)

    def _begin(self, round_no: int, *, late: bool = False) -> None:
        """Begin round `round_no`; `late` asks the members to resend their beacon partials."""
        assert self.machine is not None
        if self.run is not None and self.run.storage:
            self._rereplicate()
        frontier = self.ledger.frontier()
        privacy, my_dp = self._round_privacy()
        proofs = None
        if self.checker is not None and self.run is not None:
            records = self._runs.records()
            self.checker.note(records)
            proofs = proof_state(self.run, records, self.checker.check)
        self._execute(
            self.machine.begin(
                round_no,
                frontier,
                self.clock(),
                model=self.global_model,
                privacy=privacy,
                my_dp=my_dp,
                ask=late,
                storage=self.storage_state() if self.run and self.run.storage else None,
                proofs=proofs,
            )
        )

    # -- replication (docs/architecture.md, "Replication with retrievability challenges") ------

    def storage_state(self) -> StorageState:
        """What this run's round records committed so far (folded once per record)."""
        records = self._runs.records()
        done, state = self._storage
        for record in records[done:]:
            state = storage_after(state, record, self.genesis)
        self._storage = (len(records), state)
        return state

    def _read_artifact(self, cid: str) -> bytes | None:
        """This node's own intact copy of an artifact (the prover's input), or None."""
        try:
            return get_bytes(self.store, cid)  # every block re-hashed against its CID
        except (ConsortiumError, OSError):
            return None

    def _rereplicate(self) -> None:
        """After a challenge round named a holder missing: if this node is the replacement the
        next round commits, fetch the artifact now from a holder that proved it (each block
        verified against the CID), so that it holds it when challenged. Called as each round
        begins, so a node that caught up on the challenge round (or restarted) fetches too."""
        records = self._runs.records()
        if not records:
            return
        record = records[-1]
        if record.storage is None or not record.storage.missing:
            return
        proved: dict[str, list[str]] = {}
        for a in record.storage.answers:
            proved.setdefault(a.artifact, []).append(a.holder)
        for owed in self.storage_state().owed:
            me = self.identity.node_id
            if me in owed.holders and self._read_artifact(owed.artifact) is None:
                sources = [h for h in proved.get(owed.artifact, []) if h != me]
                log.info("%s: re-replicating %s from %s", self.name, owed.artifact, sources[:1])
                self._spawn(self._fetch_held(as_cid(owed.artifact), sources))

    def _drop_unheld(self, latest: CID) -> None:
        """With replicas < n: drop the artifacts of earlier rounds this node does not hold (it
        keeps the latest model, which it trains from, and what it holds or must re-replicate);
        it fetched and verified them before cosigning, and their holders are challenged."""
        assert self.run is not None
        if not self.run.replicas:
            return
        me = self.identity.node_id
        state = self.storage_state()
        keep = {artifact_name(latest)}
        keep |= {a for a, c in state.holdings.items() if me in c.holders}
        keep |= {c.artifact for c in state.owed if me in c.holders}
        drop = [a for a in state.holdings if a not in keep]
        if not drop:
            return
        kept: set[str] = set()
        for artifact in keep:
            try:
                kept |= {str(b) for b in walk(self.store, artifact)}
            except ConsortiumError:
                continue  # not here (yet): nothing of it to protect
        for artifact in drop:
            try:
                blocks = list(walk(self.store, artifact))
            except ConsortiumError:
                continue  # already dropped
            gone = [b for b in blocks if str(b) not in kept and self.store.has(b)]
            for block in gone:
                self.store.delete(block)
            if gone:
                log.info("%s: dropped %s (held by other members)", self.name, artifact)

    async def _fetch_held(self, cid: CID, sources: list[str]) -> None:
        lost = await self._fetch([cid], sources[0] if sources else None)  # repairs damage
        if lost:
            log.error("%s: no holder sent %s to re-replicate", self.name, cid)

    def _round_privacy(self) -> tuple[RoundPrivacy | None, RecordParams | None]:
        """This round's DP state from the ledger: the purpose's budget and every earlier spend
        of it; and, at record level, the (z, q, steps) this node's DP-SGD will use."""
        assert self.run is not None and self.learner is not None
        config = self.run.privacy
        if config.unit == "none":
            return None, None
        purpose = self.genesis.purpose(self.run.purpose)
        budget = Budget.from_purpose(purpose.name, purpose.epsilon, purpose.delta)
        budget.check_config(config)
        history = privacy_history(
            (rec for _, rec in round_records(enumerate(self.ledger.iter_entries()))), purpose.name
        )
        # Records this round trains on (the stored consent selection of this ledger slot).
        n = self.learner.train_count(self._consent_for(self.ledger.size)[2])
        if self._dp is None:  # noise multipliers: fixed for the run, calibrated once
            r = self.run
            self._dp = (
                client_noise_multiplier(config, r.rounds) if config.client_level else 0.0,
                record_noise_multiplier(config, n, r.batch_size, r.epochs, r.rounds)
                if config.record_level
                else 0.0,
            )
        client_z, record_z = self._dp
        my_dp = None
        if config.record_level:
            my_dp = self.learner.record_dp(n, record_z)
        unrecorded = self.unrecorded_releases(purpose.name)
        return RoundPrivacy(config, budget, history, client_z, unrecorded), my_dp

    def unrecorded_releases(self, purpose: str) -> list[Mapping[str, Any]]:
        """Privacy bodies of rounds (of `purpose`) whose update this node released but whose
        ledger slot holds no round record with this node in it: a leader withheld the round,
        or a run-stop took its place. The ledger never charged them; this node counts them."""
        out: list[Mapping[str, Any]] = []
        size = self.ledger.size
        for slot, _, kind, value in self.ledger.my_secagg():
            if kind != "release" or slot >= size:
                continue  # the slot is still open: the round may yet commit
            body = decode(value)
            if not isinstance(body, dict) or body.get("purpose") != purpose:
                continue
            entry = self.ledger.entry(slot)
            if entry.kind == ROUND_KIND:
                record = RoundRecord.from_entry(entry)
                if self.identity.node_id in record.participants:
                    continue  # charged by the record that took the slot
            out.append(body)
        return out

    # -- protocol actions ------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._spawn(self._send(action.to, encode_message(action.message)))
            elif isinstance(action, Broadcast):
                payload = encode_message(action.message)
                for peer in self.peers:
                    self._spawn(self._send(peer, payload))
            elif isinstance(action, Train):
                self._spawn(self._train(action.round))
            elif isinstance(action, PersistRelease):  # durable before the update can be seen
                self.ledger.record_secagg(action.slot, 0, "release", encode(dict(action.privacy)))
            elif isinstance(action, PersistSurvivorSet):  # durable before the signature leaves
                survivors = encode(list(action.survivors))
                self.ledger.record_secagg(action.slot, action.attempt, "set", survivors)
            elif isinstance(action, PersistVote):  # durable before the vote after it is sent
                self.ledger.record_vote(
                    action.size, action.root, action.attempt, action.author, action.record_attempt
                )
            elif isinstance(action, Committed):
                self._commit(action)
            elif isinstance(action, Note):
                level = logging.INFO if action.level == "info" else logging.WARNING
                log.log(level, "%s: %s", self.name, action.text)
            elif isinstance(action, Stopped):
                log.error("%s: %s", self.name, action.reason)
                self.stopped = action.reason
                self.finished.set()
                self._write_status()

    def _cid_of(self, data: bytes) -> CID:
        return model_cid(data, self.store, self.unixfs)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, peer: str, payload: bytes, method: str = "msg") -> None:
        try:
            await self.transport.request(peer, method, payload, timeout=10.0)
        except TransportError as exc:  # a member that missed it catches up from the ledger
            log.info("%s: %s to %s not delivered: %s", self.name, method, peer[:16], exc)

    async def _train(self, round_no: int) -> None:
        assert self.learner is not None and self.machine is not None and self.run is not None
        learner, model = self.learner, self.global_model
        slot = self.ledger.size  # the ledger index this round's record will take
        try:
            consent, erasures, allowed = self._consent_for(slot)
            dp_noise = self._dp[1] if self._dp and self.run.privacy.record_level else None
            n, update, metrics = await asyncio.to_thread(
                learner.train, model, round_no, allowed, dp_noise
            )
        except ConsortiumError as exc:  # e.g. no consented data: sit the round out, say why
            log.error("%s: local training for round %d failed: %s", self.name, round_no, exc)
            return
        if self.machine.round == round_no:
            testdata, evaluations = self.prover.outgoing() if self.prover else (None, [])
            actions = self.machine.on_trained(
                n,
                update,
                metrics,
                self.clock(),
                consent=consent,
                erasures=erasures,
                testdata=testdata,
                evaluations=evaluations,
            )
            self._execute(actions)

    def _consent_for(self, slot: int) -> tuple[dict[str, Any] | None, list[Any], np.ndarray | None]:
        """The records this round may use (consent for the run's purpose, now), the commitment
        to them, and the erasures carried out since this node's previous round."""
        assert self.run is not None
        if self.registry is None:
            return None, [], None
        assert self.learner is not None
        sel = begin_round(
            self.registry, self.run.purpose, slot, at=self.clock(), held=self.learner.record_ids
        )
        previous = [r.at for r in self.registry.rounds() if r.round < slot]
        since = max(previous, default=0.0)
        erased: dict[float, int] = {}
        for ev in self.registry.history():
            if ev.kind == "erase" and since < ev.at <= sel.at:
                erased[ev.at] = erased.get(ev.at, 0) + 1
        erasures = [{"records": n, "at": int(at * 1000)} for at, n in sorted(erased.items())]
        return sel.commitment.to_body(), erasures, sel.record_ids

    def _commit(self, c: Committed) -> None:
        assert self.run is not None
        p = c.proposal
        if self.ledger.size != p.size - 1:
            # A catch-up appended this round meanwhile; the resume after it replaces this machine.
            log.info(
                "%s: round %d is already on the ledger (size %d)",
                self.name,
                c.round,
                self.ledger.size,
            )
            return
        # Artifacts first: an entry on the ledger is never without the bytes it references.
        put_bytes(self.store, p.model, self.unixfs)
        if p.transcript:  # the published SecAgg+ transcript: auditors recompute the sum from it
            put_bytes(self.store, p.transcript, self.unixfs)
        for proof in p.proofs:  # the proofs of evaluation the record lists: audit re-checks
            put_bytes(self.store, proof, self.unixfs)
        head = CosignedHead(
            TreeHead(p.size, p.root, p.time),
            [Cosignature(node_id, sig) for node_id, sig in sorted(c.cosignatures.items())],
        )
        # The machine verified the entry and each cosignature (`Committed`): not again here.
        self.ledger.append_many([c.entry], verify=False, heads=[head], expect_size=p.size - 1)
        self.global_model = p.model
        log.info("%s: round %d committed (leader %s)", self.name, c.round, c.entry.author[:16])
        if self.run.storage:
            record = RoundRecord.from_entry(c.entry)
            self._drop_unheld(record.model)
        if self.prover is not None:
            self.prover.on_committed(RoundRecord.from_entry(c.entry))
        self._write_status()
        k = self.run.anchor_every
        if (
            k
            and (c.round % k == 0 or c.round == self.run.rounds)
            and self.anchorer.should_anchor(c.entry.author)  # shared chain: the leader only
        ):
            task = asyncio.create_task(self.anchorer.publish(self.name, p.size, p.root))
            self._anchoring.add(task)
            task.add_done_callback(self._anchoring.discard)
        if c.round >= self.run.rounds:
            self.finished.set()
            self._write_status()
            if self.prover is not None:  # the proofs of the final model: a run-final entry
                self._spawn(self.finalize_run())
        else:
            self._begin(c.round + 1)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_seconds)
            m = self.machine
            if m is not None and not self.finished.is_set():
                round_no, attempt = m.round, m.attempt
                try:
                    self._execute(m.tick(self.clock()))
                except ConsortiumError as exc:  # one bad deadline must not stop the clock
                    log.error("%s: round %d: %s", self.name, round_no, exc)
                if self.machine is m and m.round == round_no and m.attempt != attempt:
                    # The attempt timed out: perhaps the others committed the round and this
                    # node missed the commit (it was starting, say). Messages of the next round
                    # would tell it, but after a run's last round none come: ask the peers.
                    self._want_catch_up()

    def _write_status(self) -> None:
        records = self._runs.records()
        status = {
            "node": self.name,
            "size": self.ledger.size,
            "round": records[-1].round if records else 0,
            "rounds": self.run.rounds if self.run else 0,
            "finished": self.finished.is_set(),
            "stopped": self.stopped,
        }
        atomic_write(self.dir / STATUS_FILE, json.dumps(status).encode())

    # -- catch-up ---------------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Pull the entries we miss from each peer in turn. What a peer sends is verified against
        its final head, then every artifact the new entries reference is fetched and re-hashed,
        and only then are the entries and their heads appended, in one transaction. Returns the
        number of entries appended."""
        async with self._catch_up_lock:  # one at a time: they would fetch the same artifacts
            # Ask every peer at once (a start-up or a dead peer no longer costs one round trip
            # or one timeout per peer), then apply the answers one by one, in peer order; an
            # answer that predates an entry appended meanwhile is asked for again.
            start = self.ledger.size
            fanout = asyncio.Semaphore(CATCH_UP_FANOUT)

            async def ask(peer: str) -> bytes | None:
                async with fanout:
                    return await self._sync_from(peer, start)

            answers = await asyncio.gather(*(ask(p) for p in self.peers))
            appended = 0
            for peer, raw in zip(self.peers, answers, strict=True):
                if raw is None:
                    continue
                if self.ledger.size == start:
                    appended += await self._apply_sync(peer, raw, start)
                else:
                    appended += await self._catch_up_from(peer)
            if appended:
                log.info("%s: caught up %d entries", self.name, appended)
            return appended

    async def _sync_from(self, peer: str, start: int) -> bytes | None:
        """A peer's sync answer from ledger size `start`, or None (logged) if it sent none."""
        try:
            return await self.transport.request(peer, "sync", encode({"from": start}), 10.0)
        except ConsortiumError as exc:
            log.info("%s: catch-up from %s failed: %s", self.name, peer[:16], exc)
            return None

    async def _catch_up_from(self, peer: str) -> int:
        start = self.ledger.size
        raw = await self._sync_from(peer, start)
        return 0 if raw is None else await self._apply_sync(peer, raw, start)

    async def _apply_sync(self, peer: str, raw: bytes, start: int) -> int:
        """Verify a peer's sync answer against this ledger, fetch the artifacts its entries
        reference, and append them (one transaction); the number of entries appended."""
        try:
            ext = verify_extension(self.ledger, _Snapshot(decode(raw), start))
        except (ConsortiumError, KeyError, TypeError, ValueError) as exc:
            log.info("%s: catch-up from %s failed: %s", self.name, peer[:16], exc)
            return 0
        missing = await self._fetch([c for c in ext.references() if not self._holds(c)], peer)
        if missing:
            log.warning(
                "%s: not appending entries %d-%d from %s: no peer sent %d artifact(s) they "
                "reference: %s",
                self.name,
                ext.old,
                ext.new - 1,
                peer[:16],
                len(missing),
                ", ".join(map(str, missing)),
            )
            return 0
        try:
            return apply_extension(self.ledger, ext).appended
        except ConsortiumError as exc:  # e.g. a commit appended meanwhile: the next one retries
            log.info("%s: catch-up from %s not applied: %s", self.name, peer[:16], exc)
            return 0

    async def repair_store(self) -> list[CID]:
        """Fetch every artifact the ledger references that the store lacks; return (and log)
        those no peer sent. Also removes the temp files of block writes a crash cut short."""
        removed = self.store.remove_temp_files()
        if removed:
            log.info("%s: removed %d unfinished block write(s)", self.name, len(removed))
        wanted: dict[str, CID] = {}
        for entry in self.ledger.iter_entries(1):
            for ref in entry.references():
                cid = as_cid(ref)  # base32, as printed everywhere else
                wanted.setdefault(str(cid), cid)
        unheld = self._unheld()  # replicas < n: what other members hold for the run
        missing = [c for k, c in wanted.items() if not self._holds(c) and k not in unheld]
        if not missing:
            return []
        log.warning(
            "%s: the store lacks %d artifact(s) the ledger references; fetching them",
            self.name,
            len(missing),
        )
        lost = await self._fetch(missing)
        for cid in lost:
            log.error("%s: no peer sent artifact %s; the folder will not audit", self.name, cid)
        return lost

    def _unheld(self) -> set[str]:
        """Artifacts of the ledger's latest run this node need not keep (a run with replicas:
        those it does not hold, less the latest model and any it must re-replicate)."""
        agreed, records = latest_agreed_run(enumerate(self.ledger.iter_entries()))
        if agreed is None or not records:
            return set()
        try:
            run = RunConfig.from_body(dict(agreed.config))
            state = StorageState()
            for record in records:
                state = storage_after(state, record, self.genesis)
        except ConsortiumError:
            return set()  # fetch everything; the run itself will say what is wrong
        if not run.replicas:
            return set()
        me = self.identity.node_id
        keep = {artifact_name(records[-1].model)}
        keep |= {c.artifact for c in state.owed if me in c.holders}
        return {a for a, c in state.holdings.items() if me not in c.holders and a not in keep}

    def _holds(self, cid: CID) -> bool:
        return is_complete(self.store, cid)

    async def _fetch(self, cids: list[CID], first: str | None = None) -> list[CID]:
        """Fetch each artifact from `first`, else from the other peers, storing only bytes
        that re-hash to its CID; return the CIDs no peer sent."""
        order = [first] if first else []
        order += [p for p in self.peers if p != first]
        lost = []
        for cid in cids:
            for peer in order:
                try:
                    data = await self.transport.request(
                        peer, "artifact", encode({"cid": str(cid)}), 30.0
                    )
                except TransportError as exc:
                    log.info("%s: %s did not send %s: %s", self.name, peer[:16], cid, exc)
                    continue
                try:  # stored as the file `cid` is, under whichever profile made it
                    put_verified(self.store, data, cid)
                except IntegrityError:
                    log.warning(
                        "%s: peer %s sent bytes that do not match %s", self.name, peer[:16], cid
                    )
                    continue
                break
            else:
                lost.append(cid)
        return lost

    # -- requests from peers ---------------------------------------------------------------------

    async def _handle(self, sender: str, method: str, payload: bytes) -> bytes:
        """Serve a peer. Every body goes through its typed decoder first, so anything malformed
        is a ProtocolError the transport returns as a refusal, never an exception in the node."""
        if sender not in self._members:  # gRPC authenticates members; in-process does not
            raise ProtocolError(f"refused {method!r} from non-member {sender}")
        if method == "msg":
            msg = decode_message(payload)
            if isinstance(msg, StartRun):
                raise ConfigError(
                    "runs start only from a run-config entry a quorum cosigned (`run start`)"
                )
            if self.machine is not None and not self.finished.is_set():
                self._execute(self.machine.on_message(sender, msg, self.clock()))
                if self._behind(msg):
                    self._want_catch_up()
            return b""
        if method in ("run-check", "run-vote"):
            proposal = Proposal.from_body(decode(payload))
            return await self.answer_run(proposal, method)
        if method == "final-partial":
            return self.answer_final_partial(payload)
        if method == "final-proof":
            self.receive_final_proof(sender, payload)
            return b""
        if method == "run-abandon":
            self._abandon_run(payload)
            return b""
        if method == "run-commit":
            body = decode(payload)
            if not isinstance(body, dict) or not isinstance(body.get("cosignatures"), dict):
                raise ConfigError("malformed run commit")
            self._commit_agreed(Proposal.from_body(body["proposal"]), body["cosignatures"])
            return b""
        if method in ("propose-run", "propose-stop"):
            if sender != self.identity.node_id:
                raise ConfigError("only this member's own operator may propose through it")
            if method == "propose-stop":
                reason = decode(payload)
                if not isinstance(reason, str) or len(reason) > 500:
                    raise ConfigError("a stop reason is a string of at most 500 characters")
                return encode(await self.propose_stop(reason))
            return encode(await self.propose_run(RunConfig.from_body(decode(payload))))
        if method == "sync":
            return self._sync_reply(SyncRequest.decode(payload))
        if method == "artifact":
            return get_bytes(self.store, ArtifactRequest.decode(payload).cid)
        raise ProtocolError(f"unknown method {method!r}")

    def _behind(self, msg: Any) -> bool:
        """A commit for a later round, or any message two rounds ahead: we missed a commit."""
        m = self.machine
        if m is None:
            return False
        r = getattr(msg, "round", 0)
        return r > m.round + 1 or (isinstance(msg, Commit) and r > m.round)

    def _want_catch_up(self) -> None:
        """Catch up and resume, once more after the catch-up in progress if one is: every
        message that shows we are behind asks, and they come in bursts."""
        self._catch_up_wanted = True
        if self._catch_up_task is None or self._catch_up_task.done():
            self._catch_up_task = self._spawn(self._catch_up_and_resume())

    async def _catch_up_and_resume(self) -> None:
        while self._catch_up_wanted:
            self._catch_up_wanted = False
            if await self.catch_up():
                self._resume()

    def _sync_reply(self, req: SyncRequest) -> bytes:
        start = req.start
        if not 0 <= start <= self.ledger.size:
            raise LedgerError(f"cannot serve entries from {start}")
        final = self.ledger.latest_final_head()
        new = final.head.size if final else 0
        heads = [h.to_dict() for h in self.ledger.cosigned_heads() if h.head.size >= start]
        proof = self.ledger.consistency_proof(start, new) if 0 < start <= new else []
        reply = {
            "size": self.ledger.size,
            "entries": [d for _, d in self.ledger.raw_entries(start, new)] if new > start else [],
            "heads": heads,
            "proof_old": start,
            "proof_new": new,
            "proof": proof,
        }
        return encode(reply)

"""Agreeing on runs: the node's side of `protocol/agreement.py` (run-config, run-stop and
run-final entries that a quorum cosigns before they take effect).

`run start`/`run stop` ask a member's own node to propose; it asks every member in two phases,
*check* (would you accept? nothing signed, nothing locked) and, if a quorum would, *vote* (cosign
the head "ledger + entry", persisted first), then commits with the cosignatures. Each member
answers by the consortium's rules and its own `[policy]` (`run_refusals`), and signs a refusal it
gives, so that signed refusals can release votes on a proposal that can no longer pass.

The run-final entry (issue 18: the proofs of the final model) is proposed by no operator: after a
run's last round R, each node collects t partials of "round R + 1"'s beacon (members answer
`final-partial` only once round R is final on their ledger), proves the final model on the sample
that beacon draws, in its proof queue, and sends the proof to every member (`final-proof`). The
leader of attempt a of round R + 1 (the beacon's order) proposes, once it holds a proof from every
node that committed to its test data (or after the round timeout), a run-final entry with the
partials and the proofs it verified; if no run-final entry is on the ledger a round timeout later,
attempt a + 1's leader does. A voter whose own proof is left out (or still being made) refuses
(`own-proof-missing`), as in rounds.

A mixin of `Node`: it uses the node's identity, genesis, ledger, transport and run state, and
calls back into the node to start or stop a run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consortium.core.encoding import Domain, decode, encode
from consortium.core.errors import ConfigError, ConsortiumError, PeerRefused, TransportError
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity
from consortium.learning.task import TaskError
from consortium.ledger.entries import Entry
from consortium.ledger.heads import Cosignature, CosignedHead, TreeHead
from consortium.ledger.log import Ledger
from consortium.node.config import NodeConfig, RunConfig, data_refusals, run_refusals
from consortium.node.evaluations import member_refusals, proof_state
from consortium.protocol import agreement
from consortium.protocol.beacon import (
    BeaconCollector,
    BeaconPartial,
    attempt_beacon,
    beacon_message,
    make_partial,
)
from consortium.protocol.messages import MAX_PROOF_BYTES, Proposal
from consortium.protocol.record import (
    FINAL_KIND,
    RUN_KIND,
    STOP_KIND,
    Evaluation,
    FinalRecord,
    RunRecord,
    StopRecord,
    latest_agreed_run,
    run_records,
)
from consortium.protocol.round import RoundMachine
from consortium.protocol.schedule import leader_for
from consortium.protocol.secure_round import max_faulty
from consortium.protocol.verifier import (
    OWN_PROOF,
    RecordRejected,
    check_proof_artifacts,
    verify_evaluation,
    verify_final_record,
)
from consortium.store.blockstore import BlockStore
from consortium.store.cid import cid_key
from consortium.store.objects import put_bytes
from consortium.store.unixfs import Profile
from consortium.transport.base import Transport

if TYPE_CHECKING:
    from consortium.node.evaluations import EvaluationChecker, RunProver

log = logging.getLogger("consortium.node")

AGREED_KINDS = (RUN_KIND, STOP_KIND, FINAL_KIND)
#: Proposals of one entry when rounds keep committing under it, and the pause before the next
#: (times the try): time for the round's commit to reach this node.
AGREE_TRIES = 3
AGREE_RETRY_DELAY = 0.2


class RunAgreement:
    """Proposing, answering and committing run-config and run-stop entries."""

    # Provided by Node.
    identity: NodeIdentity
    genesis: Genesis
    ledger: Ledger
    transport: Transport
    config: NodeConfig
    clock: Callable[[], float]
    peers: list[str]
    name: str
    machine: RoundMachine | None
    run: RunConfig | None
    stopped: str
    finished: asyncio.Event
    store: BlockStore
    unixfs: Profile
    prover: RunProver | None
    checker: EvaluationChecker | None
    #: The proofs of the final model received (node -> (evaluation, artifact)), for the
    #: run-final entry; reset per run.
    _final_proofs: dict[str, tuple[Evaluation, bytes]]

    def start_run(self, run: RunConfig, *, late: bool = False) -> None:
        raise NotImplementedError

    def _stopped_by_agreement(self, stop: StopRecord) -> None:
        raise NotImplementedError

    def _write_status(self) -> None:
        raise NotImplementedError

    async def _send(self, peer: str, payload: bytes, method: str = "msg") -> None:
        raise NotImplementedError

    async def propose_run(self, run: RunConfig) -> dict[str, Any]:
        """Propose `run` to every member; start it if a quorum cosigns its run-config entry.
        Returns the agreement report (see `_agree`) with "started". A run that pins no task code
        hash gets the hash of the task as installed here (`RunConfig.pinned`)."""
        run = run.pinned()
        report = await self._agree(RUN_KIND, RunRecord(run.run_id(), run.body()).to_body())
        report["run"], report["started"] = run.run_id(), report["agreed"]
        return report

    async def propose_stop(self, reason: str) -> dict[str, Any]:
        """Propose to stop the current run; it stops everywhere once a quorum cosigned the
        run-stop entry. Returns the agreement report (see `_agree`)."""
        if self.run is None or self.finished.is_set():
            raise ConfigError("no run is in progress on this node")
        report = await self._agree(STOP_KIND, StopRecord(self.run.run_id(), reason).to_body())
        report["run"] = self.run.run_id()
        return report

    async def _agree(
        self, kind: str, body: dict[str, Any], proofs: tuple[bytes, ...] = ()
    ) -> dict[str, Any]:
        """`_agree_at_head`, proposed again (at most `AGREE_TRIES` times in all) when it failed
        only because a round committed meanwhile: this ledger grew during the attempt, or a
        member refused the head as not its ledger plus the entry (it is ahead; the round's
        commit reaches this node shortly). A `run stop` during a run races the rounds."""
        for attempt in range(AGREE_TRIES):
            size = self.ledger.size
            report = await self._agree_at_head(kind, body, proofs)
            stale = self.ledger.size != size or any(
                agreement.STALE_HEAD in reason for reason in report["refused"].values()
            )
            if report["agreed"] or not stale or attempt == AGREE_TRIES - 1:
                return report
            await asyncio.sleep(AGREE_RETRY_DELAY * (attempt + 1))
        raise AssertionError("unreachable")

    async def _agree_at_head(
        self, kind: str, body: dict[str, Any], proofs: tuple[bytes, ...] = ()
    ) -> dict[str, Any]:
        """Get a `kind` entry cosigned by a quorum and committed on every member.

        Two phases, so that a proposal some members refuse by policy locks nobody's vote:
        every member first says whether it would accept (nothing signed); only if a quorum
        would are the acceptors asked to cosign. Returns {"agreed", "accepted": [names],
        "refused": {name: reason}, "unreachable": {name: reason}}."""
        p = agreement.propose(
            self.identity,
            self.genesis,
            self.ledger.frontier(),
            kind,
            body,
            int(self.clock() * 1000),
            proofs,
        )
        names = {m.node_id: m.name for m in self.genesis.members}
        refused: dict[str, str] = {}
        unreachable: dict[str, str] = {}
        report: dict[str, Any] = {
            "agreed": False,
            "accepted": [],
            "refused": refused,
            "unreachable": unreachable,
        }
        willing = await self._ask_members(p, "run-check", list(names), refused, unreachable)
        report["accepted"] = sorted(names[n] for n in willing)
        if len(willing) < self.genesis.quorum:
            return report
        answers = await self._ask_members(p, "run-vote", sorted(willing), refused, unreachable)
        sigs = {n: a["sig"] for n, a in answers.items() if "sig" in a}
        refusals = {n: a["refusal"] for n, a in answers.items() if "refusal" in a}
        report["accepted"] = sorted(names[n] for n in sigs)
        try:
            valid = agreement.valid_cosignatures(p, self.genesis, sigs)
        except agreement.AgreementRefused:
            # Rare (a member changed its mind or went away between the phases): with enough
            # signed refusals, those who cosigned may vote again at this ledger size.
            note = encode({"proposal": p.to_body(), "refusals": refusals})
            await asyncio.gather(
                *(self._send(peer, note, "run-abandon") for peer in self.peers),
                return_exceptions=True,
            )
            return report
        commit = encode({"proposal": p.to_body(), "cosignatures": valid})
        self._commit_agreed(p, valid)
        await asyncio.gather(
            *(self._send(peer, commit, "run-commit") for peer in self.peers),
            return_exceptions=True,
        )
        report["agreed"] = True
        return report

    async def _ask_members(
        self,
        p: Proposal,
        method: str,
        members: list[str],
        refused: dict[str, str],
        unreachable: dict[str, str],
    ) -> dict[str, dict[str, Any]]:
        """Each member's answer to `method` ("run-check" or "run-vote") on `p`: those that
        accept, with their answer; refusals and the unreachable are recorded by name."""
        names = {m.node_id: m.name for m in self.genesis.members}
        payload = encode(p.to_body())
        accepted: dict[str, dict[str, Any]] = {}

        async def ask(member: str) -> None:
            name = names[member]
            try:
                if member == self.identity.node_id:
                    raw = await self.answer_run(p, method)
                else:
                    raw = await self.transport.request(member, method, payload, 15.0)
                answer = decode(raw)
                if not isinstance(answer, dict):
                    raise ConfigError("malformed answer to a run proposal")
                if "refused" in answer:
                    refused[name] = str(answer["refused"])
                    if isinstance(answer.get("sig"), bytes):  # its signed refusal
                        accepted[member] = {"refusal": answer["sig"]}
                elif method == "run-vote" and not isinstance(answer.get("sig"), bytes):
                    raise ConfigError("malformed answer to a run proposal")
                else:
                    accepted[member] = answer
            except PeerRefused as exc:
                refused[name] = str(exc)
            except TransportError as exc:
                unreachable[name] = str(exc)
            except ConsortiumError as exc:
                refused[name] = str(exc)

        await asyncio.gather(*(ask(m) for m in members))
        if method == "run-check":
            return {m: a for m, a in accepted.items() if "refusal" not in a}
        return accepted

    #: (proposal root, refusals) of the last run proposal this member checked: the vote that
    #: follows the check reuses them instead of loading the task's data again.
    _checked_run: tuple[bytes, list[str]] | None = None

    async def answer_run(self, p: Proposal, method: str) -> bytes:
        """This member's answer to "run-check" or "run-vote" on `p` (see `_vote_run`). At the
        check, the slow part (loading the task and its data) runs in a worker thread, so the
        node keeps serving its peers meanwhile."""
        if method == "run-check":
            try:
                entry = agreement.check(p, self.genesis, self.ledger.frontier(), AGREED_KINDS)
                if entry.kind == RUN_KIND:  # a run-final's check reads the ledger: not a thread
                    await asyncio.to_thread(self._refusals, p, entry)
            except ConsortiumError:
                pass  # `_vote_run` meets it again and answers with it
        return self._vote_run(p, dry_run=method == "run-check")

    def _vote_run(self, p: Proposal, *, dry_run: bool = False) -> bytes:
        """This member's answer to a proposed run-config or run-stop entry: {"sig": cosignature}
        (with `dry_run`, {"ok": true}: nothing signed, nothing locked) or, when its rules or
        policy refuse it, {"refused": why, "sig": signed refusal}."""
        entry = agreement.check(p, self.genesis, self.ledger.frontier(), AGREED_KINDS)
        refusals = self._refusals(p, entry)
        if refusals:
            why = "refused: " + "; ".join(refusals)
            statement = agreement.refusal_statement(p)
            sig = self.identity.sign(Domain.MESSAGE, statement, self.genesis.digest())
            return encode({"refused": why, "sig": sig})
        prior = self.ledger.my_votes().get(p.size)
        if dry_run:
            if prior is not None and prior[0] != p.root:
                raise agreement.AgreementRefused(
                    f"this member already cosigned another head of size {p.size}"
                )
            return encode({"ok": True})
        sig = agreement.cosign(self.identity, self.genesis, p, prior[0] if prior else None)
        self.ledger.record_vote(p.size, p.root, 0, entry.author, 0)  # before the vote leaves
        if self.machine is not None:  # a stop takes the position a round's record would
            self.machine.note_vote(p.size, p.root, entry.author)
        return encode({"sig": sig})

    def _refusals(self, p: Proposal, entry: Entry) -> list[str]:
        """Why this member refuses an agreed entry (empty: it accepts). A run: the consortium's
        rules and its policy (`run_refusals`), then whether it can load the task's data
        (`data_refusals`): a member that cannot would sit the run out anyway, and refusing
        says so to the proposer. This gives no member a veto: a run needs a quorum, not all."""
        if entry.kind == RUN_KIND:
            if self.machine is not None and not self.finished.is_set():
                raise agreement.AgreementRefused("a run is already in progress on this node")
            checked = self._checked_run
            if checked is not None and checked[0] == p.root:
                return checked[1]
            run = self._agreed_config(entry)
            out = run_refusals(run, self.genesis, self.config.policy)
            if not out:  # only a task the policy allows is imported and run
                out = data_refusals(run, self.config.data, self.name)
            if not out:  # proofs of evaluation: EZKL, the run's SRS, the pinned settings
                out = member_refusals(run, self.config, self.name)
            self._checked_run = (p.root, out)
            return out
        if entry.kind == FINAL_KIND:
            return self._final_refusals(p, FinalRecord.from_entry(entry))
        stop = StopRecord.from_entry(entry)
        if self.run is None or self.run.run_id() != stop.run or self.finished.is_set():
            return [f"run {stop.run} is not in progress on this node"]
        return []

    def _abandon_run(self, payload: bytes) -> None:
        """Lift this member's vote for a run proposal that signed refusals show can never reach
        quorum, so another run can be proposed at that ledger size."""
        body = decode(payload)
        if not isinstance(body, dict) or not isinstance(body.get("refusals"), dict):
            raise ConfigError("malformed run abandonment")
        p = Proposal.from_body(body["proposal"])
        if not agreement.abandoned(
            p, self.genesis, body["refusals"], max_faulty(len(self.peers) + 1)
        ):
            raise agreement.AgreementRefused("too few signed refusals to abandon that proposal")
        prior = self.ledger.my_votes().get(p.size)
        if prior is not None and prior[0] == p.root:
            self.ledger.forget_vote(p.size, p.root)

    def _agreed_config(self, entry: Entry) -> RunConfig:
        record = RunRecord.from_entry(entry)
        run = RunConfig.from_body(dict(record.config))
        if run.run_id() != record.run:
            raise agreement.AgreementRefused("the run id is not the hash of its configuration")
        return run

    def _commit_agreed(self, p: Proposal, cosignatures: dict[str, bytes]) -> None:
        """Append an agreed entry with its cosigned head (one transaction), then act on it: a
        run-config starts the run (unless this member's policy refuses it: then it sits the run
        out), a run-stop stops it."""
        entry = agreement.check(p, self.genesis, self.ledger.frontier(), AGREED_KINDS)
        cosignatures = agreement.valid_cosignatures(p, self.genesis, cosignatures)
        run = self._agreed_config(entry) if entry.kind == RUN_KIND else None
        final = FinalRecord.from_entry(entry) if entry.kind == FINAL_KIND else None
        listed = {cid_key(e.proof) for e in final.evaluations} if final is not None else set()
        for proof in p.proofs:  # the listed artifacts before the entry (nothing else rides along)
            if cid_key(self._cid_of(proof)) in listed:
                put_bytes(self.store, proof, self.unixfs)
        head = CosignedHead(
            TreeHead(p.size, p.root, p.time),
            [Cosignature(node_id, sig) for node_id, sig in sorted(cosignatures.items())],
        )
        # All or nothing; the entry's signature and these cosignatures were just verified.
        self.ledger.append_many([entry], heads=[head], expect_size=p.size - 1, verify=False)
        if final is not None:
            if self.prover is not None:
                self.prover.note_final(final)
            log.info(
                "%s: the proofs of run %s's final model are on the ledger (%d)",
                self.name,
                final.run,
                len(final.evaluations),
            )
            self._write_status()
            return
        if run is None:
            self._stopped_by_agreement(StopRecord.from_entry(entry))
            return
        refusals = run_refusals(run, self.genesis, self.config.policy)
        refusals = refusals or member_refusals(run, self.config, self.name, settings=False)
        if not refusals:
            try:
                self.start_run(run)
                return
            except TaskError as exc:  # e.g. its data(): one line in the log, not a traceback
                self.machine, refusals = None, [f"cannot train it: {exc}"]
        self.stopped = "sitting this run out: " + "; ".join(refusals)
        log.error("%s: %s", self.name, self.stopped)
        self._write_status()

    # -- the run-final entry: proofs of the final model (issue 18) ------------------------------

    def _final_on_ledger(self, run_id: str) -> FinalRecord | None:
        for entry in self.ledger.iter_entries():
            if entry.kind == FINAL_KIND:
                final = FinalRecord.from_entry(entry)
                if final.run == run_id:
                    return final
        return None

    def _last_round_final(self, run_id: str) -> int | None:
        """The last round of run `run_id` if it is on this ledger (final), else None."""
        entries = list(enumerate(self.ledger.iter_entries()))
        agreed, records = latest_agreed_run(entries)
        if agreed is None or agreed.run != run_id or self.run is None:
            return None
        if not records or records[-1].round < self.run.rounds:
            return None
        return records[-1].round

    def _final_message(self, run_id: str, last: int) -> bytes:
        return beacon_message(self.genesis.digest(), run_id, last + 1)

    def answer_final_partial(self, payload: bytes) -> bytes:
        """This member's partial of "round R + 1"'s beacon (R: the run's last round), released
        only once round R is final here, as it would release it on beginning round R + 1."""
        body = decode(payload)
        if not isinstance(body, dict) or not isinstance(body.get("run"), str):
            raise ConfigError("malformed final-partial request")
        last = self._last_round_final(body["run"])
        if last is None or self.run is None or not self.run.proofs:
            raise ConfigError("the run's last round is not final on this node")
        if not self.genesis.in_beacon_group(self.identity.node_id):
            raise ConfigError("this node is not in the beacon group: it has no partial")
        message = self._final_message(body["run"], last)
        mine = make_partial(self.genesis.secret_share(self.identity), message)
        return encode(mine.to_body())

    def receive_final_proof(self, sender: str, payload: bytes) -> None:
        """A member's proof of the final model, for the run-final entry (checked when listed)."""
        body = decode(payload)
        if not isinstance(body, dict) or not isinstance(body.get("artifact"), bytes):
            raise ConfigError("malformed final-proof")
        if len(body["artifact"]) > MAX_PROOF_BYTES:
            raise ConfigError(f"a final proof is at most {MAX_PROOF_BYTES} bytes")
        ev = Evaluation.from_body(body.get("evaluation"))
        if ev.node != sender:
            raise ConfigError("a member sends only its own proof of the final model")
        if self.run is not None and self.run.proofs and ev.round == self.run.rounds:
            self._final_proofs[sender] = (ev, body["artifact"])  # checked before it is listed

    async def _final_partials(self, run_id: str, last: int) -> tuple[BeaconPartial, ...]:
        """t partials of round `last` + 1's beacon: this node's, then the members' answers."""
        collector = BeaconCollector(self.genesis.group_key(), self._final_message(run_id, last))
        if self.genesis.in_beacon_group(self.identity.node_id):
            share = self.genesis.secret_share(self.identity)
            collector.add(make_partial(share, collector.message))
        group = set(self.genesis.beacon_ids())
        ask = encode({"run": run_id, "round": last})
        pause = 0.2  # members that have not committed round `last` yet refuse: ask again later
        while collector.value is None:
            if self.run is None or self.run.run_id() != run_id:
                return ()  # another run started here meanwhile
            todo = [p for p in self.peers if p in group and not collector.has(p)]
            answers = await asyncio.gather(
                *(self.transport.request(p, "final-partial", ask, 10.0) for p in todo),
                return_exceptions=True,
            )
            for peer, answer in zip(todo, answers, strict=True):
                if isinstance(answer, bytes):
                    try:
                        partial = BeaconPartial.from_body(decode(answer))
                        if partial.member == peer:
                            collector.add(partial)
                    except ConsortiumError as exc:
                        log.warning("%s: a bad final beacon partial from %s: %s", self.name,
                                    peer[:16], exc)  # fmt: skip
            if collector.value is None:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        return collector.partials()

    async def finalize_run(self) -> None:
        """After the last round of a run with proofs: prove the final model and get the
        run-final entry cosigned (see the module docstring). Problems are logged: this runs
        as a task of its own."""
        try:
            await self._finalize_run()
        except ConsortiumError as exc:
            log.error("%s: the proofs of the final model: %s", self.name, exc)

    async def _finalize_run(self) -> None:
        run, prover = self.run, self.prover
        if run is None or prover is None or not run.proofs:
            return
        rid, last = run.run_id(), run.rounds
        if self._final_on_ledger(rid) is not None:
            return
        partials = await self._final_partials(rid, last)
        if not partials:
            return
        value = BeaconCollector(self.genesis.group_key(), self._final_message(rid, last))
        for partial in partials:
            value.add(partial)
        assert value.value is not None
        beacon = attempt_beacon(value.value, 0)
        if prover.can_prove(last):
            try:
                ev = await asyncio.wrap_future(prover.prove_final(beacon))
                assert isinstance(ev, Evaluation)
                artifact = prover.ready[last][1]
                self._final_proofs[self.identity.node_id] = (ev, artifact)
                note = encode({"evaluation": ev.to_body(), "artifact": artifact})
                await asyncio.gather(
                    *(self._send(peer, note, "final-proof") for peer in self.peers),
                    return_exceptions=True,
                )
            except (ConsortiumError, KeyError) as exc:
                log.error("%s: no proof of the final model: %s", self.name, exc)
        wait = max(float(run.round_timeout), 1.0)
        members = self.genesis.member_ids()
        for attempt in range(len(members)):
            if self._final_on_ledger(rid) is not None:
                return
            leader = leader_for(beacon, last + 1, attempt, members)
            if leader == self.identity.node_id and await self._propose_final(
                rid, last, partials, wait
            ):
                return
            until = self.clock() + wait  # the node's clock: injected in tests
            while self.clock() < until and self._final_on_ledger(rid) is None:
                await asyncio.sleep(0.2)
        if self._final_on_ledger(rid) is None:
            log.error("%s: no run-final entry for run %s: no proposal reached quorum",
                      self.name, rid)  # fmt: skip

    async def _propose_final(
        self, rid: str, last: int, partials: tuple[BeaconPartial, ...], wait: float
    ) -> bool:
        """As attempt's leader: wait for a proof from every node that committed to its test
        data (at most `wait` seconds of the node's clock), list those that verify, propose the
        run-final entry."""
        assert self.run is not None and self.checker is not None
        records = [r for r in run_records(self.ledger) if r.run == rid]
        committed = {n for r in records for n in r.testdata}
        until = self.clock() + wait
        while self.clock() < until and not committed <= set(self._final_proofs):
            await asyncio.sleep(0.2)
        self.checker.note(records)
        self.checker.note_final(FinalRecord(rid, last, partials, ()))
        state = proof_state(self.run, records, self.checker.check)
        listed: list[tuple[Evaluation, bytes]] = []
        for node in sorted(self._final_proofs):
            ev, artifact = self._final_proofs[node]
            try:
                if ev.round != last:
                    raise RecordRejected(OWN_PROOF, "not a proof of the final model")
                verify_evaluation(
                    ev,
                    round_no=last + 2,
                    proofs=state,
                    genesis=self.genesis,
                    artifact=artifact,
                    cid_of=self._cid_of,
                )
                listed.append((ev, artifact))
            except ConsortiumError as exc:  # one bad proof must not sink the entry
                log.warning("%s: a proof of the final model left out: %s", self.name, exc)
        body = FinalRecord(rid, last, partials, tuple(e for e, _ in listed)).to_body()
        report = await self._agree(FINAL_KIND, body, tuple(a for _, a in listed))
        if not report["agreed"]:
            log.warning("%s: the run-final entry was not agreed: %s", self.name,
                        report["refused"] or report["unreachable"])  # fmt: skip
        return bool(report["agreed"])

    def _cid_of(self, data: bytes) -> Any:
        raise NotImplementedError

    def _final_refusals(self, p: Proposal, record: FinalRecord) -> list[str]:
        """Why this member refuses a proposed run-final entry (empty: it accepts): the shared
        `verify_final_record`, with this node's own proof of the final model."""
        run = self.run
        if run is None or run.run_id() != record.run or not run.proofs or self.checker is None:
            return [f"run {record.run} with proofs is not this node's current run"]
        if self._final_on_ledger(record.run) is not None:
            return [f"run {record.run}'s final proofs are on the ledger already"]
        records = [r for r in run_records(self.ledger) if r.run == record.run]
        self.checker.note(records)
        self.checker.note_final(record)
        own: tuple[Evaluation, ...] = ()
        if self.prover is not None:
            own, pending = self.prover.own_final()
            mine = [e for e in record.evaluations if e.node == self.identity.node_id]
            if pending and not mine:
                return [
                    f"this node's proof of the final model is still being made [rule {OWN_PROOF}]"
                ]
        try:
            check_proof_artifacts(p.proofs, record.evaluations, self._cid_of)
            verify_final_record(
                record,
                run_id=run.run_id(),
                proofs=proof_state(run, records, self.checker.check),
                genesis=self.genesis,
                artifacts={cid_key(self._cid_of(a)): a for a in p.proofs},
                cid_of=self._cid_of,
                own=own,
            )
        except RecordRejected as exc:
            return [str(exc)]
        return []

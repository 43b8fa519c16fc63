"""Proofs of evaluation on the ledger (issue 18, slice 2), end to end: three real in-process nodes
train logistic regression on digits for 4 rounds with prove_every = 2, s = 2 and one TEST ONLY
SRS; each commits to its test data in round 1's record, proves round 2's model (sampled from
round 3's beacon) in its proof queue, and round 4's record lists the three proofs, which every
voter verified before cosigning and `audit` re-verifies. After round 4, the last, the nodes prove
the final model on the sample drawn from "round 5"'s beacon (partials released once round 4 is
final) and a quorum cosigns the run-final entry that lists the three proofs.

Training waits for the node's proof queue to be idle (a slow trainer), so which record lists a
proof does not depend on how fast the machine proves: the run is deterministic."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consortium.audit.auditor import _record_context, audit, check_onchain
from consortium.cli.app import app
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import PUBLIC_FILE, PublicIdentity
from consortium.core.layout import LEDGER_FILE, NODE_CONFIG_FILE, STORE_DIR
from consortium.learning.task import load_data
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig, ZkConfig, load_node_config, zk_config_refusals
from consortium.node.evaluations import (
    EvaluationChecker,
    _model,
    member_refusals,
    proof_state,
    sample_beacon,
    with_proofs,
    zk_settings,
)
from consortium.node.learner import Learner
from consortium.node.node import Node
from consortium.protocol.messages import Proposal
from consortium.protocol.record import (
    FINAL_KIND,
    ROUND_KIND,
    Evaluation,
    FinalRecord,
    RoundRecord,
    run_records,
)
from consortium.protocol.storage import StorageState
from consortium.protocol.verifier import (
    BEACON,
    EVALUATION,
    OWN_PROOF,
    RUN,
    TESTDATA,
    OwnContribution,
    ProofState,
    RecordContext,
    RecordRejected,
    check_proof_artifacts,
    verify_final_record,
    verify_round_record,
)
from consortium.store.blockstore import BlockStore
from consortium.store.cid import cid_key
from consortium.store.objects import get_bytes
from consortium.zk.circuit import (
    keys_for,
    new_salt,
    record_commitment,
    record_vector,
    settings_logrows,
    shape_of,
)
from consortium.zk.errors import ZkError
from consortium.zk.evm import SOLCJS_ENV
from consortium.zk.proof import EvalProof, prove, with_claims
from consortium.zk.queue import LOCK_ENV
from consortium.zk.srs import load_srs, local_test_srs
from consortium.zk.testdata import CommittedTestData, sample_indices
from tests.inprocess_cluster import cluster, drive, run_config, start

pytestmark = pytest.mark.slow  # keys, commitments, 6 proofs and their checks: 1.5 min (+3 on chain)


def _base() -> RunConfig:
    return run_config(4, 0).model_copy(update={"model": "logreg"}).pinned()


def test_run_ids_without_proofs_are_unchanged() -> None:
    run = _base()
    assert not {"prove_every", "proof_sample", "srs_sha256", "srs_test_only",
                "zk_settings_sha256"} & set(run.body())  # fmt: skip
    # Ids of runs as computed before these fields existed (main at 0d09195).
    assert RunConfig().run_id() == "da28eb9ab99ebf1c"
    old = RunConfig(rounds=3, model="logreg", anchor_every=2, started=5)
    assert old.run_id() == "dd12b1226ab660b2"
    on = run.model_copy(update={"prove_every": 2, "srs_sha256": "a" * 64,
                                "zk_settings_sha256": "b" * 64})  # fmt: skip
    assert on.run_id() != run.run_id() and on.body()["prove_every"] == 2


@dataclass
class Ran:
    dirs: list[Path]
    names: list[str]
    records: list[RoundRecord]
    run: RunConfig
    final: FinalRecord
    #: A live node's answers to run-final proposals (see `_node_votes`).
    votes: dict[str, list[str]]


def _node_votes(node: Node, final: FinalRecord) -> dict[str, list[str]]:
    """What `node` (still running) answers to run-final proposals, as before the entry was
    agreed: its proof of the final model finished but not yet listed (or still being made),
    and no run-final entry on its ledger yet."""
    store = node.store
    arts = {cid_key(e.proof): get_bytes(store, e.proof) for e in final.evaluations}
    mine = next(e for e in final.evaluations if e.node == node.identity.node_id)
    others = tuple(e for e in final.evaluations if e != mine)

    def proposal(evs: tuple[Evaluation, ...]) -> Proposal:
        return Proposal(b"", 1, b"", 0, b"", proofs=tuple(arts[cid_key(e.proof)] for e in evs))

    prover = node.prover
    assert prover is not None
    saved = (set(prover.listed), dict(prover.ready), prover.final)
    node._final_on_ledger = lambda run_id: None  # type: ignore[method-assign]
    try:
        prover.listed.discard(final.round)
        prover.ready[final.round] = (mine, arts[cid_key(mine.proof)])
        votes = {
            "full": node._final_refusals(proposal(final.evaluations), final),
            "dropped": node._final_refusals(proposal(others), replace(final, evaluations=others)),
        }
        prover.ready.pop(final.round)
        prover.final = Future()  # still being made
        votes["pending"] = node._final_refusals(
            proposal(others), replace(final, evaluations=others)
        )
    finally:
        del node._final_on_ledger
        prover.listed, prover.ready, prover.final = saved
    return votes


def _final_of(ledger: Ledger) -> FinalRecord | None:
    found = [FinalRecord.from_entry(e) for e in ledger.iter_entries() if e.kind == FINAL_KIND]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    root = tmp_path_factory.mktemp("zkledger")
    out: list[Ran] = []
    nodes: list[Node] = []
    real_train = Learner.train

    def slow_train(self: Learner, *args: Any, **kw: Any) -> Any:
        """Training waits for every node's proof queue: proofs land in a fixed round."""
        for n in nodes:
            while n.prover is not None and not n.prover.idle():
                time.sleep(0.05)
        return real_train(self, *args, **kw)

    async def go() -> None:
        started, net, clock = await cluster(root / "c", 3, 5)
        nodes.extend(started)
        try:
            base = _base().model_copy(update={"proof_sample": 2})
            _, test = load_data(base.load_task(), nodes[0].config.data.context(nodes[0].name))
            logrows = settings_logrows(zk_settings(base, test))
            srs = local_test_srs(root / "srs", logrows)
            for n in nodes:  # node.toml [zk] srs: what the node and `audit` read
                with (n.dir / NODE_CONFIG_FILE).open("a") as fh:
                    fh.write(f'[zk]\nsrs = "{srs.path}"\n')
                n.config = n.config.model_copy(update={"zk": ZkConfig(srs=str(srs.path))})
            run = with_proofs(
                _base(), nodes[0].config, nodes[0].name, prove_every=2, sample=2,
                srs_test_only=True,
            )  # fmt: skip
            await start(nodes, run)
            await drive(nodes, net, clock, limit=600)
            end = asyncio.get_running_loop().time() + 600  # then the run-final entry
            while not all(_final_of(n.ledger) for n in nodes):
                assert asyncio.get_running_loop().time() < end, "no run-final entry"
                await asyncio.sleep(0.1)
            final = _final_of(nodes[0].ledger)
            assert final is not None
            votes = _node_votes(nodes[1], final)
            out.append(
                Ran([n.dir for n in nodes], [n.name for n in nodes],
                    run_records(nodes[0].ledger), run, final, votes)
            )  # fmt: skip
        finally:
            for n in nodes:
                await n.stop()

    Learner.train = slow_train  # type: ignore[method-assign]
    # This test's own prover lock: another process on the machine may hold the shared one.
    saved = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = str(root / "prover.lock")
    try:
        asyncio.run(go())
    finally:
        Learner.train = real_train  # type: ignore[method-assign]
        if saved is None:
            del os.environ[LOCK_ENV]
        else:
            os.environ[LOCK_ENV] = saved
    yield out[0]


def test_the_records_carry_commitments_then_proofs(ran: Ran) -> None:
    by_round = {r.round: r for r in ran.records}
    assert sorted(by_round) == [1, 2, 3, 4]
    assert set(by_round[1].testdata) == set(by_round[1].participants)  # committed at round 1
    listed = [e for r in ran.records for e in r.evaluations]
    assert [r.round for r in ran.records if r.evaluations] == [4]
    assert {e.round for e in listed} == {2} and len(listed) == 3
    for e in listed:
        assert e.model == by_round[2].model and e.s == 2 and e.test_only
        assert 0 <= e.correct <= 2


def test_the_final_model_is_proved_in_the_run_final_entry(ran: Ran) -> None:
    final, last = ran.final, ran.records[-1]
    assert (final.run, final.round) == (ran.run.run_id(), 4) and last.round == 4
    assert len(final.evaluations) == 3 and len(final.beacon) >= 1
    assert [e.node for e in final.evaluations] == sorted(last.participants)
    for e in final.evaluations:
        assert e.round == 4 and e.model == last.model and e.s == 2 and e.test_only


def test_audit_re_verifies_every_proof(ran: Ran) -> None:
    report = audit(ran.dirs[1])
    assert len(report.evaluations) == 6
    lines = [ev.line() for ev in report.evaluations]
    assert all("s = 2" in line and "Wilson" in line and "TEST ONLY" in line
               for line in lines), lines  # fmt: skip
    assert sum("round 2, s = 2" in line for line in lines) == 3
    assert sum("round 4 (the final model), s = 2" in line for line in lines) == 3
    finals = [ev for ev in report.evaluations if ev.final]
    assert {ev.model for ev in finals} == {cid_key(ran.records[-1].model)}
    assert all(ev.testdata == (ran.records[0].testdata[e.node].root,
                               ran.records[0].testdata[e.node].size)
               for ev, e in zip(finals, ran.final.evaluations, strict=True))  # fmt: skip


def test_settings_pin_is_reproducible(ran: Ran) -> None:
    """Every member calibrates the same settings bytes from the run (the run's seed)."""
    run = ran.run
    assert run.zk_settings_sha256 and run.srs_test_only
    assert json.loads(json.dumps(run.body()))["prove_every"] == 2


# -- a dishonest leader or prover, refused by name -----------------------------------------------
# Each test takes round 4's signed record from the run above, changes what a dishonest leader
# (or node) would change, and runs the one verifier with the context a voter or `audit` builds.


@dataclass
class Voter:
    record: RoundRecord
    context: RecordContext
    records: dict[int, RoundRecord]


@pytest.fixture(scope="module")
def voter(ran: Ran, tmp_path_factory: pytest.TempPathFactory) -> Voter:
    directory = ran.dirs[1]
    genesis = Genesis.load(directory / GENESIS_FILE)
    store = BlockStore(directory / STORE_DIR, create=False)
    with Ledger.open(directory / LEDGER_FILE, readonly=True) as ledger:
        found = [(i, e) for i, e in enumerate(ledger.iter_entries()) if e.kind == ROUND_KIND]
    idx, entry = next((i, e) for i, e in found if RoundRecord.from_entry(e).round == 4)
    record = RoundRecord.from_entry(entry)
    checker = EvaluationChecker(ran.run, genesis, store, load_node_config(directory), ran.names[1],
                                tmp_path_factory.mktemp("keys"))  # fmt: skip
    checker.note(ran.records)
    prior = [r for r in ran.records if r.round < 4]
    context = replace(
        _record_context(record, ran.run, entry, idx, genesis, store, None, StorageState()),
        proofs=proof_state(ran.run, prior, checker.check),
        artifacts={cid_key(e.proof): get_bytes(store, e.proof) for e in record.evaluations},
    )
    return Voter(record, context, {r.round: r for r in ran.records})


def _refused(v: Voter, record: RoundRecord, rule: str, context: RecordContext | None = None,
             ) -> str:  # fmt: skip
    with pytest.raises(RecordRejected) as info:
        verify_round_record(record, context or v.context)
    assert info.value.rule == rule, str(info.value)
    return str(info.value)


def test_a_proposal_carries_exactly_the_listed_proof_artifacts(voter: Voter) -> None:
    """Every member stores a proposal's proof artifacts with the entry: a leader may not ride
    anything else along (junk in every store) nor leave a listed proof out."""
    r, ctx = voter.record, voter.context
    listed = [ctx.artifacts[cid_key(e.proof)] for e in r.evaluations]
    assert listed
    check_proof_artifacts(listed, r.evaluations, ctx.cid_of)
    for carried in ([*listed, b"junk"], listed[:-1], [*reversed(listed), b"x"]):
        with pytest.raises(RecordRejected, match=rf"proof artifact.*\[rule {EVALUATION}\]"):
            check_proof_artifacts(carried, r.evaluations, ctx.cid_of)


def test_the_signed_record_passes_the_voters_check(voter: Voter) -> None:
    verify_round_record(voter.record, voter.context)


def test_a_leader_that_drops_a_nodes_proof_is_refused_by_that_node(voter: Voter) -> None:
    r = voter.record
    mine = r.evaluations[0]
    me = mine.node
    dropped = replace(r, evaluations=tuple(e for e in r.evaluations if e != mine))
    verify_round_record(dropped, voter.context)  # others cannot tell: the node must refuse
    own = OwnContribution(me, r.samples[me], r.consent.get(me), tuple(r.erasures.get(me, ())),
                          None, {}, evaluations=(mine,))  # fmt: skip
    text = _refused(voter, dropped, OWN_PROOF, replace(voter.context, own=own))
    assert "round(s) [2]" in text
    verify_round_record(r, replace(voter.context, own=own))  # listed: it cosigns


def test_a_listed_proof_with_an_edited_accuracy_is_refused(voter: Voter) -> None:
    r = voter.record
    e = r.evaluations[0]
    edited = replace(e, correct=(e.correct + 1) % (e.s + 1))
    text = _refused(voter, replace(r, evaluations=(edited, *r.evaluations[1:])), EVALUATION)
    assert "accuracy-mismatch" in text


def test_a_listed_proof_for_another_models_cid_is_refused(voter: Voter) -> None:
    r = voter.record
    e = r.evaluations[0]
    other = replace(e, model=voter.records[1].model)
    text = _refused(voter, replace(r, evaluations=(other, *r.evaluations[1:])), EVALUATION)
    assert "model-mismatch" in text


def test_a_proof_artifact_whose_claims_were_edited_is_refused(voter: Voter) -> None:
    """The leader re-publishes the artifact with a better count (a new CID) and lists that."""
    r = voter.record
    e = r.evaluations[0]
    proof = EvalProof.from_bytes(voter.context.artifacts[cid_key(e.proof)])
    c = proof.claims
    lie = with_claims(proof, correct=(c.correct + 1) % (c.s + 1)).to_bytes()
    cid = voter.context.cid_of(lie)
    listed = replace(e, proof=cid, correct=(c.correct + 1) % (c.s + 1))
    context = replace(voter.context, artifacts={**voter.context.artifacts, cid_key(cid): lie})
    text = _refused(voter, replace(r, evaluations=(listed, *r.evaluations[1:])), EVALUATION,
                    context)  # fmt: skip
    assert "accuracy-mismatch" in text


def test_a_proof_on_test_data_other_than_the_committed_is_refused(ran: Ran, voter: Voter) -> None:
    """A node proves, honestly, on test records it did not commit to at run start (fresh
    salts: another root), then lists that proof."""
    r = voter.record
    e = r.evaluations[0]
    i = next(
        k for k, d in enumerate(ran.dirs) if PublicIdentity.load(d / PUBLIC_FILE).node_id == e.node
    )
    directory, name = ran.dirs[i], ran.names[i]
    config = load_node_config(directory)
    run = ran.run
    _, test = load_data(run.load_task(), config.data.context(name))
    store = BlockStore(directory / STORE_DIR, create=False)
    model = _model(run, get_bytes(store, e.model))
    shape = shape_of(model, tuple(test.x.shape[1:]), run.proof_sample)
    settings = zk_settings(run, test)
    srs = load_srs(Path(str(config.zk.srs)), run.srs_sha256)
    keys = keys_for(model, shape, settings, srs, directory / "zk" / "keys")
    vectors = [record_vector(test.x[k], int(test.y[k]), new_salt()) for k in range(len(test))]
    tree = CommittedTestData([record_commitment(v, keys) for v in vectors])
    assert tree.root != r.testdata.get(e.node, voter.records[1].testdata[e.node]).root
    beacon = sample_beacon(voter.records[3], voter.context.genesis)
    sample = sample_indices(beacon, tree.size, run.proof_sample)
    proof = prove(model, shape, keys, tree, [vectors[k] for k in sample.indices], sample,
                  beacon=beacon, model_cid=cid_key(e.model)).to_bytes()  # fmt: skip
    cid = voter.context.cid_of(proof)
    listed = replace(e, proof=cid, correct=EvalProof.from_bytes(proof).claims.correct)
    context = replace(voter.context, artifacts={**voter.context.artifacts, cid_key(cid): proof})
    text = _refused(voter, replace(r, evaluations=(listed, *r.evaluations[1:])), EVALUATION,
                    context)  # fmt: skip
    assert "testdata-mismatch" in text


# -- the run-final entry: a dishonest proposer, refused by name ---------------------------------


@dataclass
class FinalVoter:
    record: FinalRecord
    state: ProofState
    artifacts: dict[str, bytes]
    genesis: Genesis
    cid_of: Any


@pytest.fixture(scope="module")
def final_voter(ran: Ran, voter: Voter, tmp_path_factory: pytest.TempPathFactory) -> FinalVoter:
    directory = ran.dirs[1]
    store = BlockStore(directory / STORE_DIR, create=False)
    checker = EvaluationChecker(ran.run, voter.context.genesis, store,
                                load_node_config(directory), ran.names[1],
                                tmp_path_factory.mktemp("fkeys"))  # fmt: skip
    checker.note(ran.records)
    checker.note_final(ran.final)
    artifacts = {cid_key(e.proof): get_bytes(store, e.proof) for e in ran.final.evaluations}
    state = proof_state(ran.run, ran.records, checker.check)
    return FinalVoter(ran.final, state, artifacts, voter.context.genesis, voter.context.cid_of)


def _final_check(v: FinalVoter, record: FinalRecord, own: tuple[Evaluation, ...] | None = None,
                 artifacts: dict[str, bytes] | None = None) -> None:  # fmt: skip
    verify_final_record(record, run_id=v.record.run, proofs=v.state, genesis=v.genesis,
                        artifacts=v.artifacts if artifacts is None else artifacts,
                        cid_of=v.cid_of, own=own)  # fmt: skip


def _final_refused(v: FinalVoter, record: FinalRecord, rule: str, **kw: Any) -> str:
    with pytest.raises(RecordRejected) as info:
        _final_check(v, record, **kw)
    assert info.value.rule == rule, str(info.value)
    return str(info.value)


def test_the_run_final_entry_passes_the_voters_check(final_voter: FinalVoter) -> None:
    v = final_voter
    for mine in v.record.evaluations:  # each node, with its own proof listed, cosigns
        _final_check(v, v.record, own=(mine,))


def test_a_proposer_that_drops_a_nodes_final_proof_is_refused_by_that_node(
    final_voter: FinalVoter,
) -> None:
    v = final_voter
    mine = v.record.evaluations[1]
    dropped = replace(v.record, evaluations=tuple(e for e in v.record.evaluations if e != mine))
    _final_check(v, dropped)  # the others cannot tell: the node itself must refuse
    text = _final_refused(v, dropped, OWN_PROOF, own=(mine,))
    assert "final model (round 4)" in text


def test_a_live_node_refuses_a_run_final_entry_without_its_proof(ran: Ran) -> None:
    """The node's own vote (`RunAgreement._final_refusals`), during the run: it accepts the
    entry with its proof, and refuses it by name with its proof left out, whether the proof was
    finished or still being made."""
    assert ran.votes["full"] == []
    (why,) = ran.votes["dropped"]
    assert f"[rule {OWN_PROOF}]" in why and "final model (round 4)" in why
    (why,) = ran.votes["pending"]
    assert f"[rule {OWN_PROOF}]" in why and "still being made" in why


def test_zk_verify_checks_a_final_model_proof(ran: Ran) -> None:
    """`zk verify` finds the final model's sample beacon in the run-final entry."""
    e = ran.final.evaluations[0]
    srs = load_node_config(ran.dirs[0]).zk.srs
    args = ["zk", "verify", str(ran.dirs[0]), cid_key(e.proof), "--srs", str(srs)]
    res = CliRunner().invoke(app, [*args, "--srs-sha256", ran.run.srs_sha256])
    out = " ".join((res.stdout + res.stderr).split())
    assert res.exit_code == 0, out
    assert f"OK: proof {cid_key(e.proof)}" in out and f"{e.correct} of 2" in out


def test_a_run_final_entry_for_another_round_or_run_is_refused(final_voter: FinalVoter) -> None:
    v = final_voter
    assert "after its last round 4" in _final_refused(v, replace(v.record, round=3), RUN)
    assert "after its last round 4" in _final_refused(v, replace(v.record, run="0" * 16), RUN)


def test_run_final_proofs_out_of_order_are_refused(final_voter: FinalVoter) -> None:
    v = final_voter
    record = replace(v.record, evaluations=tuple(reversed(v.record.evaluations)))
    assert "sorted by node" in _final_refused(v, record, EVALUATION)


def test_a_final_proof_with_an_edited_accuracy_is_refused(final_voter: FinalVoter) -> None:
    v = final_voter
    e = v.record.evaluations[0]
    edited = replace(e, correct=(e.correct + 1) % (e.s + 1))
    record = replace(v.record, evaluations=(edited, *v.record.evaluations[1:]))
    assert "accuracy-mismatch" in _final_refused(v, record, EVALUATION)


def test_a_final_proof_of_an_earlier_model_is_refused(ran: Ran, final_voter: FinalVoter) -> None:
    """The proposer lists, as proof of the final model, a node's proof of round 2's model."""
    v = final_voter
    old = next(e for r in ran.records for e in r.evaluations)
    mine = next(e for e in v.record.evaluations if e.node == old.node)
    others = tuple(e for e in v.record.evaluations if e.node != old.node)
    record = replace(v.record, evaluations=tuple(sorted((old, *others), key=lambda e: e.node)))
    assert "not of the final model" in _final_refused(v, record, EVALUATION)
    swapped = replace(mine, model=old.model)  # round 4's proof listed as of round 2's model
    record = replace(v.record, evaluations=tuple(sorted((swapped, *others), key=lambda e: e.node)))
    assert "model-mismatch" in _final_refused(v, record, EVALUATION)


def test_a_run_final_entry_with_another_rounds_beacon_is_refused(
    ran: Ran, final_voter: FinalVoter
) -> None:
    """Partials of round 4 (on the ledger before the last round was final) are not round 5's."""
    v = final_voter
    record = replace(v.record, beacon=ran.records[-1].beacon)
    assert "run-final beacon does not verify" in _final_refused(v, record, BEACON)


def test_a_second_test_data_commitment_in_a_run_is_refused(voter: Voter) -> None:
    r = voter.record
    node = r.participants[0]
    again = replace(r, testdata={node: voter.records[1].testdata[node]})
    assert "committed to its test data before" in _refused(voter, again, TESTDATA)


def test_inconsistent_proof_fields_are_refused_at_the_vote() -> None:
    run = _base()
    assert not zk_config_refusals(run)
    for bad in ({"prove_every": 2}, {"prove_every": 2, "srs_sha256": "a" * 64},
                {"proof_sample": 4}, {"srs_sha256": "a" * 64}):  # fmt: skip
        why = zk_config_refusals(run.model_copy(update=bad))
        assert why and all("[rule zk-config]" in w for w in why), bad
    proving = run.model_copy(
        update={"prove_every": 2, "srs_sha256": "a" * 64, "zk_settings_sha256": "b" * 64}
    )
    assert not zk_config_refusals(proving)
    why = zk_config_refusals(proving.model_copy(update={"replicas": 3}))
    assert len(why) == 1 and "replicas" in why[0] and "[rule zk-config]" in why[0]


def test_a_member_without_the_runs_srs_refuses(ran: Ran, tmp_path: Path) -> None:
    config = load_node_config(ran.dirs[0])
    assert member_refusals(ran.run, config, ran.names[0]) == []
    other = tmp_path / "other.srs"
    data = Path(str(config.zk.srs)).read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # another SRS: its last byte differs
    elsewhere = config.model_copy(update={"zk": ZkConfig(srs=str(other))})
    (why,) = member_refusals(ran.run, elsewhere, ran.names[0])
    assert "srs-mismatch" in why and "[rule zk-srs]" in why
    nowhere = config.model_copy(update={"zk": ZkConfig()})
    (why,) = member_refusals(ran.run, nowhere, ran.names[0])
    assert "srs-missing" in why
    other_settings = ran.run.model_copy(update={"zk_settings_sha256": "0" * 64})
    (why,) = member_refusals(other_settings, config, ran.names[0])
    assert "[rule zk-settings]" in why and ran.run.zk_settings_sha256 in why


def test_the_audit_command_lists_each_proof(ran: Ran) -> None:
    res = CliRunner().invoke(app, ["audit", str(ran.dirs[2])])
    out = " ".join((res.stdout + res.stderr).split())
    assert res.exit_code == 0, out
    assert "6 proofs of evaluation re-verified" in out
    assert out.count("round 2, s = 2") == 3 and "Wilson interval" in out and "TEST ONLY" in out
    assert out.count("round 4 (the final model), s = 2") == 3


def test_run_start_with_proofs_but_no_srs_is_one_clear_line(ran: Ran, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(ran.dirs[0] / PUBLIC_FILE, folder / PUBLIC_FILE)
    shutil.copy(ran.dirs[0] / GENESIS_FILE, folder / GENESIS_FILE)
    res = CliRunner().invoke(app, ["run", "start", "--dir", str(folder), "--model", "logreg",
                                   "--prove-every", "2"])  # fmt: skip
    out = res.stdout + res.stderr
    assert res.exit_code != 0 and "Traceback" not in out
    assert "srs-missing" in out and "[zk] srs" in out, out


# -- audit --onchain ------------------------------------------------------------------------------


def _solcjs() -> Path:
    from consortium.zk.evm import find_solcjs

    try:
        return find_solcjs()
    except ZkError:
        pytest.skip("npm solc not installed: make solcjs (npm install solc@0.8.37 in .tmp/solcjs)")


def test_audit_onchain_accepts_every_listed_proof(ran: Ran) -> None:
    solcjs = _solcjs()
    res = CliRunner().invoke(app, ["audit", str(ran.dirs[0]), "--onchain"],
                             env={SOLCJS_ENV: str(solcjs)})  # fmt: skip
    out = " ".join((res.stdout + res.stderr).split())
    assert res.exit_code == 0, out
    assert out.count("on chain: accepted (") == 6 and "gas)" in out
    assert out.count("round 4 (the final model): on chain: accepted") == 3
    assert "6 proofs of evaluation accepted on chain" in out


def test_audit_onchain_refuses_a_proof_whose_listed_model_is_swapped(ran: Ran) -> None:
    """The final model's proof, listed as a proof of round 2's model: the weight commitment
    recomputed from the model at the listed CID is not the one the proof opens."""
    solcjs = _solcjs()
    report = audit(ran.dirs[0])
    final = next(ev for ev in report.evaluations if ev.final)
    swapped = replace(final, model=cid_key(ran.records[1].model))
    good, bad = check_onchain(ran.dirs[0], [final, swapped], solcjs=solcjs)
    assert good.gas is not None and "accepted" in good.line()
    assert bad.gas is None and "weight-commitment-mismatch" in bad.refusal, bad.refusal
    assert "on chain: REFUSED" in bad.line()


def test_audit_onchain_without_solcjs_is_one_clear_line(
    ran: Ran, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consortium.zk import evm

    real = evm.find_solcjs
    monkeypatch.setattr(evm, "find_solcjs", lambda root=None: real(tmp_path))
    res = CliRunner().invoke(app, ["audit", str(ran.dirs[0]), "--onchain"],
                             env={SOLCJS_ENV: str(tmp_path / "none")})  # fmt: skip
    out = res.stdout + res.stderr
    assert res.exit_code != 0 and "Traceback" not in out
    assert "make solcjs" in out and len(out.strip().splitlines()) == 1, out


def test_an_oversized_final_proof_is_refused_before_it_is_kept() -> None:
    from consortium.core.encoding import encode
    from consortium.core.errors import ConfigError
    from consortium.node.agreement import RunAgreement
    from consortium.protocol.messages import MAX_PROOF_BYTES

    payload = encode({"artifact": b"x" * (MAX_PROOF_BYTES + 1), "evaluation": {}})
    with pytest.raises(ConfigError, match="at most"):
        RunAgreement.receive_final_proof(object(), "node1", payload)  # type: ignore[arg-type]

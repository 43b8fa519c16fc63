"""Replication with retrievability challenges in rounds (issue 16 item 4): the round machines
commit their artifacts' roots and holders, holders answer a challenge round's challenges to the
leader, and every dishonest change a leader could make to the storage section is refused by name
(each test fails if its check is removed). Machines are wired with no network or clock
(`tests/machines.py`); `tests/test_storage_e2e.py` runs real nodes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consortium.ledger.entries import Entry
from consortium.ledger.frontier import Frontier
from consortium.protocol import verifier as v
from consortium.protocol.beacon import attempt_beacon
from consortium.protocol.record import RecordFormatError, RoundRecord, StorageSection
from consortium.protocol.storage import (
    AnswerScope,
    ArtifactTree,
    Commitment,
    HolderAnswer,
    StorageProof,
    StorageState,
    artifact_name,
    challenge_indices,
    sample_artifacts,
    sign_answer,
)
from consortium.protocol.verifier import (
    RecordContext,
    RecordRejected,
    record_beacon,
    storage_after,
    verify_round_record,
)
from tests.machines import Wire, all_notes


def _round(wire: Wire, round_no: int, storage: StorageState | None = None) -> RoundRecord:
    """Round `round_no` on the ledger the earlier rounds of this wire left (`_chain`)."""
    start = None
    if wire.committed:
        start = next(iter(wire.committed.values()))[-1].proposal.model
        wire.committed.clear()
    frontier = _CHAINS.get(id(wire), wire.frontier)
    wire.begin(round_no, start=start, storage=storage, frontier=frontier)
    wire.settle()
    entries = {wire.entry_bytes(n) for n in wire.machines}
    assert len(entries) == 1
    data = entries.pop()
    _CHAINS[id(wire)] = frontier.append(data)
    return RoundRecord.from_entry(Entry.from_bytes(data))


_CHAINS: dict[int, Frontier] = {}


def _two_rounds(
    lose: bool = False,
) -> tuple[Wire, RoundRecord, RoundRecord, StorageState]:
    """Round 1 commits the model (replicas = 3 of 4); round 2 challenges its holders. With
    `lose`, one holder other than round 2's leader lost its copy before round 2."""
    wire = Wire.build(4, seed=5, replicas=3, challenge_every=2)
    first = _round(wire, 1)
    assert first.storage is not None
    state = storage_after(StorageState(), first, wire.genesis)
    if lose:
        (held,) = first.storage.commitments
        leader2 = _leader_of(wire, 2)
        victim = next(h for h in held.holders if h != leader2)
        del wire.stores[victim][held.artifact]
    second = _round(wire, 2, state)
    return wire, first, second, state


def _leader_of(wire: Wire, round_no: int) -> str:
    probe = Wire.build(4, seed=5, replicas=3, challenge_every=2)
    probe.begin(round_no)
    return next(iter(probe.machines.values())).leader(0)


def _voter_context(
    wire: Wire, record: RoundRecord, holder: bool | None = None
) -> tuple[str, RecordContext]:
    """A voter of the last round (not its leader; a challenged holder when `holder`) and the
    context it checked the proposal in (`holder` None: any voter)."""
    section = record.storage
    assert section is not None
    holders = {a.holder for a in section.answers}
    voter = next(
        n for n in sorted(wire.machines) if n != record.leader and holder in (None, n in holders)
    )
    p = wire.committed[voter][-1].proposal
    ctx = wire.machines[voter]._context(record.leader, p, voting=True)
    verify_round_record(record, ctx)  # the baseline passes
    return voter, ctx


def _refused(record: RoundRecord, ctx: RecordContext, rule: str, text: str) -> None:
    with pytest.raises(RecordRejected) as exc:
        verify_round_record(record, ctx)
    assert exc.value.rule == rule, str(exc.value)
    assert text in str(exc.value), str(exc.value)


def _section(record: RoundRecord, **changes: object) -> RoundRecord:
    assert record.storage is not None
    return replace(record, storage=replace(record.storage, **changes))  # type: ignore[arg-type]


# -- what honest rounds record --------------------------------------------------------------------


def test_a_round_commits_its_model_with_the_holders_the_beacon_picks() -> None:
    _, first, second, _ = _two_rounds()
    assert first.storage is not None and second.storage is not None
    (c,) = first.storage.commitments
    assert c.artifact == artifact_name(first.model)
    assert len(c.holders) == 3 and c.holders[0] == first.leader
    assert first.storage.answers == () and first.storage.missing == ()  # round 1: no challenge
    # Round 2 challenges round 1's model at each of its three holders; all of them answer.
    assert sorted(a.holder for a in second.storage.answers) == sorted(c.holders)
    assert second.storage.missing == ()
    assert all(len(a.proofs) == 1 for a in second.storage.answers)  # a 32-byte model: 1 leaf


def test_a_holder_that_lost_its_copy_is_named_missing_and_replaced_next_round() -> None:
    wire, first, second, state = _two_rounds(lose=True)
    assert first.storage is not None and second.storage is not None
    (held,) = first.storage.commitments
    ((artifact, victim),) = second.storage.missing
    assert artifact == held.artifact and victim in held.holders
    assert "cannot prove" in all_notes(wire)
    after = storage_after(state, second, wire.genesis)
    (owed,) = after.owed
    (spare,) = set(wire.machines) - set(held.holders)  # the one member that did not hold it
    assert owed.holders == tuple(spare if h == victim else h for h in held.holders)
    assert (owed.root, owed.size) == (held.root, held.size)
    assert after.holdings[artifact] == held  # re-committed by the next round, not this one
    # Round 3 (no challenge) re-commits it with the replacement as a holder; voters agree.
    third = _round(wire, 3, after)
    assert third.storage is not None and third.storage.commitments[-1] == owed
    assert storage_after(after, third, wire.genesis).holdings[artifact] == owed


def test_a_secure_round_commits_its_transcript_too_and_holders_prove_both() -> None:
    wire = Wire.build(4, secure=True, seed=5, replicas=3, challenge_every=2)
    first = _round(wire, 1)
    assert first.storage is not None and first.secagg is not None
    model, transcript = first.storage.commitments
    assert model.artifact == artifact_name(first.model)
    assert transcript.artifact == artifact_name(first.secagg.transcript)
    assert transcript.size > 1000 and model.holders[0] == transcript.holders[0] == first.leader
    second = _round(wire, 2, storage_after(StorageState(), first, wire.genesis))
    assert second.storage is not None and second.storage.missing == ()
    proved = {(a.artifact, a.holder) for a in second.storage.answers}
    assert proved == {(c.artifact, h) for c in (model, transcript) for h in c.holders}
    assert all(
        len(a.proofs) == 8 for a in second.storage.answers if a.artifact == transcript.artifact
    )


def test_a_run_without_replication_carries_no_storage_section() -> None:
    wire = Wire.build(4, seed=5)
    assert _round(wire, 1).storage is None


# -- a dishonest leader, refused by name --------------------------------------------------------


def test_a_forged_proof_is_refused() -> None:
    wire, _, record, _ = _two_rounds()
    _, ctx = _voter_context(wire, record, holder=None)
    assert record.storage is not None
    first, *rest = record.storage.answers
    forged = replace(first, proofs=(replace(first.proofs[0], leaf=b"\x07" * 32), *first.proofs[1:]))
    _refused(
        _section(record, answers=(forged, *rest)), ctx, v.STORAGE_PROOF, "storage-proof-invalid"
    )


def test_a_leader_cannot_answer_for_a_holder_that_lost_its_copy() -> None:
    """The leader holds the artifact, so it can make valid inclusion proofs for a holder that
    lost it. Without that holder's signature over this round's challenge the answer is refused,
    naming the holder: unsigned, signed by the leader, or the holder's own signature from
    another round or attempt (replayed)."""
    wire, first, record, _ = _two_rounds(lose=True)
    assert first.storage is not None and record.storage is not None
    ((artifact, victim),) = record.storage.missing
    (held,) = first.storage.commitments
    _, ctx = _voter_context(wire, record, holder=None)
    beacon = attempt_beacon(record_beacon(record, wire.genesis), record.attempt)
    tree = ArtifactTree(wire.stores[record.leader][artifact])  # the leader's own copy
    indices = challenge_indices(beacon, artifact, victim, tree.leaves)
    fabricated = HolderAnswer(artifact, victim, tuple(tree.prove(i) for i in indices))
    ids = {i.node_id: i for i in wire.ids}
    digest = wire.genesis.digest()

    def scope(round_no: int = record.round, attempt: int = record.attempt) -> AnswerScope:
        return AnswerScope(digest, record.run, round_no, attempt)

    forgeries = {
        "unsigned": fabricated,
        "signed by the leader": sign_answer(ids[record.leader], scope(), fabricated, held.root),
        "another round": sign_answer(ids[victim], scope(round_no=4), fabricated, held.root),
        "another attempt": sign_answer(ids[victim], scope(attempt=1), fabricated, held.root),
    }
    for why, forged in forgeries.items():
        claimed = _section(record, answers=(*record.storage.answers, forged), missing=())
        with pytest.raises(RecordRejected) as exc:
            verify_round_record(claimed, ctx)
        assert exc.value.rule == v.STORAGE_PROOF, why
        assert f"not signed by {victim} for round 2, attempt 0" in str(exc.value), why
    # The same answer signed by the holder for this round passes: only the signature is at fault.
    honest = sign_answer(ids[victim], scope(), fabricated, held.root)
    verify_round_record(
        _section(record, answers=(*record.storage.answers, honest), missing=()), ctx
    )


def test_an_honest_holder_refuses_a_record_that_lists_its_valid_answer_missing() -> None:
    wire, _, record, _ = _two_rounds()
    voter, ctx = _voter_context(wire, record, holder=True)
    assert record.storage is not None
    mine = next(a for a in record.storage.answers if a.holder == voter)
    others = tuple(a for a in record.storage.answers if a is not mine)
    moved = _section(record, answers=others, missing=((mine.artifact, voter),))
    _refused(moved, ctx, v.OWN_ANSWER, "lists it missing")
    verify_round_record(moved, replace(ctx, own=None))  # others cannot tell: only it can
    dropped = _section(record, answers=others)
    _refused(dropped, ctx, v.OWN_ANSWER, "leaves it out")


def test_a_machine_holder_refuses_the_proposal_of_a_leader_that_omits_its_answer() -> None:
    """Through the machines: the leader drops one holder's answer before it arrives."""
    wire = Wire.build(4, seed=5, replicas=3, challenge_every=2)
    first = _round(wire, 1)
    state = storage_after(StorageState(), first, wire.genesis)
    leader2 = _leader_of(wire, 2)
    assert first.storage is not None
    victim = next(h for h in first.storage.commitments[0].holders if h != leader2)
    from consortium.protocol.messages import StorageAnswers

    def drop(sender: str, to: str, msg: object) -> list[tuple[str, object]]:
        if isinstance(msg, StorageAnswers) and sender == victim:
            return []  # the leader "never got" it: it will list the victim missing
        return [(to, msg)]

    wire.filter = drop  # type: ignore[assignment]
    model = wire.committed[victim][-1].proposal.model
    wire.committed.clear()
    wire.begin(2, start=model, storage=state, frontier=_CHAINS[id(wire)])
    wire.run()
    wire.tick(6.0)  # past the collect window: the leader proposes without the victim's answer
    assert "own-answer-missing" in "\n".join(wire.notes.get(victim, []))
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(leader2)))
    assert record.storage is not None and (first.storage.commitments[0].artifact, victim) in (
        record.storage.missing
    )


def test_a_wrong_root_or_wrong_holders_are_refused() -> None:
    wire2 = Wire.build(4, seed=5, replicas=3, challenge_every=2)
    record = _round(wire2, 1)
    _, ctx = _voter_context_plain(wire2, record)
    assert record.storage is not None
    (c,) = record.storage.commitments
    wrong_root = replace(c, root=bytes(32))
    _refused(_section(record, commitments=(wrong_root,)), ctx, v.STORAGE_COMMITMENT, "root or size")
    spare = next(m for m in sorted(wire2.machines) if m not in c.holders)
    wrong_holders = replace(c, holders=(*c.holders[:-1], spare))
    _refused(
        _section(record, commitments=(wrong_holders,)),
        ctx,
        v.STORAGE_COMMITMENT,
        "not the ones the beacon picks",
    )
    _refused(_section(record, commitments=()), ctx, v.STORAGE_COMMITMENT, "the round owes")
    _refused(replace(record, storage=None), ctx, v.STORAGE_COMMITMENT, "lacks")


def _voter_context_plain(wire: Wire, record: RoundRecord) -> tuple[str, RecordContext]:
    voter = next(n for n in sorted(wire.machines) if n != record.leader)
    p = wire.committed[voter][-1].proposal
    ctx = wire.machines[voter]._context(record.leader, p, voting=True)
    verify_round_record(record, ctx)
    return voter, ctx


def test_a_pair_never_challenged_is_refused() -> None:
    wire, first, record, _ = _two_rounds()
    _, ctx = _voter_context(wire, record, holder=None)
    assert first.storage is not None
    (c,) = first.storage.commitments
    outsider = next(m for m in sorted(wire.machines) if m not in c.holders)
    listed = _section(record, missing=((c.artifact, outsider),))
    _refused(listed, ctx, v.STORAGE_PROOF, "was not challenged")
    # An answer in a round that challenges nothing is refused as well.
    assert record.storage is not None
    answer = record.storage.answers[0]
    wire1 = Wire.build(4, seed=5, replicas=3, challenge_every=2)
    r1 = _round(wire1, 1)
    _, ctx1 = _voter_context_plain(wire1, r1)
    _refused(_section(r1, answers=(answer,)), ctx1, v.STORAGE_PROOF, "was not challenged")


def test_a_challenge_round_challenges_at_most_challenge_artifacts_drawn_from_its_beacon() -> None:
    """With challenge_artifacts = 1, round 4 challenges one of the three models earlier rounds
    committed (at each of its holders): the one its attempt beacon draws, recomputed by every
    voter; a record that also lists a holder of an artifact not drawn is refused."""
    wire = Wire.build(4, seed=5, replicas=3, challenge_every=2, challenge_artifacts=1)
    state = StorageState()
    for round_no in (1, 2, 3):
        record = _round(wire, round_no, state)
        state = storage_after(state, record, wire.genesis)
    assert len(state.holdings) == 3
    fourth = _round(wire, 4, state)
    assert fourth.storage is not None and fourth.storage.missing == ()
    beacon = attempt_beacon(record_beacon(fourth, wire.genesis), fourth.attempt)
    (drawn,) = sample_artifacts(beacon, list(state.holdings), 1)
    assert {a.artifact for a in fourth.storage.answers} == {drawn}
    assert sorted(a.holder for a in fourth.storage.answers) == sorted(state.holdings[drawn].holders)
    _, ctx = _voter_context(wire, fourth, holder=None)
    undrawn = next(c for a, c in state.holdings.items() if a != drawn)
    listed = _section(fourth, missing=((undrawn.artifact, undrawn.holders[0]),))
    _refused(listed, ctx, v.STORAGE_PROOF, "was not challenged")


def test_a_challenge_neither_answered_nor_missing_is_refused() -> None:
    wire, _, record, _ = _two_rounds()
    _, ctx = _voter_context(wire, record, holder=None)
    assert record.storage is not None
    _refused(
        _section(record, answers=record.storage.answers[1:]),
        ctx,
        v.STORAGE_PROOF,
        "neither answered nor listed missing",
    )


def test_a_storage_section_in_a_run_without_replication_is_refused() -> None:
    wire = Wire.build(4, seed=5)
    record = _round(wire, 1)
    _, ctx = _voter_context_plain(wire, record)
    _refused(replace(record, storage=StorageSection()), ctx, v.STORAGE_COMMITMENT, "without")


# -- the codec ------------------------------------------------------------------------------------


def test_the_codec_round_trips_and_refuses_unknown_keys() -> None:
    section = StorageSection(
        (Commitment("bafy", 64, bytes(32), ("a", "b", "c")),),
        (HolderAnswer("bafy", "a", (StorageProof(0, bytes(32), (bytes(32),)),)),),
        (("bafy", "b"),),
    )
    assert StorageSection.from_body(section.to_body()) == section
    body = section.to_body()
    with pytest.raises(RecordFormatError, match="commitments, answers, missing"):
        StorageSection.from_body({**body, "extra": []})
    with pytest.raises(RecordFormatError, match="distinct member ids"):
        bad = {**body["commitments"][0], "holders": ["a", "a"]}
        StorageSection.from_body({**body, "commitments": [bad]})
    with pytest.raises(RecordFormatError, match="artifact, holder"):
        StorageSection.from_body({**body, "missing": [{"artifact": "bafy"}]})


# -- the run configuration -----------------------------------------------------------------------


def test_the_storage_fields_at_their_default_leave_every_run_id_unchanged() -> None:
    from consortium.node.config import RunConfig

    run = RunConfig(started=1)
    body = run.body()
    assert "replicas" not in body and "challenge_every" not in body
    assert "challenge_artifacts" not in body
    # The ids these configurations had before the fields existed (the commit before them).
    assert run.run_id() == "c6218b78acfb4f8c"
    assert RunConfig(started=1, task="a.b:c", task_hash="x").run_id() == "0b36846e4f02af9f"
    with_storage = run.model_copy(update={"replicas": 3, "challenge_every": 2})
    assert with_storage.body()["replicas"] == 3 and with_storage.run_id() != run.run_id()
    assert RunConfig.from_body(with_storage.body()) == with_storage


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_a_run_whose_replicas_are_out_of_range_is_refused_by_name(replicas: int) -> None:
    from consortium.node.config import RunConfig, consortium_refusals
    from tests.machines import consortium

    _, genesis = consortium(4)
    run = RunConfig(purpose="research", replicas=replicas)
    (why,) = consortium_refusals(run, genesis)
    assert "[rule replicas]" in why and "between min(3, n) = 3 and n = 4" in why
    assert consortium_refusals(run.model_copy(update={"replicas": 3}), genesis) == []
    assert consortium_refusals(run.model_copy(update={"replicas": 0}), genesis) == []


# -- the holders' message -------------------------------------------------------------------------


def test_storage_answers_are_shape_checked_on_the_wire() -> None:
    from consortium.core.encoding import encode
    from consortium.protocol.messages import (
        MAX_ANSWERS,
        ProtocolError,
        StorageAnswers,
        decode_message,
        encode_message,
    )

    answer = HolderAnswer("bafy", "a", (StorageProof(0, bytes(32), (bytes(32),)),))
    msg = StorageAnswers("run", 2, 0, (answer,))
    assert decode_message(encode_message(msg)) == msg
    body = msg.to_body()

    def wire(b: dict[str, object]) -> bytes:
        return encode({"type": "storage", "body": b})

    with pytest.raises(ProtocolError, match="at most"):
        decode_message(wire({**body, "answers": [body["answers"][0]] * (MAX_ANSWERS + 1)}))
    with pytest.raises(ProtocolError, match="malformed storage answer"):
        decode_message(wire({**body, "answers": [{**body["answers"][0], "proofs": [{}]}]}))
    with pytest.raises(ProtocolError, match="malformed storage answer"):
        too_many = [body["answers"][0]["proofs"][0]] * 11
        decode_message(wire({**body, "answers": [{**body["answers"][0], "proofs": too_many}]}))


def test_the_leader_keeps_only_a_holders_own_valid_answers() -> None:
    """A member answering for another holder, or with a proof that does not verify, is not
    counted: that holder is listed missing unless its own valid answer arrives."""
    from consortium.protocol.messages import StorageAnswers

    wire = Wire.build(4, seed=5, replicas=3, challenge_every=2)
    first = _round(wire, 1)
    state = storage_after(StorageState(), first, wire.genesis)
    leader2 = _leader_of(wire, 2)
    assert first.storage is not None
    holders = [h for h in first.storage.commitments[0].holders if h != leader2]
    victim, liar = holders[0], holders[1]
    captured: dict[str, StorageAnswers] = {}

    def rewrite(sender: str, to: str, msg: object) -> list[tuple[str, object]]:
        if isinstance(msg, StorageAnswers) and sender == victim:
            captured[victim] = msg
            return []  # the victim's own answer never arrives
        if isinstance(msg, StorageAnswers) and sender == liar and victim in captured:
            # the liar forwards the victim's (valid) answer as part of its own message
            return [(to, replace(msg, answers=(*msg.answers, *captured[victim].answers)))]
        return [(to, msg)]

    wire.filter = rewrite  # type: ignore[assignment]
    model = wire.committed[victim][-1].proposal.model
    wire.committed.clear()
    wire.begin(2, start=model, storage=state, frontier=_CHAINS[id(wire)])
    wire.run()
    wire.tick(6.0)
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(leader2)))
    assert record.storage is not None
    artifact = first.storage.commitments[0].artifact
    assert (artifact, victim) in record.storage.missing
    assert "answered a challenge it was not given" in "\n".join(wire.notes.get(leader2, []))

"""Retrievability challenges, the pure pieces (`protocol/storage.py`): the tree over 32-byte
leaves equals RFC 9162's, every leaf proves, challenges come from the beacon alone, and every
forged or wrong answer is refused by name."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path

import pytest

from consortium.core.errors import ProofError
from consortium.core.identity import NodeIdentity
from consortium.ledger.merkle import EMPTY_ROOT, leaf_hash, node_hash, root_from_leaf_hashes
from consortium.protocol.beacon import attempt_beacon
from consortium.protocol.storage import (
    CHALLENGES,
    LEAF_SIZE,
    AnswerScope,
    ArtifactTree,
    Challenged,
    Commitment,
    HolderAnswer,
    StorageProof,
    challenge_indices,
    challenged_pairs,
    check_answer,
    check_answers,
    check_proof,
    commit,
    holders_for,
    leaf_count,
    sample_artifacts,
    sign_answer,
)

BEACON = attempt_beacon(hashlib.sha256(b"round 7").digest(), 0)
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 64, 65, 1000, 4096, 100_003])
def test_the_root_is_rfc9162_over_zero_padded_32_byte_leaves(size: int) -> None:
    data = _data(size)
    padded = data + b"\0" * (-size % LEAF_SIZE)
    leaves = [padded[i : i + LEAF_SIZE] for i in range(0, len(padded), LEAF_SIZE)]
    root, committed = commit(data)
    assert committed == size and leaf_count(size) == len(leaves)
    assert root == root_from_leaf_hashes([leaf_hash(leaf) for leaf in leaves])
    if size == 0:
        assert root == EMPTY_ROOT
    if size == 64:  # by hand: two leaves
        assert root == node_hash(leaf_hash(data[:32]), leaf_hash(data[32:]))


@pytest.mark.parametrize("size", [1, 32, 33, 95, 1000, 100_003])
def test_every_leaf_proves_against_the_committed_root(size: int) -> None:
    tree = ArtifactTree(_data(size, 1))
    for index in range(tree.leaves) if tree.leaves < 200 else range(0, tree.leaves, 97):
        proof = tree.prove(index)
        check_proof(tree.root, size, proof, index)
        assert StorageProof.from_body(proof.to_body()) == proof
        assert proof.size_bytes == 8 + 32 + 32 * len(proof.path)


def test_challenges_come_from_the_beacon_alone() -> None:
    leaves = 10_000
    one = challenge_indices(BEACON, CID, "node1", leaves)
    assert one == challenge_indices(BEACON, CID, "node1", leaves)  # every verifier agrees
    assert len(one) == CHALLENGES == len(set(one)) and all(0 <= i < leaves for i in one)
    other_beacon = attempt_beacon(hashlib.sha256(b"round 7").digest(), 1)
    assert challenge_indices(other_beacon, CID, "node1", leaves) != one
    assert challenge_indices(BEACON, CID, "node2", leaves) != one  # each holder its own
    assert challenge_indices(BEACON, CID + "x", "node1", leaves) != one
    assert challenge_indices(BEACON, CID, "node1", 5) == [0, 1, 2, 3, 4]  # fewer leaves than k
    assert challenge_indices(BEACON, CID, "node1", 0) == []
    assert len(challenge_indices(BEACON, CID, "node1", 9)) == CHALLENGES  # distinct, k < n
    with pytest.raises(ProofError, match="11 challenges per artifact; 5 to 10"):
        challenge_indices(BEACON, CID, "node1", leaves, 11)
    with pytest.raises(ProofError, match="32-byte beacon"):
        challenge_indices(b"short", CID, "node1", leaves)


def test_challenged_indices_spread_over_the_artifact() -> None:
    """Over many beacons every eighth of a 1,000-leaf artifact is challenged about as often."""
    counts = [0] * 8
    for r in range(500):
        beacon = attempt_beacon(hashlib.sha256(b"%d" % r).digest(), 0)
        for i in challenge_indices(beacon, CID, "node1", 1000):
            counts[i * 8 // 1000] += 1
    assert min(counts) > 400 and max(counts) < 600  # 500 expected each


def test_an_honest_answer_passes() -> None:
    data = _data(5000, 2)
    tree = ArtifactTree(data)
    indices = challenge_indices(BEACON, CID, "node1", tree.leaves)
    check_answer(tree.root, len(data), indices, [tree.prove(i) for i in indices])


def test_a_holder_that_lost_or_changed_data_is_refused_by_name() -> None:
    data = _data(5000, 3)
    tree = ArtifactTree(data)
    root, size = tree.root, len(data)
    indices = challenge_indices(BEACON, CID, "node1", tree.leaves)
    honest = [tree.prove(i) for i in indices]
    target = indices[0]
    # a corrupted copy: one byte of the challenged leaf changed, proved from the corrupt tree
    damaged = bytearray(data)
    damaged[target * LEAF_SIZE] ^= 1
    forged = ArtifactTree(bytes(damaged)).prove(target)
    with pytest.raises(ProofError, match=f"leaf {target}: inclusion proof"):
        check_answer(root, size, indices, [forged, *honest[1:]])
    # a lost leaf answered with zeros and the honest path
    zeros = StorageProof(target, bytes(LEAF_SIZE), honest[0].path)
    with pytest.raises(ProofError, match=f"leaf {target}"):
        check_proof(root, size, zeros, target)
    # a proof of another leaf (one the holder still has) for the challenged one
    other = tree.prove((target + 1) % tree.leaves)
    with pytest.raises(ProofError, match=f"answers the challenge of leaf {target}"):
        check_proof(root, size, other, target)
    # the right leaf moved to another index: the path does not fit
    moved = StorageProof(target, honest[0].leaf, other.path)
    with pytest.raises(ProofError, match=f"leaf {target}"):
        check_proof(root, size, moved, target)
    # a truncated path, an answer that skips a challenge, a leaf outside the artifact
    short = StorageProof(target, honest[0].leaf, honest[0].path[:-1])
    with pytest.raises(ProofError, match="too short"):
        check_proof(root, size, short, target)
    with pytest.raises(ProofError, match=f"{CHALLENGES - 1} proofs answer {CHALLENGES}"):
        check_answer(root, size, indices, honest[1:])
    with pytest.raises(ProofError, match="not in an artifact of 5000 bytes"):
        check_proof(root, size, StorageProof(157, bytes(32), ()), 157)


@pytest.mark.parametrize(
    "body, words",
    [
        ({"index": 1, "leaf": bytes(32)}, "is {index, leaf, path}"),
        ({"index": -1, "leaf": bytes(32), "path": []}, "non-negative"),
        ({"index": True, "leaf": bytes(32), "path": []}, "non-negative"),
        ({"index": 1, "leaf": bytes(31), "path": []}, "leaf is 32 bytes"),
        ({"index": 1, "leaf": bytes(32), "path": [bytes(31)]}, "32-byte hashes"),
        ({"index": 1, "leaf": bytes(32), "path": [bytes(32)] * 49}, "at most 48"),
        ({"index": 1, "leaf": bytes(32), "path": [], "extra": 1}, "is {index, leaf, path}"),
    ],
)
def test_a_malformed_proof_is_refused_when_read(body: object, words: str) -> None:
    with pytest.raises(ProofError, match=words):
        StorageProof.from_body(body)


# -- holders and the verifier rule over a round's answers ------------------------------------------

MEMBERS = [f"node{i}" for i in range(7)]


def test_holders_are_the_leader_and_beacon_chosen_others() -> None:
    three = holders_for(BEACON, CID, "node2", MEMBERS, 3)
    assert three[0] == "node2" and len(set(three)) == 3 and set(three) <= set(MEMBERS)
    assert three == holders_for(BEACON, CID, "node2", MEMBERS, 3)
    assert holders_for(BEACON, CID, "node2", MEMBERS, 5)[:3] == three  # a prefix of one order
    assert sorted(holders_for(BEACON, CID, "node2", MEMBERS, 0)) == MEMBERS  # 0: everyone
    others = {
        tuple(holders_for(attempt_beacon(bytes([r]) * 32, 0), CID, "node2", MEMBERS, 3))
        for r in range(20)
    }
    assert len(others) > 5  # the beacon, not any member, picks them
    with pytest.raises(ProofError, match=r"between min\(3, n\) = 3 and n = 7"):
        holders_for(BEACON, CID, "node2", MEMBERS, 2)
    with pytest.raises(ProofError, match="not a member"):
        holders_for(BEACON, CID, "mallory", MEMBERS, 3)


IDS = {m: NodeIdentity.generate(m, seed=f"storage-proofs/{m}".encode()) for m in MEMBERS}
DIGEST = hashlib.sha256(b"a consortium").digest()


def _scope(round_no: int = 7, attempt: int = 0) -> AnswerScope:
    keys = {m: i.public_key for m, i in IDS.items()}
    return AnswerScope(DIGEST, "run", round_no, attempt, keys)


def test_a_challenge_round_samples_at_most_k_artifacts_from_its_beacon() -> None:
    artifacts = [f"bafy{i}" for i in range(50)]
    drawn = sample_artifacts(BEACON, artifacts, 8)
    assert len(drawn) == 8 and drawn <= set(artifacts)
    assert drawn == sample_artifacts(BEACON, list(reversed(artifacts)), 8)  # order-free
    assert sample_artifacts(BEACON, artifacts[:5], 8) == set(artifacts[:5])  # fewer: all
    beacons = [attempt_beacon(bytes([r]) * 32, 0) for r in range(40)]
    seen = set().union(*(sample_artifacts(b, artifacts, 8) for b in beacons))
    assert seen == set(artifacts)  # over rounds, every artifact is drawn
    commitments = [Commitment(a, 64, bytes(32), ("node0", "node1", "node2")) for a in artifacts]
    pairs = challenged_pairs(BEACON, commitments, artifacts=8)
    assert len(pairs) == 24 and {c.artifact for c in pairs} == drawn
    with pytest.raises(ProofError, match="challenge_artifacts = 0"):
        sample_artifacts(BEACON, artifacts, 0)


def _round(n_holders: int = 3) -> tuple[list[Challenged], dict[tuple[str, str], HolderAnswer]]:
    data = _data(3000, 9)
    tree = ArtifactTree(data)
    challenged, honest = [], {}
    for holder in MEMBERS[:n_holders]:
        indices = tuple(challenge_indices(BEACON, CID, holder, tree.leaves))
        challenged.append(Challenged(CID, holder, tree.root, len(data), indices))
        answer = HolderAnswer(CID, holder, tuple(tree.prove(i) for i in indices))
        honest[(CID, holder)] = sign_answer(IDS[holder], _scope(), answer, tree.root)
    return challenged, honest


def test_honest_answers_pass_and_a_missing_holder_is_named() -> None:
    challenged, honest = _round()
    assert check_answers(challenged, list(honest.values()), [], _scope()) == []
    answers = [honest[(CID, "node0")], honest[(CID, "node1")]]
    assert check_answers(challenged, answers, [(CID, "node2")], _scope()) == [(CID, "node2")]
    body = honest[(CID, "node1")].to_body()
    assert HolderAnswer.from_body(body) == honest[(CID, "node1")]
    assert len(body["signature"]) == 64


def test_a_leader_cannot_drop_invent_or_forge_an_answer() -> None:
    challenged, honest = _round()
    answers = list(honest.values())
    with pytest.raises(ProofError, match=r"node2 on \S+ is neither answered nor listed missing"):
        check_answers(challenged, answers[:2], [], _scope())  # dropped
    with pytest.raises(ProofError, match="node5 was not challenged"):
        check_answers(challenged, answers, [(CID, "node5")], _scope())  # invented
    with pytest.raises(ProofError, match=r"node1 on \S+ is listed twice"):
        check_answers(challenged, answers, [(CID, "node1")], _scope())  # answered and missing
    bad = answers[1].proofs[0]
    forged = HolderAnswer(
        CID, "node1", (StorageProof(bad.index, bytes(32), bad.path), *answers[1].proofs[1:])
    )
    with pytest.raises(ProofError, match=f"node1's proof of {CID}: leaf {bad.index}"):
        check_answers(challenged, [answers[0], forged, answers[2]], [], _scope())
    with pytest.raises(ProofError, match="at most 10 proofs"):
        HolderAnswer.from_body(
            {"artifact": CID, "holder": "node1", "proofs": [{}] * 11, "signature": b""}
        )


def test_an_answer_not_signed_by_its_holder_for_this_round_is_refused_by_name() -> None:
    """Valid proofs are not enough: a leader holding the artifact could make them for a holder
    that lost it. Unsigned, signed by another member, or signed for another round or attempt:
    refused, naming the holder."""
    challenged, honest = _round()
    node1 = honest[(CID, "node1")]
    root = challenged[1].root
    unsigned = replace(node1, signature=b"")
    by_node0 = sign_answer(IDS["node0"], _scope(), replace(node1, signature=b""), root)
    old_round = sign_answer(IDS["node1"], _scope(round_no=5), unsigned, root)
    old_attempt = sign_answer(IDS["node1"], _scope(attempt=1), unsigned, root)
    for bad in (unsigned, by_node0, old_round, old_attempt):
        with pytest.raises(ProofError, match="not signed by node1 for round 7, attempt 0"):
            check_answers(
                challenged, [honest[(CID, "node0")], bad, honest[(CID, "node2")]], [], _scope()
            )
    other = _scope()
    with pytest.raises(ProofError, match="not signed by node0"):  # another consortium
        check_answers(
            challenged,
            list(honest.values()),
            [],
            AnswerScope(bytes(32), other.run, other.round, other.attempt, other.keys),
        )


# -- `consortium store prove|challenge` ---------------------------------------------------------


def test_store_prove_and_challenge_from_the_shell(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from consortium.cli.app import app
    from consortium.store import BlockStore, put_bytes

    runner = CliRunner()
    data = _data(70_000, 4)
    cid = str(put_bytes(BlockStore(tmp_path / "store"), data))
    common = ["--beacon", BEACON.hex(), "--holder", "node3", "--dir", str(tmp_path)]
    res = runner.invoke(app, ["store", "prove", cid, *common])
    assert res.exit_code == 0, res.stderr
    answer = tmp_path / "answer.json"
    answer.write_text(res.stdout)
    tree = ArtifactTree(data)
    indices = challenge_indices(BEACON, cid, "node3", tree.leaves)
    res = runner.invoke(app, ["store", "challenge", cid, *common])
    assert res.stdout.split() == [str(i) for i in indices]
    res = runner.invoke(app, ["store", "challenge", cid, *common, "--answer", str(answer)])
    assert res.exit_code == 0 and f"ok: node3 proved leaves {indices[0]}" in res.stdout
    committed = ["--root", tree.root.hex(), "--size", str(len(data))]
    empty = tmp_path / "elsewhere"  # a challenger without a copy, holding the commitment
    empty.mkdir()
    args = ["store", "challenge", cid, "--beacon", BEACON.hex(), "--holder", "node3"]
    res = runner.invoke(app, [*args, *committed, "--dir", str(empty), "--answer", str(answer)])
    assert res.exit_code == 0, res.stderr

    def refused(body: dict[str, object], words: str, *extra: str) -> None:
        answer.write_text(json.dumps(body))
        res = runner.invoke(app, [*args, *committed, *extra, "--answer", str(answer)])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and words in lines[0], res.stderr

    good = json.loads(runner.invoke(app, ["store", "prove", cid, *common]).stdout)
    bad = json.loads(json.dumps(good))
    bad["proofs"][2]["leaf"] = "00" * 32
    refused(bad, f"node3 failed the challenge on {cid}: leaf {indices[2]}")
    refused({**good, "holder": "node4"}, "answers for node4")
    refused({**good, "proofs": good["proofs"][:-1]}, "7 proofs answer 8 challenged leaves")
    refused({"nonsense": 1}, "is not an answer printed by `store prove`")
    res = runner.invoke(
        app, [*args[:3], "--beacon", "abc", "--holder", "x", "--dir", str(tmp_path)]
    )
    assert res.exit_code != 0 and "--beacon must be 64 hex digits" in res.stderr

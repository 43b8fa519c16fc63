"""Proofs of evaluation (consortium.zk): the pure pieces, then one real EZKL circuit (logistic
regression on digits, s = 2, 2^12 rows) proved once and refused in every way a prover could lie.
Each refusal test names the rule it expects, so removing that check makes it fail."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from consortium.zk import errors as E
from consortium.zk.circuit import (
    Keys,
    Shape,
    calibrate,
    keys_for,
    new_salt,
    record_commitment,
    record_vector,
    shape_of,
)
from consortium.zk.errors import ZkError
from consortium.zk.proof import EvalProof, prove, verify, with_claims
from consortium.zk.queue import ProverLock
from consortium.zk.srs import Srs, file_sha256, load_srs, local_test_srs
from consortium.zk.testdata import (
    CommittedTestData,
    check_included,
    half_width,
    sample_indices,
    wilson_interval,
)

BEACON = hashlib.sha256(b"round 2 beacon").digest()


# -- pure pieces ---------------------------------------------------------------------------------


def test_sample_is_a_function_of_the_beacon_and_skips_withdrawn_records() -> None:
    a = sample_indices(BEACON, 50, 8)
    assert a == sample_indices(BEACON, 50, 8)
    assert len(set(a.indices)) == 8 and all(0 <= i < 50 for i in a.indices)
    assert a.withdrawn == ()
    assert sample_indices(hashlib.sha256(b"other").digest(), 50, 8) != a
    gone = {a.indices[0], a.indices[3]}
    b = sample_indices(BEACON, 50, 8, gone)
    assert sorted(b.withdrawn) == sorted(gone)  # counted, and left out
    assert not gone & set(b.indices) and len(b.indices) == 8
    assert [i for i in b.indices if i in a.indices] == [i for i in a.indices if i not in gone]
    with pytest.raises(ZkError, match=E.SAMPLE_MISMATCH):
        sample_indices(BEACON, 5, 4, {0, 1})
    assert sample_indices(BEACON, 4, 4).indices != ()


def test_inclusion_ties_each_record_to_the_committed_root() -> None:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(7)]
    tree = CommittedTestData(leaves)
    for i in range(7):
        check_included(tree.root, 7, i, leaves[i], tree.path(i))
    with pytest.raises(ZkError, match=E.RECORD_NOT_COMMITTED):
        check_included(tree.root, 7, 2, leaves[3], tree.path(2))
    with pytest.raises(ZkError, match=E.RECORD_NOT_COMMITTED):
        check_included(tree.root, 7, 3, leaves[3], tree.path(2))


def test_wilson_interval() -> None:
    assert half_width(8) == max(
        (hi - lo) / 2 for lo, hi in (wilson_interval(c, 8) for c in range(9))
    )
    assert half_width(8, 8) < half_width(8, 4) == half_width(8) and half_width(32) < half_width(8)
    lo, hi = wilson_interval(8, 8)
    assert hi == 1.0 and 0.6 < lo < 0.7
    lo, hi = wilson_interval(45, 50)
    assert lo < 0.9 < hi and hi - lo < 0.2


def test_a_supplied_srs_must_have_the_agreed_hash(tmp_path: Path) -> None:
    path = tmp_path / "ceremony.srs"
    path.write_bytes((12).to_bytes(4, "little") + b"\x01" * 64)
    good = file_sha256(path)
    srs = load_srs(path, good)
    assert srs.logrows == 12 and not srs.test_only and "TEST ONLY" not in srs.label
    with pytest.raises(ZkError, match=E.SRS_MISMATCH):
        load_srs(path, "0" * 64)
    with pytest.raises(ZkError, match=E.SRS_MISSING):
        load_srs(tmp_path / "nope.srs", good)
    with pytest.raises(ZkError, match=E.SRS_MISMATCH):
        srs.check_serves(13)


# -- one real circuit ----------------------------------------------------------------------------


def _logreg(seed: int, steps: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 10))
    x, y = _digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return model


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y.astype(np.int64)


@dataclass
class World:
    model: nn.Module
    shape: Shape
    keys: Keys
    srs: Srs
    tree: CommittedTestData
    vectors: list[list[float]]
    proof: EvalProof
    cache: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("zk")
    model = _logreg(0, 30)
    shape = shape_of(model, (64,), 2)
    settings = calibrate(model, shape)
    srs = local_test_srs(
        root / "srs", int(__import__("json").loads(settings)["run_args"]["logrows"])
    )
    keys = keys_for(model, shape, settings, srs, root / "keys")
    x, y = _digits()
    vectors = [record_vector(x[i], int(y[i]), new_salt()) for i in range(10)]
    tree = CommittedTestData([record_commitment(v, keys) for v in vectors])
    sample = sample_indices(BEACON, tree.size, shape.s)
    with ProverLock().hold():  # one proof at a time on the machine
        proof = prove(
            model, shape, keys, tree, [vectors[i] for i in sample.indices], sample,
            beacon=BEACON, model_cid="bafkmodel",
        )  # fmt: skip
    return World(model, shape, keys, srs, tree, vectors, proof, root / "keys")


def _verify(w: World, artifact: EvalProof | bytes, **kw: object) -> object:
    args: dict[str, object] = {
        "model": w.model, "model_cid": "bafkmodel", "shape": w.shape, "keys": w.keys,
        "testdata": (w.tree.root, w.tree.size), "beacon": BEACON,
    }  # fmt: skip
    args.update(kw)
    return verify(artifact, **args)  # type: ignore[arg-type]


def test_a_proof_states_the_quantized_models_correct_count_and_verifies(world: World) -> None:
    c = world.proof.claims
    with torch.no_grad():
        expected = 0
        for i in c.indices:
            v = torch.tensor(world.vectors[i])
            pred = int(world.model(v[None, :64]).argmax())
            expected += int(pred == int(v[64]))
    assert c.correct == expected and c.s == 2 and c.test_only
    assert c.records == tuple(world.tree.commitments[i] for i in c.indices)
    again = EvalProof.from_bytes(world.proof.to_bytes())
    assert _verify(world, again.to_bytes()) == c


def test_keys_do_not_depend_on_the_rounds_weights(world: World, tmp_path: Path) -> None:
    other = _logreg(1, 5)
    keys = keys_for(other, world.shape, world.keys.settings.read_bytes(), world.srs, tmp_path)
    assert keys.vk.read_bytes() == world.keys.vk.read_bytes()


def test_a_proof_for_another_model_cid_is_refused(world: World) -> None:
    with pytest.raises(ZkError, match=E.MODEL_MISMATCH):
        _verify(world, world.proof, model_cid="bafkother")


def test_a_proof_of_other_weights_is_refused(world: World) -> None:
    """The verifier recomputes the weight commitment from the model it was given."""
    with pytest.raises(ZkError, match=E.WEIGHTS_MISMATCH):
        _verify(world, world.proof, model=_logreg(2, 10))


def test_another_accuracy_is_refused(world: World) -> None:
    c = world.proof.claims
    lie = with_claims(world.proof, correct=(c.correct + 1) % (c.s + 1))
    with pytest.raises(ZkError, match=E.ACCURACY_MISMATCH):
        _verify(world, lie)


def test_a_proof_whose_instance_was_edited_is_invalid(world: World) -> None:
    import json

    c = world.proof.claims
    body = json.loads(world.proof.proof)
    other = (c.s - c.correct) if c.s != 2 * c.correct else c.correct + 1
    body["instances"][0][0] = other.to_bytes(32, "little").hex()
    forged = replace(world.proof, proof=json.dumps(body).encode())
    with pytest.raises(ZkError, match=E.PROOF_INVALID):
        _verify(world, with_claims(forged, correct=other))


def test_another_test_data_commitment_or_sample_is_refused(world: World) -> None:
    with pytest.raises(ZkError, match=E.COMMITMENT_MISMATCH):
        _verify(world, world.proof, testdata=(hashlib.sha256(b"x").digest(), world.tree.size))
    with pytest.raises(ZkError, match=E.SAMPLE_MISMATCH):
        _verify(world, world.proof, beacon=hashlib.sha256(b"x").digest())
    c = world.proof.claims
    chosen = [i for i in range(world.tree.size) if i not in c.indices][:2]
    moved = with_claims(
        world.proof,
        indices=tuple(chosen),
        records=tuple(world.tree.commitments[i] for i in chosen),
        paths=tuple(tuple(world.tree.path(i)) for i in chosen),
    )
    with pytest.raises(ZkError, match=E.SAMPLE_MISMATCH):
        _verify(world, moved)


def test_a_record_that_is_not_the_committed_one_is_refused(world: World) -> None:
    c = world.proof.claims
    fake = with_claims(world.proof, records=(world.tree.commitments[c.indices[1]], c.records[1]))
    with pytest.raises(ZkError, match=E.RECORD_NOT_COMMITTED):
        _verify(world, fake)
    sample = sample_indices(BEACON, world.tree.size, 2)
    x, y = _digits()
    resalted = [record_vector(x[i], int(y[i]), new_salt()) for i in sample.indices]
    with pytest.raises(ZkError, match=E.RECORD_NOT_COMMITTED):
        prove(world.model, world.shape, world.keys, world.tree, resalted, sample,
              beacon=BEACON, model_cid="bafkmodel")  # fmt: skip


def test_other_settings_srs_or_a_corrupted_file_are_refused(world: World) -> None:
    with pytest.raises(ZkError, match=E.SETTINGS_MISMATCH):
        _verify(world, with_claims(world.proof, settings="0" * 64))
    wrong_srs = replace(world.keys, srs=replace(world.srs, sha256="1" * 64))
    with pytest.raises(ZkError, match=E.SRS_MISMATCH):
        _verify(world, world.proof, keys=wrong_srs)
    data = bytearray(world.proof.to_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ZkError, match=E.PROOF_MALFORMED):
        _verify(world, bytes(data[:100]))


def _solcjs() -> Path:
    from consortium.zk.evm import find_solcjs

    try:
        return find_solcjs()
    except ZkError:
        pytest.skip("npm solc not installed: make solcjs (npm install solc@0.8.37 in .tmp/solcjs)")


def _on_chain(
    world: World, proof: EvalProof, model: nn.Module | None = None, **kw: object
) -> object:
    from consortium.zk.evm import check_on_chain

    args: dict[str, object] = {
        "model": model or world.model, "shape": world.shape, "keys": world.keys,
        "testdata": (world.tree.root, world.tree.size), "cache": world.cache / "evm",
        "solcjs": _solcjs(),
    }  # fmt: skip
    args.update(kw)
    return check_on_chain(proof, **args)  # type: ignore[arg-type]


def test_the_on_chain_check_without_solcjs_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consortium.zk.evm import SOLCJS_ENV, find_solcjs

    monkeypatch.setenv(SOLCJS_ENV, str(tmp_path / "no-solcjs"))
    with pytest.raises(ZkError, match=E.NOT_INSTALLED) as info:
        find_solcjs(tmp_path)
    assert "make solcjs" in str(info.value)


@pytest.mark.parametrize("module", ["ezkl", "onnx"])
def test_without_the_zk_extra_a_proof_says_how_to_install_it(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import` fails as if not installed
    with pytest.raises(ZkError, match=E.NOT_INSTALLED) as info:
        {"ezkl": E.require_ezkl, "onnx": E.require_onnx}[module]()
    assert f"need {module}: pip install 'consortium[zk]'" in str(info.value)


@pytest.mark.slow
def test_on_chain_a_valid_proof_passes_the_verifier_and_the_binding(world: World) -> None:
    from consortium.zk.evm import ChainCheck

    done = _on_chain(world, world.proof)
    assert isinstance(done, ChainCheck)
    assert done.verify_gas > 100_000 and done.deploy_gas > 1_000_000
    again = _on_chain(world, EvalProof.from_bytes(world.proof.to_bytes()))
    assert isinstance(again, ChainCheck) and again.wrapper == done.wrapper  # deployed once


@pytest.mark.slow
def test_on_chain_a_flipped_bit_is_refused(world: World) -> None:
    body = json.loads(world.proof.proof)
    body["proof"][len(body["proof"]) - 40] ^= 1  # past the commitments: EZKL's verifier refuses
    body["hex_proof"] = "0x" + bytes(body["proof"]).hex()
    flipped = replace(world.proof, proof=json.dumps(body).encode())
    with pytest.raises(ZkError, match=E.PROOF_INVALID):
        _on_chain(world, flipped)


@pytest.mark.slow
def test_on_chain_a_valid_proof_of_other_weights_is_refused_by_the_binding(world: World) -> None:
    # The proof is valid (EZKL's verifier alone accepts it), but for this model's weights: checked
    # as a proof of another model (another weight commitment), the wrapper refuses it by name.
    with pytest.raises(ZkError, match=E.WEIGHTS_MISMATCH):
        _on_chain(world, world.proof, model=_logreg(1, 5))


@pytest.mark.slow
def test_on_chain_records_not_under_the_committed_root_are_refused(world: World) -> None:
    # A valid proof presented against another committed test set (its root carried in the claims
    # and given as the committed one): the proof's record commitments are not its leaves.
    other = CommittedTestData([hashlib.sha256(bytes([i])).digest() for i in range(10)])
    moved = with_claims(
        world.proof,
        testdata_root=other.root,
        paths=tuple(tuple(other.path(i)) for i in world.proof.claims.indices),
    )
    with pytest.raises(ZkError, match=E.RECORD_NOT_COMMITTED):
        _on_chain(world, moved, testdata=(other.root, other.size))
    with pytest.raises(ZkError, match=E.COMMITMENT_MISMATCH):  # off chain: not the committed one
        _on_chain(world, moved)


@pytest.mark.slow
def test_on_chain_a_caller_cannot_skip_a_check_by_giving_fewer_commitments(world: World) -> None:
    # The wrapper fixes the circuit's s and weight columns: with no weight commitment or no
    # positions given, it checks nothing of them, so it refuses the call instead.
    from consortium.zk.evm import (
        compiled_for,
        embedded_chain,
        evaluation_calldata,
        evm_proof,
        refusal,
    )
    from consortium.zk.proof import weight_commitments

    assert isinstance(_on_chain(world, world.proof), object)  # deployed
    weights = weight_commitments(world.model, world.shape, world.keys)
    chain = embedded_chain()
    compiled = compiled_for(world.keys, world.cache / "evm", _solcjs())
    _, wrapper, _ = chain.deploy(compiled, world.shape.s, len(weights))
    proof, instances = evm_proof(world.proof.proof)
    c = world.proof.claims
    for lie in (
        evaluation_calldata(proof, instances, (), c),
        evaluation_calldata(proof, instances, weights, replace(c, indices=(), paths=())),
    ):
        result, revert, _ = chain.call(wrapper, lie)
        assert result is None
        assert refusal(revert).rule == E.PROOF_MALFORMED
    result, _, _ = chain.call(wrapper, evaluation_calldata(proof, instances, weights, c))
    assert result is not None and int.from_bytes(result[-32:], "big") == 1


@pytest.mark.slow
def test_on_chain_another_count_is_refused(world: World) -> None:
    c = world.proof.claims
    lying = with_claims(world.proof, correct=(c.correct + 1) % (c.s + 1))
    with pytest.raises(ZkError, match=E.ACCURACY_MISMATCH):
        _on_chain(world, lying)

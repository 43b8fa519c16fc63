"""Prove and verify an evaluation: `prove(...) -> EvalProof`, `verify(...) -> EvalClaims`.

What a proof covers: the model at `claims.model`, quantized as the pinned settings say (scale
2^7), applied to s records the node chose and committed to at run start (`testdata`), at the
positions the beacon drew, gives `claims.correct` correct predictions. It says nothing about
records the node did not commit, nor that the committed records are honest data.

`verify` trusts nothing the prover computed that it can compute itself: it compiles the circuit
from the model it was given (the model at the CID on the ledger) under the pinned settings, makes
or reuses the keys, RECOMPUTES the commitment to the weights, recomputes the sample from the
beacon, checks each record commitment's inclusion under the committed root, then swaps the
recomputed weight commitment and the committed record commitments into the proof and verifies
it. Each refusal names its rule (`errors.py`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError
from consortium.zk.circuit import Keys, Shape, check_settings, export_onnx
from consortium.zk.errors import (
    ACCURACY_MISMATCH,
    COMMITMENT_MISMATCH,
    MODEL_MISMATCH,
    PROOF_INVALID,
    PROOF_MALFORMED,
    RECORD_NOT_COMMITTED,
    SAMPLE_MISMATCH,
    SETTINGS_MISMATCH,
    SRS_MISMATCH,
    WEIGHTS_MISMATCH,
    ZkError,
    require_ezkl,
)
from consortium.zk.testdata import (
    COMMITMENT_SIZE,
    CommittedTestData,
    Sample,
    check_included,
    sample_indices,
)

KIND = "consortium/eval-proof"
VERSION = 1
MAX_PROOF_BYTES = 64 << 20


def _hashes(value: Any, what: str, size: int = COMMITMENT_SIZE) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, bytes) and len(v) == size for v in value
    ):
        raise ZkError(PROOF_MALFORMED, f"{what} is a list of {size}-byte values")
    return tuple(value)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ZkError(PROOF_MALFORMED, f"{what} is a list of non-negative integers")
    return tuple(value)


@dataclass(frozen=True)
class EvalClaims:
    """What a proof of evaluation states publicly (the records stay private)."""

    model: str  # CID of the model proved
    settings: str  # sha256 (hex) of the pinned circuit settings
    srs: str  # sha256 (hex) of the SRS
    test_only: bool  # a locally generated SRS: not evidence
    s: int
    correct: int
    weights: tuple[bytes, ...]  # KZG commitment(s) to the quantized weights
    testdata_root: bytes  # the run-start commitment to the node's test records
    testdata_size: int
    beacon: bytes  # the attempt beacon the sample was drawn from
    indices: tuple[int, ...]
    withdrawn: tuple[int, ...]  # drawn positions skipped: consent withdrawn
    records: tuple[bytes, ...]  # per sampled record, its commitment (a leaf)
    paths: tuple[tuple[bytes, ...], ...]  # per sampled record, its inclusion path

    @property
    def accuracy(self) -> float:
        return self.correct / self.s

    def to_body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "settings": self.settings,
            "srs": self.srs,
            "test_only": self.test_only,
            "s": self.s,
            "correct": self.correct,
            "weights": list(self.weights),
            "testdata_root": self.testdata_root,
            "testdata_size": self.testdata_size,
            "beacon": self.beacon,
            "indices": list(self.indices),
            "withdrawn": list(self.withdrawn),
            "records": list(self.records),
            "paths": [list(p) for p in self.paths],
        }

    @classmethod
    def from_body(cls, b: Any) -> EvalClaims:
        fields = {
            "model", "settings", "srs", "test_only", "s", "correct", "weights", "testdata_root",
            "testdata_size", "beacon", "indices", "withdrawn", "records", "paths",
        }  # fmt: skip
        if not isinstance(b, dict) or set(b) != fields:
            raise ZkError(PROOF_MALFORMED, f"claims are {{{', '.join(sorted(fields))}}}")
        for key in ("model", "settings", "srs"):
            if not isinstance(b[key], str) or not 0 < len(b[key]) <= 200:
                raise ZkError(PROOF_MALFORMED, f"claims' {key} is a short string")
        (s, correct, size) = _ints([b["s"], b["correct"], b["testdata_size"]], "s, correct, size")
        if not isinstance(b["test_only"], bool) or s < 1 or correct > s:
            raise ZkError(PROOF_MALFORMED, "claims need 0 <= correct <= s and s >= 1")
        (root,) = _hashes([b["testdata_root"]], "testdata_root")
        (beacon,) = _hashes([b["beacon"]], "beacon")
        paths = b["paths"]
        if not isinstance(paths, list):
            raise ZkError(PROOF_MALFORMED, "claims' paths is a list")
        claims = cls(
            b["model"], b["settings"], b["srs"], b["test_only"], s, correct,
            _hashes(b["weights"], "weights"), root, size, beacon,
            _ints(b["indices"], "indices"), _ints(b["withdrawn"], "withdrawn"),
            _hashes(b["records"], "records"), tuple(_hashes(p, "a path") for p in paths),
        )  # fmt: skip
        if not (len(claims.indices) == len(claims.records) == len(claims.paths) == s):
            raise ZkError(PROOF_MALFORMED, f"claims for s = {s} need s indices, records, paths")
        return claims


@dataclass(frozen=True)
class EvalProof:
    """The artifact in the store: the claims, the pinned settings and EZKL's proof."""

    claims: EvalClaims
    settings: bytes
    proof: bytes

    def to_bytes(self) -> bytes:
        return encode(
            {
                "kind": KIND,
                "v": VERSION,
                "claims": self.claims.to_body(),
                "settings": self.settings,
                "proof": self.proof,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EvalProof:
        try:
            body = decode(data, max_bytes=MAX_PROOF_BYTES)
        except ConsortiumError as exc:
            raise ZkError(PROOF_MALFORMED, f"not a proof of evaluation: {exc}") from exc
        if not isinstance(body, dict) or body.get("kind") != KIND:
            raise ZkError(PROOF_MALFORMED, "not a proof of evaluation (kind)")
        if body.get("v") != VERSION or set(body) != {"kind", "v", "claims", "settings", "proof"}:
            raise ZkError(PROOF_MALFORMED, f"a proof of evaluation is version {VERSION}")
        if not isinstance(body["settings"], bytes) or not isinstance(body["proof"], bytes):
            raise ZkError(PROOF_MALFORMED, "settings and proof are bytes")
        return cls(EvalClaims.from_body(body["claims"]), body["settings"], body["proof"])


def _witness(model: nn.Module, shape: Shape, keys: Keys, vectors: Sequence[Sequence[float]],
             tmp: Path) -> dict[str, Any]:  # fmt: skip
    """EZKL's witness of the circuit of `model` on `vectors` (compiled under the pinned
    settings); the compiled circuit is left at tmp/net.ezkl."""
    ezkl = require_ezkl()
    onnx, compiled = tmp / "net.onnx", tmp / "net.ezkl"
    export_onnx(model, shape, onnx)
    ezkl.compile_circuit(str(onnx), str(compiled), str(keys.settings))
    (tmp / "input.json").write_text(json.dumps({"input_data": [list(v) for v in vectors]}))
    ezkl.gen_witness(
        str(tmp / "input.json"),
        str(compiled),
        str(tmp / "witness.json"),
        vk_path=str(keys.vk),
        srs_path=str(keys.srs.path),
    )
    witness: dict[str, Any] = json.loads((tmp / "witness.json").read_text())
    return witness


def _commitments(section: Any, what: str) -> tuple[bytes, ...]:
    try:
        return tuple(bytes.fromhex(c) for group in section["polycommit"] for c in group)
    except (KeyError, TypeError, ValueError) as exc:
        raise ZkError(PROOF_INVALID, f"EZKL's witness has no {what} commitments") from exc


def weight_commitments(model: nn.Module, shape: Shape, keys: Keys) -> tuple[bytes, ...]:
    """The commitment(s) to `model`'s quantized weights, as a verifier recomputes them: EZKL's
    witness of the circuit of that model (on zero records) under the pinned settings."""
    with tempfile.TemporaryDirectory(prefix="consortium-zk-") as name:
        zeros = [[0.0] * shape.width for _ in range(shape.s)]
        witness = _witness(model, shape, keys, zeros, Path(name))
        return _commitments(witness.get("processed_params"), "weight")


def prove(
    model: nn.Module,
    shape: Shape,
    keys: Keys,
    testdata: CommittedTestData,
    vectors: Sequence[Sequence[float]],
    sample: Sample,
    *,
    beacon: bytes,
    model_cid: str,
) -> EvalProof:
    """Prove `model` on the sampled records (`vectors[k]` is the record at `sample.indices[k]`,
    as committed in `testdata`). Refuses records that are not the committed ones."""
    ezkl = require_ezkl()
    if len(vectors) != shape.s or len(sample.indices) != shape.s:
        raise ZkError(SAMPLE_MISMATCH, f"the circuit proves s = {shape.s} records")
    with tempfile.TemporaryDirectory(prefix="consortium-zk-") as name:
        tmp = Path(name)
        witness = _witness(model, shape, keys, vectors, tmp)
        records = _commitments(witness.get("processed_inputs"), "record")
        for k, i in enumerate(sample.indices):
            if records[k] != testdata.commitments[i]:
                raise ZkError(
                    RECORD_NOT_COMMITTED,
                    f"the record given for position {i} is not the one committed at run start",
                )
        weights = _commitments(witness.get("processed_params"), "weight")
        correct = int(ezkl.felt_to_int(witness["outputs"][0][0]))
        ezkl.prove(
            str(tmp / "witness.json"),
            str(tmp / "net.ezkl"),
            str(keys.pk),
            str(tmp / "proof.json"),
            srs_path=str(keys.srs.path),
        )
        proof = (tmp / "proof.json").read_bytes()
    claims = EvalClaims(
        model=model_cid,
        settings=keys.settings_sha256,
        srs=keys.srs.sha256,
        test_only=keys.srs.test_only,
        s=shape.s,
        correct=correct,
        weights=weights,
        testdata_root=testdata.root,
        testdata_size=testdata.size,
        beacon=beacon,
        indices=sample.indices,
        withdrawn=sample.withdrawn,
        records=tuple(records),
        paths=tuple(tuple(testdata.path(i)) for i in sample.indices),
    )
    return EvalProof(claims, keys.settings.read_bytes(), proof)


def verify(
    artifact: EvalProof | bytes,
    *,
    model: nn.Module,
    model_cid: str,
    shape: Shape,
    keys: Keys,
    testdata: tuple[bytes, int] | None = None,
    beacon: bytes | None = None,
) -> EvalClaims:
    """Check a proof of evaluation of `model` (the model at `model_cid`, from the ledger) under
    `keys` (the verifier's own, made from the pinned settings and the agreed SRS); `testdata`
    (root, size) and `beacon` are the committed ones when the caller knows them. Returns the
    claims, or raises ZkError naming the first rule broken."""
    ezkl = require_ezkl()
    proof = artifact if isinstance(artifact, EvalProof) else EvalProof.from_bytes(artifact)
    c = proof.claims
    if c.model != model_cid:
        raise ZkError(MODEL_MISMATCH, f"the proof is for model {c.model}, not {model_cid}")
    if c.srs != keys.srs.sha256:
        raise ZkError(SRS_MISMATCH, f"the proof used SRS {c.srs}, the run's is {keys.srs.sha256}")
    if hashlib.sha256(proof.settings).hexdigest() != c.settings or c.settings != (
        keys.settings_sha256
    ):
        raise ZkError(SETTINGS_MISMATCH, "the proof's circuit settings are not the pinned ones")
    check_settings(proof.settings, shape)
    if c.s != shape.s:
        raise ZkError(SETTINGS_MISMATCH, f"a proof on {c.s} records; the circuit proves {shape.s}")
    if testdata is not None and (c.testdata_root, c.testdata_size) != testdata:
        raise ZkError(COMMITMENT_MISMATCH, "the proof is on another test-data commitment")
    if beacon is not None and c.beacon != beacon:
        raise ZkError(SAMPLE_MISMATCH, "the sample was drawn from another beacon")
    drawn = sample_indices(c.beacon, c.testdata_size, c.s, c.withdrawn)
    if drawn != Sample(c.indices, c.withdrawn):
        raise ZkError(
            SAMPLE_MISMATCH,
            f"positions {list(c.indices)} (skipping {list(c.withdrawn)}) are not the beacon's "
            f"draw {list(drawn.indices)} (skipping {list(drawn.withdrawn)})",
        )
    for i, record, path in zip(c.indices, c.records, c.paths, strict=True):
        check_included(c.testdata_root, c.testdata_size, i, record, path)
    try:
        instances = json.loads(proof.proof)["instances"]
        stated = int(ezkl.felt_to_int(instances[0][0]))
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
        raise ZkError(PROOF_MALFORMED, f"EZKL's proof is unreadable: {exc}") from exc
    if stated != c.correct:
        raise ZkError(
            ACCURACY_MISMATCH, f"the proof shows {stated} correct of {c.s}, the claim {c.correct}"
        )
    with tempfile.TemporaryDirectory(prefix="consortium-zk-") as name:
        tmp = Path(name)
        zeros = [[0.0] * shape.width for _ in range(shape.s)]
        witness = _witness(model, shape, keys, zeros, tmp)
        weights = _commitments(witness.get("processed_params"), "weight")
        if weights != c.weights:
            raise ZkError(
                WEIGHTS_MISMATCH,
                f"the proof commits to other weights than the model at {model_cid}",
            )
        # The verifier's own witness already holds the recomputed weight commitment; the record
        # commitments are the committed ones (one per input).
        if [len(g) for g in witness["processed_inputs"]["polycommit"]] != [1] * shape.s:
            raise ZkError(SETTINGS_MISMATCH, "the circuit does not commit one point per record")
        witness["processed_inputs"]["polycommit"] = [[r.hex()] for r in c.records]
        (tmp / "expected.json").write_text(json.dumps(witness))
        (tmp / "proof.json").write_bytes(proof.proof)
        shutil.copy(tmp / "proof.json", tmp / "swapped.json")
        try:
            ezkl.swap_proof_commitments(str(tmp / "swapped.json"), str(tmp / "expected.json"))
            ok = ezkl.verify(
                str(tmp / "swapped.json"),
                str(keys.settings),
                str(keys.vk),
                srs_path=str(keys.srs.path),
            )
        except (RuntimeError, ValueError) as exc:
            raise ZkError(
                PROOF_INVALID,
                f"the proof does not verify against the model's weights and the committed "
                f"records: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            ) from exc
        if not ok:
            raise ZkError(PROOF_INVALID, "the proof does not verify")
    return c


def with_claims(proof: EvalProof, **changes: Any) -> EvalProof:
    """A copy with some claims changed (what a lying prover would publish; for tests)."""
    return replace(proof, claims=replace(proof.claims, **changes))

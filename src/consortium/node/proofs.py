"""Proofs of evaluation from a node folder: `consortium zk prove` and `zk verify` (issue 18).

Prove: the global model of a committed round (read from the store through its record's CID, as
`model export` does), the node's own test examples through the run's task (refused if the task
installed here is not the one the run pins), the node's commitment to them (made once per
circuit and SRS, kept private in DIR/zk/), the sample drawn from the beacon of the round after
(that round's record carries the partials that prove it), the proof made under the machine's
prover lock and put into the store.

Verify: the proof from the store; the round whose model it names, found on the ledger; the
sample's beacon recomputed from the next round's record; the model built from the task and the
store; then `zk.proof.verify`, which recomputes the weight commitment itself.

From a folder the test-data commitment is the local file made at the first proof (the one a
run with proofs commits on the ledger, `node/evaluations.py`, when the settings and SRS are the
same), and the SRS hash and s are options; in a run they are run-config fields, and records
list the proofs (docs/architecture.md "Proofs of evaluation", "In a run").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from consortium.consent.registry import ConsentRegistry
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.files import atomic_write
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import PUBLIC_FILE, PublicIdentity
from consortium.core.layout import CONSENT_FILE, LEDGER_FILE, STORE_DIR
from consortium.learning.task import Examples, load_data
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig, load_node_config
from consortium.node.models import ModelRound, _read_ledger, find_round, round_model
from consortium.protocol.beacon import attempt_beacon
from consortium.protocol.record import FINAL_KIND, FinalRecord, RoundRecord
from consortium.protocol.verifier import final_beacon, record_beacon
from consortium.store.blockstore import BlockStore
from consortium.store.cid import as_cid, cid_key
from consortium.store.objects import get_bytes, put_bytes
from consortium.zk import DEFAULT_SAMPLE
from consortium.zk.circuit import (
    Keys,
    Shape,
    architecture_hash,
    calibrate,
    check_settings,
    keys_for,
    new_salt,
    record_commitment,
    record_vector,
    settings_logrows,
    shape_of,
)
from consortium.zk.errors import MODEL_MISMATCH, SAMPLE_MISMATCH, ZkError
from consortium.zk.evm import ChainCheck, check_on_chain
from consortium.zk.proof import EvalClaims, EvalProof, prove, verify
from consortium.zk.queue import ProverLock
from consortium.zk.srs import Srs, file_sha256, load_srs, local_test_srs
from consortium.zk.testdata import CommittedTestData, sample_indices, wilson_interval

ZK_DIR = "zk"


@dataclass(frozen=True)
class SrsChoice:
    """--srs FILE --srs-sha256 HASH (production), or --test-srs [--srs FILE]."""

    path: Path | None = None
    sha256: str | None = None
    test: bool = False

    def resolve(self, directory: Path, logrows: int) -> Srs:
        if self.test:
            if self.path is not None:
                srs = load_srs(self.path, _sha(self.path))
                srs = Srs(srs.path, srs.sha256, srs.logrows, test_only=True)
            else:
                srs = local_test_srs(directory / ZK_DIR / "srs", logrows)
        else:
            if self.path is None or self.sha256 is None:
                raise ConfigError(
                    "give the run's SRS (--srs FILE --srs-sha256 HASH), or --test-srs for a "
                    "locally generated one (TEST ONLY)"
                )
            srs = load_srs(self.path, self.sha256)
        srs.check_serves(logrows)
        return srs


def _sha(path: Path) -> str:
    if not path.is_file():
        raise ZkError("srs-missing", f"no SRS file at {path}")
    return file_sha256(path)


def _model(directory: Path, found: ModelRound) -> tuple[RunConfig, nn.Module]:
    _, model = round_model(directory, found)
    return found.config, model.eval()


def _test_examples(directory: Path, config: RunConfig) -> Examples:
    name = ""
    if (directory / PUBLIC_FILE).is_file():
        name = PublicIdentity.load(directory / PUBLIC_FILE).name
    _, test = load_data(config.load_task(), load_node_config(directory).data.context(name))
    if len(test) == 0:
        raise ConfigError(f"{directory} has no test examples to prove on")
    return test


def _circuit(
    directory: Path, model: nn.Module, test: Examples, s: int, srs: SrsChoice
) -> tuple[Shape, Keys]:
    """The pinned settings for (architecture, s), calibrated once and kept, and the keys."""
    shape = shape_of(model, tuple(test.x.shape[1:]), s)
    folder = directory / ZK_DIR / "settings"
    path = folder / f"{architecture_hash(model, shape)[:32]}-s{s}.json"  # once per arch and s
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, calibrate(model, shape))
    settings = path.read_bytes()
    chosen = srs.resolve(directory, settings_logrows(settings))
    return shape, keys_for(model, shape, settings, chosen, directory / ZK_DIR / "keys")


def _next_round(directory: Path, record: RoundRecord) -> RoundRecord | None:
    _, rounds = _read_ledger(directory)
    later = [r for _, r in rounds if r.run == record.run and r.round == record.round + 1]
    return later[0] if later else None


def _final_of(directory: Path, record: RoundRecord) -> FinalRecord | None:
    """The run-final entry that follows `record`, the last round of its run, if any."""
    with Ledger.open(directory / LEDGER_FILE, readonly=True) as ledger:
        for entry in ledger.iter_entries():
            if entry.kind == FINAL_KIND:
                final = FinalRecord.from_entry(entry)
                if (final.run, final.round) == (record.run, record.round):
                    return final
    return None


def sample_beacon(directory: Path, record: RoundRecord) -> bytes:
    """The beacon the sample for `record`'s model comes from: that of the round after it (the
    attempt that committed), recomputed from the partials its record carries; for a run's last
    round, "round R + 1"'s from the partials of the run-final entry."""
    after = _next_round(directory, record)
    if after is None:
        final = _final_of(directory, record)
        if final is not None:
            return final_beacon(final, Genesis.load(directory / GENESIS_FILE))
        raise ZkError(
            SAMPLE_MISMATCH,
            f"round {record.round + 1} of run {record.run} has not committed yet: the sample for "
            f"round {record.round}'s model comes from its beacon",
        )
    genesis = Genesis.load(directory / GENESIS_FILE)
    return attempt_beacon(record_beacon(after, genesis), after.attempt)


def _withdrawn(directory: Path, config: RunConfig, test: Examples) -> set[int]:
    """Positions of test records whose consent for the run's purpose was granted and is no
    longer active (records the registry never held are not withdrawn)."""
    registry_path = directory / CONSENT_FILE
    if load_node_config(directory).consent == "off" or not registry_path.is_file():
        return set()
    ids = [str(r) for r in test.record_ids.tolist()]
    with ConsentRegistry(registry_path, readonly=True) as registry:
        known = {e.record_id for e in registry.history()}  # granted at some time (or erased)
        active = set(registry.eligible(config.purpose, time.time()).tolist())
    return {i for i, rid in enumerate(ids) if rid in known and rid not in active}


def _committed(
    directory: Path, keys: Keys, test: Examples
) -> tuple[CommittedTestData, list[list[float]], bool]:
    """The node's commitment to its test records under these keys: made once, then reused."""
    path = directory / ZK_DIR / f"testdata-{keys.settings_sha256[:16]}-{keys.srs.sha256[:16]}.json"
    ids = [str(r) for r in test.record_ids.tolist()]
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept["record_ids"] == ids:
            salts = kept["salts"]
            vectors = [record_vector(test.x[i], int(test.y[i]), salts[i]) for i in range(len(ids))]
            return (
                CommittedTestData([bytes.fromhex(c) for c in kept["commitments"]]),
                vectors,
                False,
            )
    salts = [new_salt() for _ in ids]
    vectors = [record_vector(test.x[i], int(test.y[i]), salts[i]) for i in range(len(ids))]
    tree = CommittedTestData([record_commitment(v, keys) for v in vectors])
    body = {"record_ids": ids, "salts": salts, "commitments": [c.hex() for c in tree.commitments],
            "root": tree.root.hex()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(body).encode())
    path.chmod(0o600)  # the salts are what hide the records
    return tree, vectors, True


@dataclass(frozen=True)
class Proved:
    cid: str
    claims: EvalClaims
    found: ModelRound
    srs: Srs
    committed_now: bool
    seconds: float


def prove_round(
    directory: Path,
    round_no: int,
    *,
    srs: SrsChoice,
    s: int = DEFAULT_SAMPLE,
    run: str | None = None,
    lock: ProverLock | None = None,
) -> Proved:
    directory = Path(directory)
    if s < 1:
        raise ConfigError(f"--sample {s}: prove on at least one record")
    found = find_round(directory, round_no, run)
    config, model = _model(directory, found)
    test = _test_examples(directory, config)
    beacon = sample_beacon(directory, found.record)
    shape, keys = _circuit(directory, model, test, s, srs)
    tree, vectors, now = _committed(directory, keys, test)
    sample = sample_indices(beacon, tree.size, s, _withdrawn(directory, config, test))
    t = time.perf_counter()
    with (lock or ProverLock()).hold():
        proof = prove(model, shape, keys, tree, [vectors[i] for i in sample.indices], sample,
                      beacon=beacon, model_cid=found.cid)  # fmt: skip
    seconds = time.perf_counter() - t
    cid = put_bytes(BlockStore(directory / STORE_DIR), proof.to_bytes())
    return Proved(cid_key(cid), proof.claims, found, keys.srs, now, seconds)


def _round_of_model(directory: Path, model_cid: str) -> ModelRound:
    _, rounds = _read_ledger(directory)
    try:
        key = cid_key(as_cid(model_cid))
    except ConsortiumError as exc:
        raise ZkError(MODEL_MISMATCH, f"the proof names no model CID: {exc}") from exc
    mine = [r for _, r in rounds if cid_key(as_cid(r.model)) == key]
    if not mine:
        raise ZkError(MODEL_MISMATCH, f"no round on the ledger committed the model {model_cid}")
    return find_round(directory, mine[0].round, mine[0].run)


@dataclass(frozen=True)
class Verified:
    claims: EvalClaims
    found: ModelRound
    srs: Srs
    chain: ChainCheck | None = None  # with onchain: the embedded chain's acceptance


def verify_proof(
    directory: Path, proof_cid: str, *, srs: SrsChoice, onchain: bool = False
) -> Verified:
    """Check the proof at `proof_cid` in DIR's store against the model its round committed;
    with `onchain`, then also on the embedded chain (`zk.evm.check_on_chain`: EZKL's verifier
    contract behind the wrapper that binds the recomputed weight commitment and the committed
    test-data root; contracts compiled once per circuit and SRS into DIR/zk/evm)."""
    directory = Path(directory)
    data = get_bytes(BlockStore(directory / STORE_DIR, create=False), proof_cid)
    proof = EvalProof.from_bytes(data)
    found = _round_of_model(directory, proof.claims.model)
    config, model = _model(directory, found)
    test = _test_examples(directory, config)  # the record shape; a member has its own data
    beacon = sample_beacon(directory, found.record)
    shape = shape_of(model, tuple(test.x.shape[1:]), proof.claims.s)
    check_settings(proof.settings, shape)
    chosen = srs.resolve(directory, settings_logrows(proof.settings))
    keys = keys_for(model, shape, proof.settings, chosen, directory / ZK_DIR / "keys")
    claims = verify(proof, model=model, model_cid=found.cid, shape=shape, keys=keys,
                    beacon=beacon)  # fmt: skip
    chain = None
    if onchain:
        # Until the run-start entry exists, the committed root is the one the proof names.
        chain = check_on_chain(proof, model=model, shape=shape, keys=keys,
                               testdata=(claims.testdata_root, claims.testdata_size),
                               cache=directory / ZK_DIR / "evm")  # fmt: skip
    return Verified(claims, found, chosen, chain)


def interval_text(claims: EvalClaims) -> str:
    lo, hi = wilson_interval(claims.correct, claims.s)
    return (
        f"{claims.correct} of {claims.s} sampled records correct (accuracy {claims.accuracy:.3f}; "
        f"95% Wilson interval for the committed test set [{lo:.3f}, {hi:.3f}], "
        f"±{(hi - lo) / 2:.3f} at s = {claims.s}; withdrawn and skipped: {len(claims.withdrawn)})"
    )

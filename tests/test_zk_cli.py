"""`consortium zk prove|verify` on a real run folder (an in-process 3-node run of logistic
regression on digits, 2 rounds): a node proves round 1's model on s = 2 of its committed test
records, sampled from round 2's beacon, with a TEST ONLY SRS; the proof verifies against the
model on the ledger; bad input is one line each."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.core.layout import STORE_DIR
from consortium.store.blockstore import BlockStore
from consortium.store.objects import put_bytes
from consortium.zk.proof import EvalProof, with_claims
from tests.cli_support import cli_line
from tests.inprocess_cluster import cluster, drive, run_config, start

pytestmark = pytest.mark.slow  # a run, a circuit's keys and one proof: about a minute


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("zkcli")
    out: list[Path] = []

    async def go() -> None:
        nodes, net, clock = await cluster(root / "c", 3, 5)
        try:
            await start(nodes, run_config(2, 0).model_copy(update={"model": "logreg"}).pinned())
            await drive(nodes, net, clock)
            out.append(nodes[1].dir)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())
    yield out[0]


@pytest.fixture(scope="module")
def proved(folder: Path) -> str:
    code, text = cli_line("zk", "prove", str(folder), "--round", "1", "--sample", "2", "--test-srs")
    assert code == 0, text
    assert "committed" in text and "TEST ONLY" in text
    assert re.search(r"\d of 2 sampled records correct .*95% Wilson interval", text), text
    cid = re.search(r"\b(baf[a-z2-7]+)\b", text)
    assert cid, text
    return cid.group(1)


def test_a_node_proves_and_anyone_with_the_ledger_verifies(folder: Path, proved: str) -> None:
    code, text = cli_line("zk", "verify", str(folder), proved, "--test-srs")
    assert code == 0, text
    assert text.startswith(f"OK: proof {proved} of model") and "round 1 of run" in text
    assert "TEST ONLY" in text


def test_a_proof_with_another_accuracy_is_refused_by_name(folder: Path, proved: str) -> None:
    store = BlockStore(folder / STORE_DIR)
    from consortium.store.objects import get_bytes

    proof = EvalProof.from_bytes(get_bytes(store, proved))
    c = proof.claims
    lie = with_claims(proof, correct=(c.correct + 1) % (c.s + 1))
    cid = put_bytes(store, lie.to_bytes())
    code, text = cli_line("zk", "verify", str(folder), str(cid), "--test-srs")
    assert code == 1 and "accuracy-mismatch" in text, text


def test_bad_input_is_one_line(folder: Path) -> None:
    # The last round has no later beacon yet.
    code, text = cli_line("zk", "prove", str(folder), "--round", "2", "--sample", "2", "--test-srs")
    assert code == 1 and "round 3" in text and "has not committed yet" in text, text
    code, text = cli_line("zk", "prove", str(folder), "--round", "1", "--sample", "2")
    assert code == 2 and "--test-srs" in text, text
    code, text = cli_line(
        "zk", "prove", str(folder), "--round", "1", "--srs", str(folder / "nope"),
        "--srs-sha256", "0" * 64,
    )  # fmt: skip
    assert code == 1 and "srs-missing" in text, text
    cid = put_bytes(BlockStore(folder / STORE_DIR), b"not a proof")
    code, text = cli_line("zk", "verify", str(folder), str(cid), "--test-srs")
    assert code == 1 and "proof-malformed" in text, text


def test_withdrawn_records_are_left_out_and_counted(folder: Path, proved: str) -> None:
    """The record at the first position the beacon draws has its consent erased: the sample
    skips it and the claims list it; the proof still verifies (the skip is part of the draw)."""
    from consortium.consent import erase_subject
    from consortium.consent.registry import ConsentRegistry
    from consortium.core.layout import CONSENT_FILE
    from consortium.node.models import find_round
    from consortium.node.proofs import SrsChoice, prove_round, sample_beacon
    from consortium.store.objects import get_bytes
    from consortium.zk.testdata import sample_indices

    size = EvalProof.from_bytes(get_bytes(BlockStore(folder / STORE_DIR), proved)).claims
    beacon = sample_beacon(folder, find_round(folder, 1).record)
    first = sample_indices(beacon, size.testdata_size, 2).indices[0]  # test ids are positions
    with ConsentRegistry(folder / CONSENT_FILE) as registry:
        subjects = {e.record_id: e.subject for e in registry.history()}
        subject = subjects.get(str(first), f"subject-test-{first}")
        if str(first) not in subjects:
            registry.grant(subject, [first], ["research"], at=10.0)
        erase_subject(registry, subject, at=11.0)
    done = prove_round(folder, 1, srs=SrsChoice(test=True), s=2)
    assert first in done.claims.withdrawn and first not in done.claims.indices
    code, text = cli_line("zk", "verify", str(folder), done.cid, "--test-srs")
    assert code == 0 and f"withdrawn and skipped: {len(done.claims.withdrawn)}" in text, text


def test_verify_onchain_checks_the_proof_on_the_embedded_chain(folder: Path, proved: str) -> None:
    from consortium.zk.errors import ZkError
    from consortium.zk.evm import find_solcjs

    try:
        find_solcjs()
    except ZkError:
        pytest.skip("npm solc not installed: make solcjs (npm install solc@0.8.37 in .tmp/solcjs)")
    code, text = cli_line("zk", "verify", str(folder), proved, "--test-srs", "--onchain")
    assert code == 0, text
    assert "OK on chain (embedded py-evm): EvalProofCheck 0x" in text and "TEST ONLY" in text

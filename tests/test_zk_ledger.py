"""Proofs of evaluation on the ledger (issue 18, slice 2), end to end: three real in-process nodes
train logistic regression on digits for 4 rounds with prove_every = 2, s = 2 and one TEST ONLY
SRS; each commits to its test data in round 1's record, proves round 2's model (sampled from
round 3's beacon) in its proof queue, and round 4's record lists the three proofs, which every
voter verified before cosigning and `audit` re-verifies.

Training waits for the node's proof queue to be idle (a slow trainer), so which record lists a
proof does not depend on how fast the machine proves: the run is deterministic."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consortium.audit.auditor import audit
from consortium.core.layout import NODE_CONFIG_FILE
from consortium.learning.task import load_data
from consortium.node.config import RunConfig, ZkConfig
from consortium.node.evaluations import with_proofs, zk_settings
from consortium.node.learner import Learner
from consortium.node.node import Node, run_records
from consortium.protocol.record import RoundRecord
from consortium.zk.circuit import settings_logrows
from consortium.zk.srs import local_test_srs
from tests.inprocess_cluster import cluster, drive, run_config, start

pytestmark = pytest.mark.slow  # keys, 3 commitments, 3 proofs, 3 x 3 checks: about a minute


def _base() -> RunConfig:
    return run_config(4, 0).model_copy(update={"model": "logreg"}).pinned()


def test_run_ids_without_proofs_are_unchanged() -> None:
    run = _base()
    assert not {"prove_every", "proof_sample", "srs_sha256", "srs_test_only",
                "zk_settings_sha256"} & set(run.body())  # fmt: skip
    # The id of a run from before these fields (its body hashed as it was then).
    from consortium.core.encoding import encode

    old = {k: v for k, v in run.model_dump().items() if k in run.body()}
    assert run.run_id() == hashlib.sha256(encode(old)).hexdigest()[:16]
    on = run.model_copy(update={"prove_every": 2, "srs_sha256": "a" * 64,
                                "zk_settings_sha256": "b" * 64})  # fmt: skip
    assert on.run_id() != run.run_id() and on.body()["prove_every"] == 2


@dataclass
class Ran:
    dirs: list[Path]
    names: list[str]
    records: list[RoundRecord]
    run: RunConfig


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
            out.append(
                Ran([n.dir for n in nodes], [n.name for n in nodes],
                    run_records(nodes[0].ledger), run)
            )  # fmt: skip
        finally:
            for n in nodes:
                await n.stop()

    Learner.train = slow_train  # type: ignore[method-assign]
    try:
        asyncio.run(go())
    finally:
        Learner.train = real_train  # type: ignore[method-assign]
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


def test_audit_re_verifies_every_proof(ran: Ran) -> None:
    report = audit(ran.dirs[1])
    assert len(report.evaluations) == 3
    lines = [ev.line() for ev in report.evaluations]
    assert all("round 2, s = 2" in line and "Wilson" in line and "TEST ONLY" in line
               for line in lines), lines  # fmt: skip


def test_settings_pin_is_reproducible(ran: Ran) -> None:
    """Every member calibrates the same settings bytes from the run (the run's seed)."""
    run = ran.run
    assert run.zk_settings_sha256 and run.srs_test_only
    assert json.loads(json.dumps(run.body()))["prove_every"] == 2

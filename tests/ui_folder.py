"""A real run folder for the report and dashboard tests: three in-process nodes (consent, DP-SGD
at record level, SecAgg+, anchoring every round on each node's embedded chain), and a data
subject's receipt from node0's registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consortium.consent import ConsentRegistry, receipt_from_registry
from consortium.core.genesis import Purpose
from consortium.core.identity import PublicIdentity
from consortium.core.layout import CONSENT_FILE
from tests.inprocess_cluster import cluster, drive, run_config, start

PURPOSE = Purpose(
    "research",
    8.0,
    1e-5,
    ("digit images",),
    ("the consortium's members",),
    "",  # left undeclared: the report says so
)
DP = {"unit": "record", "noise_multiplier": 1.5, "clip_norm": 1.0}
ROUNDS = 2


#: node0's data subject who withdraws before the run: their receipt proves "not used".
WITHDRAWN = "subject-00-00001"


def make_run_folder(root: Path) -> Path:
    """`root` holding node0..node2 after a finished run of ROUNDS rounds; returns `root`."""

    async def go() -> None:
        nodes, net, clock = await cluster(root, 3, 91, purpose=PURPOSE)
        with ConsentRegistry(root / "node0" / CONSENT_FILE) as reg:
            reg.withdraw_many([WITHDRAWN], at=clock.now - 1)
        try:
            await start(nodes, run_config(ROUNDS, 0, anchor_every=1, secure="secagg+", privacy=DP))
            await drive(nodes, net, clock)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())
    return root


def write_receipt(node: Path, out: Path, subject: str = "subject-00-00000") -> str:
    """The receipt of `subject` (default: one whose record was used) from node's registry,
    written to `out`; returns its text."""
    node_id = PublicIdentity.load(node / "node.pub").node_id
    with ConsentRegistry(node / CONSENT_FILE) as reg:
        text = receipt_from_registry(reg, subject, node_id).dumps()
    out.write_text(text)
    return text

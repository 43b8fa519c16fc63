"""A writer killed with SIGKILL mid-append leaves a consistent ledger (no half entry)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import Ledger, make_record, merkle

WRITER = r"""
import sys
from consortium.ledger import Ledger, Entry
led = Ledger.open(sys.argv[1])
template = led.entry(1)
i = 0
while True:
    # Batches of varying size so the kill lands inside multi-row transactions.
    led.append_many([template] * (1 + i % 50), verify=False)
    if i == 0:
        print("appending", flush=True)  # one batch is committed: the ledger has grown
    i += 1
"""


def test_sigkill_mid_append_leaves_consistent_ledger(tmp_path: Path) -> None:
    member = NodeIdentity.generate("solo")
    genesis = Genesis.ceremony("crash", [member], [Purpose("p")], 1)
    path = tmp_path / "ledger.db"
    with Ledger.create(path, genesis) as led:
        led.append(make_record(member, "record", {"payload": "x" * 200}, 1, genesis))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(3)
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"appending"  # waits as long as it takes
        time.sleep(rng.uniform(0.0, 0.5))  # then a seeded while: the kill lands anywhere
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with Ledger.open(path) as led:
            assert led.size > 2
            datas = [d for _, d in led.raw_entries()]
            assert len(datas) == led.size
            recomputed = merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in datas])
            assert recomputed == led.root()
            assert led.fsck() == recomputed
            led.append(make_record(member, "record", {"after": round_}, 2, genesis))
            assert led.fsck() == led.root()

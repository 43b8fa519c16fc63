"""One writer per node folder: a second node on it is refused by name; readers still work."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.audit import audit
from consortium.core.errors import FolderLocked
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LOCK_FILE
from consortium.node.config import load_node_config
from consortium.node.lock import FolderLock
from consortium.node.node import Node
from consortium.node.sim import Cluster, create_consortium
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

HOLDER = r"""
import sys
from consortium.node.lock import FolderLock
lock = FolderLock.acquire(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin (or kills us)
"""


def _node(d: Path, net: InProcessNetwork) -> Node:
    ident = NodeIdentity.load(d)
    return Node(d, ident, InProcessTransport(net, ident.node_id), load_node_config(d))


def test_second_node_object_is_refused_and_readers_still_work(tmp_path: Path) -> None:
    (d,) = create_consortium(tmp_path, 1, seed=1, consent=False)

    async def go() -> None:
        net = InProcessNetwork()
        first = _node(d, net)
        await first.start()
        try:
            # flock belongs to the open file description: a second open in this process conflicts.
            with pytest.raises(FolderLocked, match=rf"{d} is in use .* \(pid {os.getpid()}\)"):
                _node(d, InProcessNetwork())
            # A reader needs no lock: the auditor checks the folder while the node runs.
            assert audit(d, workers=1).entries == first.ledger.size
        finally:
            await first.stop()
        again = _node(d, net)  # stopping released the lock
        await again.stop()

    asyncio.run(go())


def test_lock_names_the_holding_process_and_dies_with_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(FolderLocked, match=rf"\(pid {holder.pid}\)"):
            FolderLock.acquire(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no chance to clean up; the kernel drops the flock
        holder.wait()
    lock = FolderLock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.release()
    assert not lock.held


@pytest.mark.slow
def test_second_node_start_process_is_refused_with_one_line(tmp_path: Path) -> None:
    """Two real `consortium node start` processes on one folder: the second exits at once with
    one error line naming the folder and the first one's pid."""
    dirs = create_consortium(tmp_path, 1, seed=2, consent=False)
    cluster = Cluster(dirs)
    cluster.start(0)
    try:
        cluster.wait_ready()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        second = subprocess.run(
            [sys.executable, "-m", "consortium.cli.app", "node", "start", "--dir", str(dirs[0])],
            capture_output=True,
            env=env,
            timeout=120,
        )
        lines = second.stderr.decode().strip().splitlines()
        assert second.returncode == 1, second.stderr.decode()
        first_pid = cluster.procs[0].pid
        assert len(lines) == 1 and f"(pid {first_pid})" in lines[0], lines
        assert lines[0].startswith(f"error: {dirs[0]} is in use by another node process")
        assert cluster.alive() == [0]  # the first node is untouched
    finally:
        cluster.stop_all()

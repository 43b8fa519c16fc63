"""A zygote for tests/test_catchup_crash.py: runs one node's catch-up in a process that can be
SIGKILLed at a chosen point, without paying the node's imports (torch: seconds) per process.

It imports the node once, then, for each request on stdin, forks a child that runs what a
starting node runs before it resumes (`Node.recover`: repair the store, then catch up) for the
node folder `victim`, against the peer folders `peers` served over the in-process transport in
the same child. The child counts the kill points it passes (`Points`); at point `kill_at` it
SIGKILLs itself with os.kill: nothing after that line runs (no finally, no atexit, no flush), as
when a node is killed from outside.

Protocol, one JSON object a line:
  stdin:  {"victim": DIR, "peers": [DIR, ...], "kill_at": K or null, "out": FILE}
  stdout: {"signal": N} if the child died of a signal, else {"code": N}
A child that finishes writes {"points": [name, ...], "appended": N} to FILE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import consortium.store.blockstore as blockstore
from consortium.core.identity import NodeIdentity
from consortium.node.node import Node
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport


class Points:
    """Named kill points around every side effect of the victim's catch-up."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.passed: list[str] = []

    def __call__(self, name: str) -> None:
        if len(self.passed) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.passed.append(name)

    def install(self, node: Node) -> None:
        """Wrap the victim's requests, block writes and ledger writes (instance attributes, so
        the peers served in this process are untouched)."""
        point = self
        request = node.transport.request

        async def traced_request(peer: str, method: str, payload: bytes, timeout: float) -> bytes:
            point(f"before request {method}")
            reply = await request(peer, method, payload, timeout)
            point(f"after request {method}")
            return reply

        node.transport.request = traced_request  # type: ignore[method-assign]

        put_block = node.store.put_block

        def traced_put_block(data: bytes, codec: str = "raw") -> Any:
            point("before block write")
            cid = put_block(data, codec)
            point("after block write")
            return cid

        node.store.put_block = traced_put_block  # type: ignore[method-assign]

        # Only the victim writes blocks in this process: a kill half-way through a block's
        # write leaves its temp file behind, as a kill inside the real write would.
        write = blockstore.atomic_write

        def traced_write(path: Path, data: bytes, mode: int = 0o644, **kw: Any) -> None:
            def chunks() -> Iterable[bytes]:
                yield data[: len(data) // 2]
                point("half a block written")
                yield data[len(data) // 2 :]

            write(path, chunks(), mode, **kw)

        blockstore.atomic_write = traced_write  # type: ignore[assignment]

        insert: Callable[..., int] = node.ledger._insert

        def traced_insert(datas: Any) -> int:
            point("in the append transaction, before its rows")
            first = insert(datas)
            point("in the append transaction, rows written, not committed")
            return first

        node.ledger._insert = traced_insert  # type: ignore[method-assign]

        append_many: Callable[..., int] = node.ledger.append_many

        def traced_append_many(*args: Any, **kw: Any) -> int:
            point("before the append transaction")
            first = append_many(*args, **kw)
            point("after the append transaction")
            return first

        node.ledger.append_many = traced_append_many  # type: ignore[method-assign]


async def _recover(victim: Path, peers: list[Path], points: Points) -> int:
    net = InProcessNetwork()
    for d in peers:
        ident = NodeIdentity.load(d)
        peer = Node(d, ident, InProcessTransport(net, ident.node_id))
        await peer.transport.start(peer._handle)
    ident = NodeIdentity.load(victim)
    node = Node(victim, ident, InProcessTransport(net, ident.node_id))
    points.install(node)
    await node.transport.start(node._handle)
    return await node.recover()


def _child(cmd: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="child: %(message)s")
    points = Points(cmd["kill_at"])
    appended = asyncio.run(_recover(Path(cmd["victim"]), [Path(p) for p in cmd["peers"]], points))
    Path(cmd["out"]).write_text(json.dumps({"points": points.passed, "appended": appended}))


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(cmd)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            reply = {"signal": os.WTERMSIG(status)}
        else:
            reply = {"code": os.WEXITSTATUS(status)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

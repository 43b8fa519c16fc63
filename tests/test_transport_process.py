"""Two nodes as separate OS processes talking over gRPC with mutual TLS.

Run as a script, this file is the child node: it loads its identity and the member list, listens
on 127.0.0.1:0, prints its address, and serves until a peer calls `stop`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.core.errors import LedgerError, PeerRefused
from consortium.core.identity import NodeIdentity, PublicIdentity
from consortium.transport import GrpcTransport


async def child(identity_dir: Path, members_file: Path) -> None:
    me = NodeIdentity.load(identity_dir)
    members = [PublicIdentity.from_json(m) for m in json.loads(members_file.read_text())]
    transport = GrpcTransport(me, members, "127.0.0.1:0")
    done = asyncio.Event()

    async def handle(sender: str, method: str, payload: bytes) -> bytes:
        if method == "stop":
            done.set()
            return b"bye"
        if method == "call-back":  # payload: the caller's address; ask it for a pong
            transport.set_address(sender, payload.decode())
            return await transport.request(sender, "pong", me.node_id.encode(), timeout=10)
        if method == "fail":
            raise LedgerError("refused by the child")
        return f"{sender}|{method}|".encode() + payload

    await transport.start(handle)
    print(transport.address, flush=True)
    await done.wait()
    await asyncio.sleep(0.1)  # let the reply to `stop` go out
    await transport.stop()


def test_two_processes_over_grpc_mtls(tmp_path: Path) -> None:
    parent_id = NodeIdentity.generate("parent", "127.0.0.1:0")
    child_id = NodeIdentity.generate("child", "127.0.0.1:0")
    child_id.save(tmp_path / "child")
    members_file = tmp_path / "members.json"
    members_file.write_text(json.dumps([parent_id.public().to_json(), child_id.public().to_json()]))
    proc = subprocess.Popen(
        [sys.executable, __file__, str(tmp_path / "child"), str(members_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        child_address = proc.stdout.readline().strip()
        assert child_address.startswith("127.0.0.1:"), child_address

        async def main() -> None:
            pongs: list[tuple[str, bytes]] = []

            async def handle(sender: str, method: str, payload: bytes) -> bytes:
                pongs.append((sender, payload))
                return b"pong from parent"

            members = [parent_id.public(), child_id.public()]
            parent = GrpcTransport(parent_id, members, "127.0.0.1:0")
            parent.set_address(child_id.node_id, child_address)
            await parent.start(handle)
            try:
                reply = await parent.request(child_id.node_id, "hello", b"x" * 3_000_000)
                assert reply == f"{parent_id.node_id}|hello|".encode() + b"x" * 3_000_000
                back = await parent.request(child_id.node_id, "call-back", parent.address.encode())
                assert back == b"pong from parent"
                assert pongs == [(child_id.node_id, child_id.node_id.encode())]
                with pytest.raises(PeerRefused, match="refused by the child"):
                    await parent.request(child_id.node_id, "fail", b"")
                assert await parent.request(child_id.node_id, "stop", b"") == b"bye"
            finally:
                await parent.stop()

        asyncio.run(main())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(child(Path(sys.argv[1]), Path(sys.argv[2])))

"""Run one node process over gRPC until it is stopped (`consortium node start`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import torch

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConfigError, PeerRefused, TransportError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import NodeIdentity
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.transport.grpc_transport import GrpcTransport


def make_transport(directory: Path, identity: NodeIdentity, listen: bool = True) -> GrpcTransport:
    cfg = load_node_config(directory)
    genesis = Genesis.load(directory / GENESIS_FILE)
    return GrpcTransport(
        identity,
        genesis.members,
        (cfg.listen or identity.address) if listen else None,
        addresses=cfg.peers,
    )


async def serve(directory: Path, passphrase: str | None, exit_when_finished: bool) -> None:
    # One torch thread per node process: several nodes share a few cores, and oversubscribed
    # threads made local training ~10x slower on a 2-core machine.
    torch.set_num_threads(1)
    identity = NodeIdentity.load(directory, passphrase)
    node = Node(directory, identity, make_transport(directory, identity))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    logging.getLogger("consortium.node").info("%s: listening as %s", node.name, identity.node_id)
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if exit_when_finished:
        waiters.append(asyncio.create_task(_run_finished(node)))
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if waiters[-1] in done and exit_when_finished:
        await asyncio.sleep(2.0)  # linger so slower peers can still fetch the last commit
    for w in waiters:
        w.cancel()
    await node.stop()


async def _run_finished(node: Node) -> None:
    """Until a run finishes that was not already finished when this process started."""
    already = node.run.run_id() if node.run is not None and node.finished.is_set() else None
    while True:
        await node.finished.wait()
        if node.run is not None and node.run.run_id() != already:
            return
        await asyncio.sleep(0.2)


async def start_run(directory: Path, passphrase: str | None, run: RunConfig) -> dict[str, Any]:
    """Ask this member's running node to propose `run` to every member; return its report:
    {"run", "started", "accepted": [names], "refused": {name: why}, "unreachable": {...}}."""
    genesis = Genesis.load(directory / GENESIS_FILE)
    genesis.purpose(run.purpose)
    return await _ask_own_node(directory, passphrase, "propose-run", encode(run.body()))


async def stop_run(directory: Path, passphrase: str | None, reason: str) -> dict[str, Any]:
    """Ask this member's running node to propose stopping the current run (a run-stop entry a
    quorum must cosign, as a start); return the report as `start_run` does ("agreed")."""
    return await _ask_own_node(directory, passphrase, "propose-stop", encode(reason))


async def _ask_own_node(
    directory: Path, passphrase: str | None, method: str, payload: bytes
) -> dict[str, Any]:
    identity = NodeIdentity.load(directory, passphrase)
    transport = make_transport(directory, identity, listen=False)
    try:
        raw = await transport.request(identity.node_id, method, payload, timeout=60.0)
    except PeerRefused as exc:  # it runs, and said no (no run in progress, say)
        raise ConfigError(f"this member's node refused: {exc}") from exc
    except TransportError as exc:
        raise ConfigError(
            f"this member's node did not take the proposal ({exc}): is `consortium node start "
            f"--dir {directory}` running?"
        ) from exc
    finally:
        await transport.stop()
    report = decode(raw)
    if not isinstance(report, dict):
        raise ConfigError("malformed answer from this member's node")
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """One line per member that did not accept a run proposal."""
    out = [f"refused by {name}: {why}" for name, why in sorted(report["refused"].items())]
    out += [f"unreachable: {name} ({why})" for name, why in sorted(report["unreachable"].items())]
    return out

"""The Ray backend of `consortium simulate`: many members per Ray actor, one actor per core.

An actor process costs a few hundred MB, so one actor per member does not fit a large
simulation in memory; each `RayHost` actor instead runs a `SimHost` (the real `Node`s of its
share of the member folders on the actor's asyncio loop). Its `RayNetwork` delivers a request
for a member of the same actor in process and sends one for a member of another actor through
Ray: an actor method call (`deliver`) on the host that holds the member, which delivers it
there and returns the reply. Errors cross as (kind, text) pairs and are raised again as the
transport's own `PeerRefused` / `TransportError`, so a node sees exactly the in-process (and
gRPC) error contract. Bytes are counted by the sender's network as in process; `remote_bytes`
says how many of them crossed between actors.

Ray (the `ray` extra) is imported here only; the rest of consortium never needs it. The member
folders must be readable by every actor at the same path: on one machine (the default, a local
Ray started and shut down by the command) they are; joining a cluster with `--address` needs
that path on a shared filesystem.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from consortium.core.errors import ConfigError, PeerRefused, TransportError
from consortium.node.simulate import SEED, Backend, CountingNetwork, SimHost
from consortium.transport.inprocess import InProcessNetwork

#: Headroom over a request's own timeout for the hop through Ray.
HOP_SLACK = 5.0
#: Ray's shared-memory object store: messages over 100 KiB go through it. Small, since nothing
#: is kept in it; Ray's minimum is 75 MiB.
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray backend needs Ray: pip install 'consortium[ray]' (ray==2.55.1)"
        ) from None
    return ray


def reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once a cluster address (HOST:PORT; `auto` and `ray://` are left to Ray) whose
    port does not answer: Ray itself retries for minutes before it gives up."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address must be HOST:PORT (or auto), not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None


#: One request to a member of another actor: (sender, peer, method, payload, timeout).
Request = tuple[str, str, str, bytes, float]


class RayNetwork(CountingNetwork):
    """A CountingNetwork whose members on other actors are reached through Ray.

    Requests for one actor are batched: those made in one turn of this actor's event loop (a
    broadcast makes hundreds at once) go in one actor call (`deliver_many`), whose answer holds
    every reply. One actor call per message left a backlog of more than 10,000 calls at one
    actor at 100 members; at 1000 a broadcast alone is 999 messages."""

    def __init__(self) -> None:
        super().__init__(seed=SEED)
        self.routes: dict[str, Any] = {}  # member id -> actor handle of the host holding it
        self.remote_bytes = 0
        self.actor_calls = 0
        #: per actor (by id): the requests waiting for this turn's batch, with their futures.
        self._outbox: dict[int, list[tuple[Request, asyncio.Future[tuple[str, Any]]]]] = {}

    async def _route(
        self, sender: str, peer: str, method: str, payload: bytes, timeout: float
    ) -> bytes:
        if peer in self._handlers:
            return await super()._route(sender, peer, method, payload, timeout)
        actor = self.routes.get(peer)
        if actor is None:
            raise TransportError(f"{peer} is unreachable")
        self.remote_bytes += len(payload)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, Any]] = loop.create_future()
        queue = self._outbox.setdefault(id(actor), [])
        if not queue:  # the first of this turn: send the batch once the turn's requests are in
            loop.call_soon(self._flush, actor)
        queue.append(((sender, peer, method, payload, timeout), future))
        try:
            async with asyncio.timeout(timeout + HOP_SLACK):
                kind, value = await asyncio.shield(future)
        except TimeoutError:
            raise TransportError(f"{peer} did not answer {method!r} within {timeout:g} s") from None
        except Exception as exc:  # the actor died or Ray failed: the peer is unreachable
            raise TransportError(f"{peer} is unreachable: {type(exc).__name__}") from None
        if kind == "ok":
            self.remote_bytes += len(value)
            return bytes(value)
        if kind == "refused":
            raise PeerRefused(value)
        raise TransportError(value)

    def _flush(self, actor: Any) -> None:
        batch = self._outbox.pop(id(actor), [])
        if batch:
            self.actor_calls += 1
            asyncio.get_running_loop().create_task(self._send_batch(actor, batch))

    async def _send_batch(
        self, actor: Any, batch: list[tuple[Request, asyncio.Future[tuple[str, Any]]]]
    ) -> None:
        try:
            replies = await actor.deliver_many.remote([request for request, _ in batch])
        except Exception as exc:  # the actor died or Ray failed: every peer of it is unreachable
            for _, future in batch:
                if not future.done():
                    future.set_exception(TransportError(f"unreachable: {type(exc).__name__}"))
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)


class RayHost:
    """A Ray actor's body: a SimHost over a RayNetwork (`RayBackend` makes it remote)."""

    def __init__(self, dirs: list[str]) -> None:
        self.network = RayNetwork()
        self.host = SimHost([Path(d) for d in dirs], self.network)

    def member_ids(self) -> list[str]:
        return self.host.member_ids()

    def set_routes(self, routes: dict[str, Any]) -> None:
        self.network.routes = routes

    async def deliver(
        self, sender: str, peer: str, method: str, payload: bytes, timeout: float
    ) -> tuple[str, Any]:
        """A request from a member on another actor to `peer` here: ("ok", reply) or the
        error's kind and text."""
        try:
            reply = await InProcessNetwork._deliver(
                self.network, sender, peer, method, payload, timeout
            )
        except PeerRefused as exc:
            return "refused", str(exc)
        except TransportError as exc:
            return "error", str(exc)
        return "ok", reply

    async def deliver_many(self, requests: list[Request]) -> list[tuple[str, Any]]:
        """A batch of requests from members on another actor (`RayNetwork`), delivered here
        concurrently; each reply as `deliver` gives it, in order."""
        return list(await asyncio.gather(*(self.deliver(*r) for r in requests)))

    async def start(self) -> None:
        await self.host.start()

    async def propose(self, run: dict[str, Any]) -> dict[str, Any]:
        return await self.host.propose(run)

    def rounds_done(self) -> int:
        return self.host.rounds_done()

    def finished(self) -> bool:
        return self.host.finished()

    def latencies(self) -> dict[int, float]:
        return self.host.latencies()

    def report(self) -> Any:
        return self.host.report()

    async def stop(self) -> None:
        await self.host.stop()


class RayBackend(Backend):
    """One RayHost actor per part of the members; starts a local Ray (one CPU per actor) or
    joins the cluster at `address`, and always shuts its own connection down on close."""

    def __init__(self, actors: int, address: str | None = None) -> None:
        self.ray = import_ray()
        self.address = address
        self.actors = actors
        self._handles: list[Any] = []

    async def open(self, dirs: list[list[Path]]) -> None:
        ray = self.ray
        # Ray 2.55 warns at every start that a later version will stop overriding the
        # accelerator variables; we use no accelerator, so take the future behaviour now.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if self.address:
            reachable(self.address)
            try:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
        else:
            ray.init(
                address="local",  # a new local Ray, even where `ray start` left an address
                num_cpus=len(dirs),
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                logging_level="ERROR",
                log_to_driver=False,
            )
        actor = ray.remote(num_cpus=1, max_concurrency=100_000)(RayHost)
        self._handles = [actor.remote([str(d) for d in part]) for part in dirs]
        self.hosts = len(self._handles)
        ids = await asyncio.gather(*(h.member_ids.remote() for h in self._handles))
        routes = {m: h for h, members in zip(self._handles, ids, strict=True) for m in members}
        await asyncio.gather(*(h.set_routes.remote(routes) for h in self._handles))

    async def call(self, i: int, method: str, *args: Any) -> Any:
        return await getattr(self._handles[i], method).remote(*args)

    async def close(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            return
        try:
            if self._handles:
                stops = [h.stop.remote() for h in self._handles]
                try:
                    async with asyncio.timeout(60):
                        await asyncio.gather(*stops, return_exceptions=True)
                except TimeoutError:
                    pass
            for h in self._handles:
                ray.kill(h)
        finally:
            self._handles = []
            ray.shutdown()

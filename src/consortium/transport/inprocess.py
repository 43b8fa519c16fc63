"""In-process transport: nodes in one asyncio loop talk through a hub, with fault injection.

Used by tests and the simulator. It keeps the error contract and size limits of the gRPC
transport, and lets a test cut a node off (`disconnect`: requests to or from it fail at once, like
a refused connection), lose messages on a link (`drop_link`: the request is lost and the caller
waits out its timeout, like a silent network), or slow links down (`latency`). Random drops use a
seeded generator so a simulation is reproducible.
"""

from __future__ import annotations

import asyncio
import random

from consortium.core.errors import ConsortiumError, PeerRefused, TransportError
from consortium.transport.base import (
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    Handler,
    check_method,
    check_size,
    error_text,
)


class InProcessNetwork:
    """A hub connecting InProcessTransports, with switches for faults."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        seed: int = 0,
    ) -> None:
        self.latency = latency
        self.max_message_bytes = max_message_bytes
        self._rng = random.Random(seed)
        self._handlers: dict[str, Handler] = {}
        self._down: set[str] = set()
        self._drops: dict[tuple[str, str], float] = {}
        self._link_latency: dict[tuple[str, str], float] = {}
        #: Requests delivered to a handler, in order: (sender, receiver, method).
        self.delivered: list[tuple[str, str, str]] = []

    # -- fault injection -------------------------------------------------------------------------

    def disconnect(self, node_id: str) -> None:
        """Cut `node_id` off: requests to or from it fail as unreachable."""
        self._down.add(node_id)

    def reconnect(self, node_id: str) -> None:
        self._down.discard(node_id)

    def drop_link(self, src: str, dst: str, probability: float = 1.0) -> None:
        """Lose requests from `src` to `dst` with `probability` (the caller times out)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("drop probability must be between 0 and 1")
        self._drops[(src, dst)] = probability

    def restore_link(self, src: str, dst: str) -> None:
        self._drops.pop((src, dst), None)

    def set_latency(self, src: str, dst: str, seconds: float) -> None:
        """One-way delay for requests from `src` to `dst` (replies travel back with it too)."""
        self._link_latency[(src, dst)] = seconds

    def is_up(self, node_id: str) -> bool:
        return node_id in self._handlers and node_id not in self._down

    # -- used by InProcessTransport --------------------------------------------------------------

    def _attach(self, node_id: str, handler: Handler) -> None:
        if node_id in self._handlers:
            raise TransportError(f"{node_id} is already attached to this network")
        self._handlers[node_id] = handler

    def _detach(self, node_id: str) -> None:
        self._handlers.pop(node_id, None)

    async def _deliver(
        self, sender: str, peer: str, method: str, payload: bytes, timeout: float
    ) -> bytes:
        if sender in self._down:
            raise TransportError(f"{sender} is not connected to the network")
        delay = self._link_latency.get((sender, peer), self.latency)
        try:
            async with asyncio.timeout(timeout):
                if delay:
                    await asyncio.sleep(delay)
                handler = self._handlers.get(peer)
                if handler is None or peer in self._down:
                    raise TransportError(f"{peer} is unreachable")
                lost = self._drops.get((sender, peer), 0.0)
                if lost and (lost >= 1.0 or self._rng.random() < lost):
                    await asyncio.Event().wait()  # the message vanished: wait for the timeout
                self.delivered.append((sender, peer, method))
                reply = await self._call(handler, sender, peer, method, payload)
                if delay:
                    await asyncio.sleep(delay)
        except TimeoutError:
            raise TransportError(f"{peer} did not answer {method!r} within {timeout:g} s") from None
        if peer in self._down or sender in self._down:
            raise TransportError(f"connection to {peer} lost during {method!r}")
        return reply

    async def _call(
        self, handler: Handler, sender: str, peer: str, method: str, payload: bytes
    ) -> bytes:
        limit = self.max_message_bytes
        if len(payload) > limit:
            raise PeerRefused(f"{peer} refused {method!r}: request is over the {limit}-byte limit")
        try:
            reply = bytes(await handler(sender, method, payload))
        except ConsortiumError as exc:
            raise PeerRefused(f"{peer} refused {method!r}: {error_text(exc)}") from None
        except Exception as exc:  # a handler bug stays on the server side, as over gRPC
            raise TransportError(f"{peer}: internal error handling {method!r}") from exc
        if len(reply) > limit:
            raise PeerRefused(
                f"{peer} refused {method!r}: reply of {len(reply)} bytes is over the limit"
            )
        return reply


class InProcessTransport:
    """One node's endpoint on an InProcessNetwork."""

    def __init__(
        self,
        network: InProcessNetwork,
        node_id: str,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.network = network
        self.node_id = node_id
        self.max_message_bytes = max_message_bytes
        self._started = False

    async def start(self, handler: Handler) -> None:
        if self._started:
            raise TransportError("transport already started")
        self.network._attach(self.node_id, handler)
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self.network._detach(self.node_id)
            self._started = False

    async def request(
        self, peer: str, method: str, payload: bytes, timeout: float = DEFAULT_TIMEOUT
    ) -> bytes:
        check_method(method)
        check_size(len(payload), self.max_message_bytes, "request")
        # Copy: the receiver must not share a mutable buffer with the sender.
        return await self.network._deliver(self.node_id, peer, method, bytes(payload), timeout)

"""The Ray backend's batching (issue 15): the requests one actor makes for members of another in
one event-loop turn travel in one actor call, and each caller gets its own reply or error. The
remote actor is a stand-in here (no Ray); `tests/test_simulate.py` runs the real Ray backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consortium.core.errors import PeerRefused, TransportError
from consortium.node.ray_host import RayNetwork, Request


class _Remote:
    """What `actor.deliver_many.remote(...)` gives: an awaitable of the replies."""

    def __init__(self, actor: _Actor) -> None:
        self.actor = actor

    def remote(self, requests: list[Request]) -> Any:
        return self.actor.answer(requests)


class _Actor:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[Request]] = []
        self.fail = fail
        self.deliver_many = _Remote(self)

    async def answer(self, requests: list[Request]) -> list[tuple[str, Any]]:
        self.calls.append(requests)
        if self.fail:
            raise RuntimeError("actor died")
        out: list[tuple[str, Any]] = []
        for _, peer, _, payload, _ in requests:
            if peer == "refuser":
                out.append(("refused", "no thanks"))
            else:
                out.append(("ok", payload[::-1]))
        return out


def test_one_turns_requests_to_an_actor_go_in_one_call_and_each_gets_its_reply() -> None:
    async def go() -> None:
        net = RayNetwork()
        actor = _Actor()
        peers = [f"p{i}" for i in range(50)] + ["refuser"]
        net.routes = dict.fromkeys(peers, actor)
        sends = [net._route("me", p, "msg", p.encode(), 5.0) for p in peers]
        replies = await asyncio.gather(*sends, return_exceptions=True)
        assert len(actor.calls) == 1 and len(actor.calls[0]) == 51  # one actor call
        assert replies[:50] == [p.encode()[::-1] for p in peers[:50]]
        assert isinstance(replies[50], PeerRefused)
        # A later turn is a new batch.
        assert await net._route("me", "p1", "msg", b"ab", 5.0) == b"ba"
        assert len(actor.calls) == 2 and net.actor_calls == 2

    asyncio.run(go())


def test_a_failed_batch_makes_each_of_its_peers_unreachable() -> None:
    async def go() -> None:
        net = RayNetwork()
        net.routes = {"a": _Actor(fail=True), "b": _Actor(fail=True)}
        for peer in ("a", "b"):
            with pytest.raises(TransportError, match="unreachable"):
                await net._route("me", peer, "msg", b"x", 5.0)
        with pytest.raises(TransportError, match="nobody is unreachable"):
            await net._route("me", "nobody", "msg", b"x", 5.0)

    asyncio.run(go())

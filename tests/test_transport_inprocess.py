"""InProcessTransport: the same contract as gRPC, plus fault injection."""

from __future__ import annotations

import asyncio

import pytest

from consortium.core.errors import LedgerError, PeerRefused, TransportError
from consortium.transport import InProcessNetwork, InProcessTransport, Transport


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes]] = []

    async def __call__(self, sender: str, method: str, payload: bytes) -> bytes:
        self.calls.append((sender, method, payload))
        if method == "fail":
            raise LedgerError("not a quorum")
        if method == "crash":
            raise RuntimeError("secret internal detail")
        if method == "big-reply":
            return bytes(len(payload) * 2)
        return f"{sender}|{method}|".encode() + payload


async def nodes(
    net: InProcessNetwork, *names: str
) -> tuple[list[InProcessTransport], list[Recorder]]:
    transports, recorders = [], []
    for name in names:
        transport, recorder = InProcessTransport(net, name), Recorder()
        await transport.start(recorder)
        transports.append(transport)
        recorders.append(recorder)
    return transports, recorders


def test_request_reply_and_sender() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        (a, _b), (_, rec_b) = await nodes(net, "a", "b")
        assert isinstance(a, Transport)
        assert await a.request("b", "hello", b"x") == b"a|hello|x"
        assert rec_b.calls == [("a", "hello", b"x")]
        assert net.delivered == [("a", "b", "hello")]
        with pytest.raises(TransportError, match="already started"):
            await a.start(Recorder())

    asyncio.run(main())


def test_size_limits_and_method_names() -> None:
    async def main() -> None:
        net = InProcessNetwork(max_message_bytes=1000)
        (a, _b), (_, rec_b) = await nodes(net, "a", "b")
        small = InProcessTransport(net, "c", max_message_bytes=10)
        with pytest.raises(TransportError, match="over the"):
            await small.request("b", "hello", bytes(11))
        with pytest.raises(PeerRefused, match="limit"):
            await a.request("b", "hello", bytes(1001))  # under a's limit, over the receiver's
        with pytest.raises(PeerRefused, match="reply"):
            await a.request("b", "big-reply", bytes(600))
        for bad in ["", "a b", "é", "x" * 65]:
            with pytest.raises(TransportError, match="invalid method"):
                await a.request("b", bad, b"")
        assert [c[1] for c in rec_b.calls] == ["big-reply"]

    asyncio.run(main())


def test_remote_errors() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        (a, _b), _ = await nodes(net, "a", "b")
        with pytest.raises(PeerRefused, match="not a quorum"):
            await a.request("b", "fail", b"")
        with pytest.raises(TransportError) as info:
            await a.request("b", "crash", b"")
        assert not isinstance(info.value, PeerRefused)
        assert "secret" not in str(info.value)
        with pytest.raises(TransportError, match="unreachable"):
            await a.request("nobody", "hello", b"")

    asyncio.run(main())


def test_disconnect_reconnect_and_stop() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        (a, b), (_, rec_b) = await nodes(net, "a", "b")
        net.disconnect("b")
        assert not net.is_up("b")
        with pytest.raises(TransportError, match="unreachable"):
            await a.request("b", "hello", b"1")
        with pytest.raises(TransportError, match="not connected"):
            await b.request("a", "hello", b"1")
        net.reconnect("b")
        assert await a.request("b", "hello", b"2") == b"a|hello|2"
        await b.stop()
        with pytest.raises(TransportError, match="unreachable"):
            await a.request("b", "hello", b"3")
        await b.start(rec_b)
        assert await a.request("b", "hello", b"4") == b"a|hello|4"
        assert [c[2] for c in rec_b.calls] == [b"2", b"4"]

    asyncio.run(main())


def test_dropped_link_times_out_one_way_only() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        (a, b), (rec_a, rec_b) = await nodes(net, "a", "b")
        net.drop_link("a", "b")
        with pytest.raises(TransportError, match="did not answer"):
            await a.request("b", "hello", b"", timeout=0.05)
        assert rec_b.calls == []
        assert await b.request("a", "hello", b"") == b"b|hello|"
        net.restore_link("a", "b")
        assert await a.request("b", "hello", b"") == b"a|hello|"
        with pytest.raises(ValueError):
            net.drop_link("a", "b", probability=1.5)
        assert len(rec_a.calls) == 1

    asyncio.run(main())


def test_random_drops_are_reproducible() -> None:
    async def outcomes(seed: int) -> list[bool]:
        net = InProcessNetwork(seed=seed)
        (a, _b), _ = await nodes(net, "a", "b")
        net.drop_link("a", "b", probability=0.5)
        result = []
        for i in range(20):
            try:
                await a.request("b", "hello", bytes([i]), timeout=0.01)
                result.append(True)
            except TransportError:
                result.append(False)
        return result

    first = asyncio.run(outcomes(7))
    assert first == asyncio.run(outcomes(7))
    assert any(first) and not all(first)


def test_latency_and_concurrent_delivery() -> None:
    async def main() -> None:
        net = InProcessNetwork(latency=0.01)
        (a, b, _c), _ = await nodes(net, "a", "b", "c")
        net.set_latency("a", "c", 0.0)
        replies = await asyncio.gather(
            a.request("b", "hello", b"1"), a.request("c", "hello", b"2"), b.request("c", "x", b"")
        )
        assert replies == [b"a|hello|1", b"a|hello|2", b"b|x|"]
        net.set_latency("a", "b", 5.0)
        with pytest.raises(TransportError, match="did not answer"):
            await a.request("b", "hello", b"", timeout=0.05)

    asyncio.run(main())

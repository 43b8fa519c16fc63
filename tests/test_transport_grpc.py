"""GrpcTransport: request/reply over real sockets on 127.0.0.1 with mutual TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from consortium.core.errors import (
    ConsortiumError,
    IdentityError,
    LedgerError,
    PeerRefused,
    TransportError,
)
from consortium.core.identity import NodeIdentity, PublicIdentity
from consortium.transport import CHUNK_BYTES, GrpcTransport, Transport

LOCAL = "127.0.0.1:0"


class Recorder:
    """A handler that records its calls and echoes `sender|method|payload`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, sender: str, method: str, payload: bytes) -> bytes:
        self.calls.append((sender, method, len(payload)))
        if method == "fail":
            raise LedgerError("tree head 7 is not signed by a quorum")
        if method == "crash":
            raise RuntimeError("secret internal detail")
        if method == "sleep":
            await asyncio.sleep(10)
        if method == "echo":
            return payload
        return f"{sender}|{method}|".encode() + payload


def ids(*names: str) -> list[NodeIdentity]:
    return [NodeIdentity.generate(name, LOCAL) for name in names]


async def started(
    me: NodeIdentity, members: list[PublicIdentity], handler: Any = None, **kw: Any
) -> GrpcTransport:
    transport = GrpcTransport(me, members, kw.pop("listen", LOCAL), **kw)
    await transport.start(handler or Recorder())
    return transport


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_request_reply_with_sender_identity() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    async def main() -> None:
        rec_a, rec_b = Recorder(), Recorder()
        ta = await started(a, members, rec_a)
        tb = await started(b, members, rec_b)
        try:
            assert isinstance(ta, Transport)
            ta.set_address(b.node_id, tb.address)
            tb.set_address(a.node_id, ta.address)
            assert await ta.request(b.node_id, "hello", b"x") == f"{a.node_id}|hello|x".encode()
            assert await tb.request(a.node_id, "ledger.sync", b"") == (
                f"{b.node_id}|ledger.sync|".encode()
            )
            assert rec_b.calls == [(a.node_id, "hello", 1)]
            assert rec_a.calls == [(b.node_id, "ledger.sync", 0)]
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_large_payload_is_streamed_intact() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]
    payload = os.urandom(5 * 1024 * 1024 + 123)

    async def main() -> None:
        rec = Recorder()
        ta = await started(a, members)
        tb = await started(b, members, rec)
        try:
            ta.set_address(b.node_id, tb.address)
            assert await ta.request(b.node_id, "echo", payload) == payload
            # exactly one chunk's worth goes unary; one byte more is streamed
            edge = os.urandom(CHUNK_BYTES + 1)
            assert await ta.request(b.node_id, "echo", edge) == edge
            assert rec.calls == [(a.node_id, "echo", len(payload)), (a.node_id, "echo", len(edge))]
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_oversized_requests_are_refused() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    async def main() -> None:
        rec = Recorder()
        ta = await started(a, members, max_message_bytes=2 * CHUNK_BYTES)
        tb = await started(b, members, rec, max_message_bytes=2 * CHUNK_BYTES)
        tc = GrpcTransport(a, members, addresses={b.node_id: tb.address})  # default 64 MiB limit
        try:
            ta.set_address(b.node_id, tb.address)
            # refused locally, before sending
            with pytest.raises(TransportError, match="over the"):
                await ta.request(b.node_id, "echo", bytes(2 * CHUNK_BYTES + 1))
            # a sender with a larger limit is refused by the receiver (streamed path)
            with pytest.raises(PeerRefused, match="limit"):
                await tc.request(b.node_id, "echo", bytes(3 * CHUNK_BYTES))
            assert rec.calls == []
            # exactly at the limit is fine
            assert await tc.request(b.node_id, "echo", bytes(2 * CHUNK_BYTES)) == bytes(
                2 * CHUNK_BYTES
            )
        finally:
            await ta.stop()
            await tb.stop()
            await tc.stop()

    run(main)


def test_unary_request_over_a_small_limit_is_refused() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    async def main() -> None:
        rec = Recorder()
        tb = await started(b, members, rec, max_message_bytes=1000)
        ta = GrpcTransport(a, members, addresses={b.node_id: tb.address})
        try:
            with pytest.raises(PeerRefused, match="limit"):
                await ta.request(b.node_id, "echo", bytes(1001))
            assert rec.calls == []
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_non_member_is_refused_at_handshake() -> None:
    b, x = ids("b", "x")

    async def main() -> None:
        rec = Recorder()
        tb = await started(b, [b.public()], rec)
        # x knows b, but b's member list does not contain x
        tx = GrpcTransport(x, [b.public(), x.public()], addresses={b.node_id: tb.address})
        try:
            with pytest.raises(TransportError):
                await tx.request(b.node_id, "hello", b"x", timeout=5)
            assert rec.calls == []
        finally:
            await tb.stop()
            await tx.stop()

    run(main)


def _leaf_signed_by(
    issuer: NodeIdentity, claimed_node_id: str
) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A certificate for `claimed_node_id`, issued by `issuer`'s (self-signed, CA) TLS cert."""
    issuer_cert = x509.load_pem_x509_certificate(issuer.tls_cert_pem.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, claimed_node_id)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(claimed_node_id)]), critical=False)
        .sign(issuer._tls_key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


def _impostor(of: NodeIdentity, issued_by: NodeIdentity) -> NodeIdentity:
    key, cert = _leaf_signed_by(issued_by, of.node_id)
    chain = cert + issued_by.tls_cert_pem
    return NodeIdentity("impostor", Ed25519PrivateKey.generate(), key, chain, LOCAL)


def test_member_cannot_impersonate_another_as_client() -> None:
    """Member m issues itself a cert naming a; b's server accepts the chain but not the sender."""
    a, b, m = ids("a", "b", "m")
    members = [a.public(), b.public(), m.public()]

    async def main() -> None:
        rec = Recorder()
        tb = await started(b, members, rec)
        fake = GrpcTransport(_impostor(a, m), members, addresses={b.node_id: tb.address})
        try:
            with pytest.raises(TransportError):
                await fake.request(b.node_id, "hello", b"x", timeout=5)
            assert rec.calls == []
        finally:
            await tb.stop()
            await fake.stop()

    run(main)


def test_member_cannot_impersonate_another_as_server() -> None:
    """A client dialling a only accepts a's own certificate, not one another member issued."""
    a, b, m = ids("a", "b", "m")
    members = [a.public(), b.public(), m.public()]

    async def main() -> None:
        rec_fake, rec_m = Recorder(), Recorder()
        fake = await started(_impostor(a, m), members, rec_fake)
        tm = await started(m, members, rec_m)
        tb = GrpcTransport(b, members, addresses={a.node_id: fake.address})
        try:
            with pytest.raises(TransportError):
                await tb.request(a.node_id, "hello", b"x", timeout=5)
            tb.set_address(a.node_id, tm.address)  # m's genuine server answering as a
            with pytest.raises(TransportError):
                await tb.request(a.node_id, "hello", b"x", timeout=5)
            assert rec_fake.calls == [] and rec_m.calls == []
        finally:
            await fake.stop()
            await tm.stop()
            await tb.stop()

    run(main)


def test_bad_binding_is_rejected_at_construction() -> None:
    a, b, c = ids("a", "b", "c")
    forged = dataclasses.replace(b.public(), tls_binding=a.public().tls_binding)
    with pytest.raises(IdentityError, match="not bound"):
        GrpcTransport(a, [a.public(), forged])
    # b's identity key with c's TLS certificate
    swapped = dataclasses.replace(b.public(), tls_cert_pem=c.tls_cert_pem)
    with pytest.raises(IdentityError, match="not bound"):
        GrpcTransport(a, [a.public(), swapped])


def test_remote_errors_come_back_without_tracebacks() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    async def main() -> None:
        tb = await started(b, members)
        ta = GrpcTransport(a, members, addresses={b.node_id: tb.address})
        try:
            with pytest.raises(PeerRefused, match="tree head 7 is not signed by a quorum"):
                await ta.request(b.node_id, "fail", b"")
            with pytest.raises(TransportError) as info:
                await ta.request(b.node_id, "crash", b"")
            assert not isinstance(info.value, PeerRefused)
            assert "secret" not in str(info.value) and "Traceback" not in str(info.value)
            assert "internal error" in str(info.value)
            # the connection still works afterwards
            assert await ta.request(b.node_id, "echo", b"ok") == b"ok"
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_invalid_method_and_unknown_peer() -> None:
    a, b, x = ids("a", "b", "x")
    members = [a.public(), b.public()]

    async def main() -> None:
        ta = GrpcTransport(a, members, addresses={b.node_id: "127.0.0.1:1"})
        for bad in ["", "héllo", "a b", "x" * 65, "-lead"]:
            with pytest.raises(TransportError, match="invalid method"):
                await ta.request(b.node_id, bad, b"")
        with pytest.raises(TransportError, match="not a member"):
            await ta.request(x.node_id, "hello", b"")
        await ta.stop()

    run(main)


def test_unreachable_peer_and_timeout() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    async def main() -> None:
        ta = GrpcTransport(a, members, addresses={b.node_id: f"127.0.0.1:{free_port()}"})
        with pytest.raises(TransportError, match=r"unreachable|did not answer"):
            await ta.request(b.node_id, "hello", b"", timeout=3)
        tb = await started(b, members)
        ta.set_address(b.node_id, tb.address)
        try:
            with pytest.raises(TransportError, match="did not answer"):
                await ta.request(b.node_id, "sleep", b"", timeout=0.3)
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_reconnects_after_server_restart_on_same_port() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    async def main() -> None:
        rec1, rec2 = Recorder(), Recorder()
        tb = await started(b, members, rec1)
        address = tb.address
        ta = GrpcTransport(a, members, addresses={b.node_id: address})
        try:
            assert await ta.request(b.node_id, "echo", b"1") == b"1"
            await tb.stop()
            with pytest.raises(TransportError):
                await ta.request(b.node_id, "echo", b"2", timeout=3)
            tb = await started(b, members, rec2, listen=address)
            assert tb.address == address
            assert await ta.request(b.node_id, "echo", b"3", timeout=10) == b"3"
            assert [c[2] for c in rec1.calls] == [1] and [c[2] for c in rec2.calls] == [1]
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_start_twice_and_bad_listen_address() -> None:
    (a,) = ids("a")

    async def main() -> None:
        ta = await started(a, [a.public()])
        try:
            with pytest.raises(TransportError, match="already started"):
                await ta.start(Recorder())
            taken = GrpcTransport(a, [a.public()], ta.address)
            with pytest.raises(TransportError, match="cannot listen"):
                await taken.start(Recorder())
        finally:
            await ta.stop()

    run(main)


def test_consortium_error_is_base_of_transport_errors() -> None:
    assert issubclass(PeerRefused, TransportError)
    assert issubclass(TransportError, ConsortiumError)


def test_server_stops_a_stream_that_lies_about_its_size() -> None:
    """The size limit is enforced while receiving, not only against the declared size."""
    from consortium.transport import grpc_transport as g

    a, b = ids("a", "b")
    members = [a.public(), b.public()]

    written: list[int] = []

    async def send(ta: GrpcTransport, declared: int, chunks: int) -> None:
        call = ta._channel(b.node_id).stream_unary(g.STREAM_PATH)(
            timeout=10, metadata=((g.METHOD_KEY, "echo"), (g.SIZE_KEY, str(declared)))
        )
        for _ in range(chunks):
            await call.write(bytes(CHUNK_BYTES))
            written.append(1)
        await call.done_writing()
        await call

    async def main() -> None:
        rec = Recorder()
        tb = await started(b, members, rec, max_message_bytes=2 * CHUNK_BYTES)
        ta = GrpcTransport(a, members, addresses={b.node_id: tb.address})
        try:
            with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
                await send(ta, declared=10, chunks=64)  # claims 10 bytes, sends up to 64 MiB
            # the server cut the stream off soon after its 2 MiB limit, not at the end
            assert len(written) < 32
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await send(ta, declared=CHUNK_BYTES + 5, chunks=1)  # sends less than declared
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert rec.calls == []
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_concurrent_requests_share_a_connection_and_self_requests_work() -> None:
    a, b = ids("a", "b")
    members = [a.public(), b.public()]
    big = os.urandom(2 * CHUNK_BYTES + 7)

    async def main() -> None:
        rec = Recorder()
        ta = await started(a, members, rec)
        tb = await started(b, members)
        ta.set_address(b.node_id, tb.address)
        try:
            payloads = [bytes([i]) * (i + 1) for i in range(20)] + [big, big[::-1]]
            replies = await asyncio.gather(*(ta.request(b.node_id, "echo", p) for p in payloads))
            assert replies == payloads
            assert await ta.request(a.node_id, "echo", b"me") == b"me"  # a member may call itself
            assert rec.calls == [(a.node_id, "echo", 2)]
        finally:
            await ta.stop()
            await tb.stop()

    run(main)


def test_bench_measures_latency_and_throughput() -> None:
    from consortium.transport.bench import measure

    result = asyncio.run(measure(small=5, mib=2, repeats=1))
    assert result.small_median_ms > 0 and result.small_p95_ms >= result.small_median_ms
    assert result.bulk_mib == 2 and result.bulk_mib_per_s > 0
    assert "MiB/s" in str(result)

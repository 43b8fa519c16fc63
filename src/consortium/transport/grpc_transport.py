"""gRPC transport with mutual TLS pinned to the consortium's member certificates.

Wire format (no protobuf code generation; messages are raw bytes):
- `/consortium.transport.v1.Peer/Call` (unary-unary): the request payload is the whole message.
  Used for payloads up to CHUNK_BYTES.
- `/consortium.transport.v1.Peer/Stream` (stream-unary): the payload split into chunks of
  CHUNK_BYTES, reassembled by the server, which refuses as soon as the size limit is crossed.
- The method name travels as gRPC metadata `consortium-method`; a stream also declares its total
  size in `consortium-size`; the server answers with initial metadata `consortium-ready` before
  the client sends any chunk, so a refusal (e.g. an oversized request) costs no upload and reaches
  the caller as the server's status.
- The reply is one raw-bytes message. A handler's ConsortiumError comes back as status
  FAILED_PRECONDITION with the error's message; any other handler failure as INTERNAL with no
  detail (tracebacks stay in the server's log).

Authentication. gRPC's TLS refuses Ed25519 certificates, so each node uses its ECDSA P-256 TLS
certificate, bound to its Ed25519 identity by a signature (checked for every member when the
transport is built). The server trusts exactly the members' certificates, requires a client
certificate, and maps the one presented to the member whose genesis certificate it equals byte
for byte (anything else, e.g. a leaf issued by a member's self-signed cert, is UNAUTHENTICATED).
The client trusts only the certificate of the peer it dials and checks that peer's node id as the
TLS host name (every node certificate carries its node id as a DNS SAN), so another member
cannot impersonate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from consortium.core.errors import ConsortiumError, IdentityError, PeerRefused, TransportError
from consortium.core.identity import NodeIdentity, PublicIdentity
from consortium.transport.base import (
    CHUNK_BYTES,
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    Handler,
    check_method,
    check_size,
    error_text,
)

log = logging.getLogger(__name__)

SERVICE = "consortium.transport.v1.Peer"
CALL_PATH = f"/{SERVICE}/Call"
STREAM_PATH = f"/{SERVICE}/Stream"
METHOD_KEY = "consortium-method"
SIZE_KEY = "consortium-size"
READY_KEY = "consortium-ready"

#: Headroom over payload sizes in gRPC's own message limits.
_SLACK = 4096

#: Status codes meaning the peer answered and said no (retrying will not help).
_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
}


def _cert_der(pem: str | bytes) -> bytes:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"malformed TLS certificate: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.DER)


class GrpcTransport:
    """Transport over gRPC (asyncio) with mutual TLS between consortium members."""

    def __init__(
        self,
        identity: NodeIdentity,
        members: Sequence[PublicIdentity],
        listen: str | None = None,
        *,
        addresses: Mapping[str, str] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        stop_grace: float = 0.5,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.max_message_bytes = max_message_bytes
        self._listen = listen or identity.address
        self._stop_grace = stop_grace
        self._members: dict[str, PublicIdentity] = {}
        self._sender_by_der: dict[bytes, str] = {}
        for member in members:
            member.verify_binding()  # raises IdentityError naming the member
            if member.node_id in self._members:
                raise IdentityError(f"member {member.node_id} is listed twice")
            self._members[member.node_id] = member
            self._sender_by_der[_cert_der(member.tls_cert_pem)] = member.node_id
        self._addresses = {nid: m.address for nid, m in self._members.items()}
        self._addresses.update(addresses or {})
        self._roots = "".join(m.tls_cert_pem for m in self._members.values()).encode()
        self._key_pem = identity.tls_key_pem()
        self._cert_pem = identity.tls_cert_pem.encode()
        self._channels: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._server: Any = None
        self._handler: Handler | None = None
        self._port: int | None = None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def bound_port(self) -> int:
        if self._port is None:
            raise TransportError("transport is not started")
        return self._port

    @property
    def address(self) -> str:
        """The "host:port" this node listens on (the real port when it bound port 0)."""
        host = self._listen.rsplit(":", 1)[0]
        return f"{host}:{self.bound_port}"

    def set_address(self, peer: str, address: str) -> None:
        """Dial `peer` at `address` from now on (drops any open channel to it)."""
        self._member(peer)
        self._addresses[peer] = address
        channel = self._channels.pop(peer, None)
        if channel is not None:
            self._retired.append(channel)  # closed by stop(); a call on it may still be running

    def _member(self, peer: str) -> PublicIdentity:
        try:
            return self._members[peer]
        except KeyError:
            raise TransportError(f"{peer} is not a member of this consortium") from None

    # -- server ----------------------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        if self._server is not None:
            raise TransportError("transport already started")
        self._handler = handler
        credentials = grpc.ssl_server_credentials(
            [(self._key_pem, self._cert_pem)],
            root_certificates=self._roots,
            require_client_auth=True,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", CHUNK_BYTES + _SLACK),
                ("grpc.max_send_message_length", self.max_message_bytes + _SLACK),
                ("grpc.so_reuseport", 0),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Call": grpc.unary_unary_rpc_method_handler(self._serve_unary),
                        "Stream": grpc.stream_unary_rpc_method_handler(self._serve_stream),
                    },
                ),
            )
        )
        try:
            port = server.add_secure_port(self._listen, credentials)
        except RuntimeError as exc:
            raise TransportError(f"cannot listen on {self._listen}: {exc}") from exc
        if not port:
            raise TransportError(f"cannot listen on {self._listen}")
        await server.start()
        self._server, self._port = server, int(port)
        if self.node_id in self._members:
            self._addresses[self.node_id] = self.address  # requests to self use the real port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self._stop_grace)
        channels = [*self._channels.values(), *self._retired]
        self._channels, self._retired = {}, []
        for channel in channels:
            await channel.close()

    async def _serve_unary(self, request: bytes, context: Any) -> bytes:
        sender, method = await self._authenticate(context)
        if len(request) > self.max_message_bytes:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request is over the {self.max_message_bytes}-byte limit",
            )
        return await self._dispatch(sender, method, request, context)

    async def _serve_stream(self, chunks: AsyncIterator[bytes], context: Any) -> bytes:
        sender, method = await self._authenticate(context)
        limit = self.max_message_bytes
        declared = _metadata(context).get(SIZE_KEY, "")
        if not declared.isdigit():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing or bad request size")
        if int(declared) > limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {declared} bytes is over the {limit}-byte limit",
            )
        # Go-ahead: the client starts streaming only now.
        await context.send_initial_metadata(((READY_KEY, "1"),))
        buffer = bytearray()
        async for chunk in chunks:
            if len(buffer) + len(chunk) > limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"request is over the {limit}-byte limit"
                )
            buffer += chunk
        if len(buffer) != int(declared):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request size mismatch")
        return await self._dispatch(sender, method, bytes(buffer), context)

    async def _authenticate(self, context: Any) -> tuple[str, str]:
        """Map the client's certificate to a member; read and check the method name."""
        pems = context.auth_context().get("x509_pem_cert") or []
        sender = None
        if len(pems) == 1:
            try:
                sender = self._sender_by_der.get(_cert_der(pems[0]))
            except IdentityError:
                sender = None
        if sender is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not a consortium member")
        method = _metadata(context).get(METHOD_KEY, "")
        try:
            check_method(method)
        except TransportError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return str(sender), method

    async def _dispatch(self, sender: str, method: str, payload: bytes, context: Any) -> bytes:
        assert self._handler is not None
        code, detail = None, ""
        try:
            reply = bytes(await self._handler(sender, method, payload))
        except ConsortiumError as exc:
            code, detail = grpc.StatusCode.FAILED_PRECONDITION, error_text(exc)
        except Exception:  # a bug in our handler: log it here, tell the caller nothing more
            log.exception("handler for %r from %s failed", method, sender)
            code, detail = grpc.StatusCode.INTERNAL, f"internal error handling {method!r}"
        else:
            if len(reply) > self.max_message_bytes:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                detail = f"reply of {len(reply)} bytes is over the {self.max_message_bytes} limit"
        if code is not None:
            await context.abort(code, detail)
        return reply

    # -- client ----------------------------------------------------------------------------------

    async def request(
        self, peer: str, method: str, payload: bytes, timeout: float = DEFAULT_TIMEOUT
    ) -> bytes:
        """Send one request; see the Transport protocol for the error contract.

        A request that fails as UNAVAILABLE on a cached channel (the peer restarted, say) is sent
        once more on a fresh connection within the same deadline, so handlers should be
        idempotent (the protocol layer's messages are).
        """
        check_method(method)
        check_size(len(payload), self.max_message_bytes, "request")
        self._member(peer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reused = peer in self._channels
        try:
            return await self._call(peer, method, payload, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                await self._drop_channel(peer)
                remaining = deadline - loop.time()
                if reused and remaining > 0:  # a stale cached channel: reconnect once
                    try:
                        return await self._call(peer, method, payload, remaining)
                    except grpc.aio.AioRpcError as again:
                        if again.code() == grpc.StatusCode.UNAVAILABLE:
                            await self._drop_channel(peer)
                        raise self._error(peer, method, timeout, again) from None
            raise self._error(peer, method, timeout, exc) from None

    async def _call(self, peer: str, method: str, payload: bytes, timeout: float) -> bytes:
        channel = self._channel(peer)
        if len(payload) <= CHUNK_BYTES:
            call = channel.unary_unary(CALL_PATH)
            reply = await call(payload, timeout=timeout, metadata=((METHOD_KEY, method),))
        else:
            stream = channel.stream_unary(STREAM_PATH)
            metadata = ((METHOD_KEY, method), (SIZE_KEY, str(len(payload))))
            # Wait for the server's go-ahead (its initial metadata, sent once it has accepted the
            # sender, method and declared size): a refusal then arrives as the server's status,
            # whereas a refusal racing our writes surfaces as a bare INTERNAL error.
            call = stream(timeout=timeout, metadata=metadata)
            headers = await call.initial_metadata()
            if not any(key == READY_KEY for key, _ in headers or ()):
                return bytes(await call)  # refused: raises the server's status
            view = memoryview(payload)
            try:
                for offset in range(0, len(view), CHUNK_BYTES):
                    await call.write(bytes(view[offset : offset + CHUNK_BYTES]))
                await call.done_writing()
            except asyncio.InvalidStateError:
                pass  # the server ended the call early: its status is raised just below
            reply = await call
        return bytes(reply)

    def _error(self, peer: str, method: str, timeout: float, exc: Any) -> TransportError:
        code, detail = exc.code(), exc.details() or ""
        name = self._members[peer].name
        if code in _REFUSALS:
            return PeerRefused(f"{name} refused {method!r}: {detail}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TransportError(f"{name} did not answer {method!r} within {timeout:g} s")
        if code == grpc.StatusCode.UNAVAILABLE:
            where = self._addresses.get(peer, "?")
            return TransportError(f"{name} at {where} is unreachable: {detail}")
        return TransportError(f"request {method!r} to {name} failed ({code.name}): {detail}")

    def _channel(self, peer: str) -> Any:
        channel = self._channels.get(peer)
        if channel is not None:
            return channel
        address = self._addresses.get(peer, "")
        if not address or address.endswith(":0"):
            raise TransportError(f"no address known for {self._members[peer].name} ({peer})")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._members[peer].tls_cert_pem.encode(),
            private_key=self._key_pem,
            certificate_chain=self._cert_pem,
        )
        channel = grpc.aio.secure_channel(
            address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", peer),
                ("grpc.max_send_message_length", CHUNK_BYTES + _SLACK),
                ("grpc.max_receive_message_length", self.max_message_bytes + _SLACK),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2_000),
                ("grpc.enable_retries", 0),
            ],
        )
        self._channels[peer] = channel
        return channel

    async def _drop_channel(self, peer: str) -> None:
        channel = self._channels.pop(peer, None)
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


def _metadata(context: Any) -> dict[str, str]:
    items = context.invocation_metadata() or ()
    return {str(key): value for key, value in items if isinstance(value, str)}

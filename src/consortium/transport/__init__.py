"""Transports: request/reply between consortium members (gRPC with mutual TLS, or in-process)."""

from consortium.core.errors import PeerRefused, TransportError
from consortium.transport.base import (
    CHUNK_BYTES,
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    Handler,
    Transport,
    check_method,
)
from consortium.transport.grpc_transport import GrpcTransport
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "GrpcTransport",
    "Handler",
    "InProcessNetwork",
    "InProcessTransport",
    "PeerRefused",
    "Transport",
    "TransportError",
    "check_method",
]

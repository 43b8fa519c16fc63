"""SecAgg+ secure aggregation (Bell et al. CCS 2020 over Bonawitz et al. CCS 2017), sans-I/O.

`SecAggClient` and `SecAggAggregator` take messages and return messages; a driver moves them
over any transport (their `to_body()` is canonical and `parse_message` rebuilds them).
"""

from consortium.protocol.secagg.aggregator import AggregateResult, AggregatorStage, SecAggAggregator
from consortium.protocol.secagg.auth import Signer, SimulatedKeys, Verifier
from consortium.protocol.secagg.client import ClientStage, SecAggClient
from consortium.protocol.secagg.errors import (
    DoubleRevealError,
    RejectedMessage,
    SecAggAbort,
    SecAggError,
    SecAggParamsError,
    SecAggStateError,
    TranscriptError,
)
from consortium.protocol.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    Message,
    NeighbourKeys,
    ShareDelivery,
    SurvivorSet,
    SurvivorVote,
    UnmaskRequest,
    UnmaskResponse,
    parse_message,
)
from consortium.protocol.secagg.params import SecAggParams, default_degree, default_threshold
from consortium.protocol.secagg.quantize import dequantize, quantize
from consortium.protocol.secagg.sim import simulate_round
from consortium.protocol.secagg.transcript import Transcript, input_digest, verify_aggregate

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "AggregatorStage",
    "ClientStage",
    "DoubleRevealError",
    "EncryptedShares",
    "MaskedInput",
    "Message",
    "NeighbourKeys",
    "RejectedMessage",
    "SecAggAbort",
    "SecAggAggregator",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggParamsError",
    "SecAggStateError",
    "ShareDelivery",
    "Signer",
    "SimulatedKeys",
    "SurvivorSet",
    "SurvivorVote",
    "Transcript",
    "TranscriptError",
    "UnmaskRequest",
    "UnmaskResponse",
    "Verifier",
    "default_degree",
    "default_threshold",
    "dequantize",
    "input_digest",
    "parse_message",
    "quantize",
    "simulate_round",
    "verify_aggregate",
]

"""The contracts the gateway, the workers and the accounting consumer exchange.

Pydantic models for every message that crosses a process boundary, the Redis key names, and the money
rules. Nothing here imports torch, petals, hivemind or any other room of this repository, so every process
(and its container image) can depend on it.
"""

from protocol.catalog import ModelCatalog, ModelSpec
from protocol.events import DoneEvent, ErrorEvent, StreamEvent, TokenEvent, decode_event, encode_event
from protocol.jobs import GENERATE_FUNCTION, GenerateJob
from protocol.money import FarAmount, split_payment
from protocol.requests import GenerateRequest
from protocol.swarm import ServerSnapshot, SwarmSnapshot
from protocol.usage import NodeContribution, UsageRecord
from protocol.wallet import Wallet, is_checksum_address, to_checksum_address

__all__ = [
    "GENERATE_FUNCTION",
    "DoneEvent",
    "ErrorEvent",
    "FarAmount",
    "GenerateJob",
    "GenerateRequest",
    "ModelCatalog",
    "ModelSpec",
    "NodeContribution",
    "ServerSnapshot",
    "StreamEvent",
    "SwarmSnapshot",
    "TokenEvent",
    "UsageRecord",
    "Wallet",
    "decode_event",
    "encode_event",
    "is_checksum_address",
    "split_payment",
    "to_checksum_address",
]

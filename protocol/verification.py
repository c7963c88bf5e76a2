"""The spot-check message: what one sampled session's server spans received and returned, for the verifier.

A worker that samples a session (`workers.spot_checks`) records, for every server span of every route the
session used, the hidden states it sent and the hidden states it got back at each step. One message per
session goes to `keys.VERIFICATION_STREAM`; the verifier (`verifier/`) recomputes each span from its inputs
with blocks it holds itself and compares. Tensors travel as base64 of their raw little-endian bytes, so this
module stays free of torch.
"""

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.catalog import ModelId
from protocol.requests import RequestId

VERIFICATION_FIELD = "check"
"""The field of a verification-stream entry that holds the `SpotCheck` as JSON."""

VERIFICATION_BYTES_FIELD = "bytes"
"""The field of a verification-stream entry that holds the length of its JSON: what the verifier subtracts from
`keys.VERIFICATION_STREAM_BYTES` when it deletes the entry."""

HiddenDtype = Literal["float32", "float16", "bfloat16"]
"""The dtypes hidden states may honestly travel in: the verifier decodes these and no others."""

DtypeName = Annotated[str, Field(min_length=1, max_length=32)]
"""A torch dtype's name as recorded (`float32`, `bfloat16`, ...): whatever actually crossed the network, so a
reply in a dtype no honest server sends is recorded as such and convicted, not refused by the worker."""


class RecordedStep(BaseModel):
    """One step of one span: the hidden states it was sent and those it returned, each [tokens, hidden], each
    with the dtype it crossed the network in. The two differ as a rule (the worker sends float32 to the first
    span, and every span gets the previous server's dtype), so one label for both cannot be decoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int = Field(ge=0, description="The session's step (0 = prefill) this span served")
    tokens: int = Field(ge=1, description="Positions sent in this step (the whole history on a span's first step)")
    inputs_dtype: DtypeName
    inputs_b64: str
    outputs_dtype: DtypeName
    outputs_b64: str


class RecordedSpan(BaseModel):
    """Every step one server session (one peer, one block span) served, from its first position on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peer_id: str = Field(min_length=1, max_length=128)
    start_block: int = Field(ge=0)
    end_block: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    announced_dtype: DtypeName | None = Field(
        description="The torch_dtype the server announced in the DHT (Petals' ServerInfo) when it was routed to: "
        "what the verifier's tolerance follows, never the dtype of its reply"
    )
    steps: tuple[RecordedStep, ...] = Field(min_length=1)

    @property
    def tokens(self) -> int:
        return sum(step.tokens for step in self.steps)


class SpotCheck(BaseModel):
    """One sampled session's recorded spans, published once its usage record is written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: RequestId
    model_id: ModelId
    reason: Literal["fraction", "node-due"] = Field(description="Why the session was sampled")
    spans: tuple[RecordedSpan, ...]

    def to_stream_fields(self) -> dict[str, str]:
        return {VERIFICATION_FIELD: self.model_dump_json()}

    @classmethod
    def from_stream_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> "SpotCheck":
        """Parse a verification-stream entry; raises `ValueError` when it is malformed."""
        for key, value in fields.items():
            if key in (VERIFICATION_FIELD, VERIFICATION_FIELD.encode()):
                return cls.model_validate_json(value)
        raise ValueError(f"verification entry has no {VERIFICATION_FIELD!r} field")

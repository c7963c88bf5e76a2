"""The spot-check message: what one sampled session's server spans received and returned, for the verifier.

A worker that samples a session (`workers.spot_checks`) records, for every server span of every route the
session used, the hidden states it sent and the hidden states it got back at each step. One message per
session goes to `keys.VERIFICATION_STREAM`; the verifier (`verifier/`) recomputes each span from its inputs
with blocks it holds itself and compares. Tensors travel as base64 of their raw little-endian bytes, so this
module stays free of torch.
"""

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.catalog import ModelId
from protocol.requests import RequestId

VERIFICATION_FIELD = "check"
"""The field of a verification-stream entry that holds the `SpotCheck` as JSON."""

VERIFICATION_BYTES_FIELD = "bytes"
"""The field of a verification-stream entry that holds the length of its JSON: what the verifier subtracts from
`keys.VERIFICATION_STREAM_BYTES` when it deletes the entry."""

HiddenDtype = Literal["float32", "float16", "bfloat16"]
"""The dtypes a span's hidden states travel in (what Petals serialised them as)."""


class RecordedStep(BaseModel):
    """One step of one span: the hidden states it was sent and those it returned, each [tokens, hidden]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int = Field(ge=0, description="The session's step (0 = prefill) this span served")
    tokens: int = Field(ge=1, description="Positions sent in this step (the whole history on a span's first step)")
    inputs_b64: str
    outputs_b64: str


class RecordedSpan(BaseModel):
    """Every step one server session (one peer, one block span) served, from its first position on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peer_id: str = Field(min_length=1, max_length=128)
    start_block: int = Field(ge=0)
    end_block: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    dtype: HiddenDtype
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

"""The spot-check message: what one sampled session's server spans received and returned, for the verifier.

A worker that samples a session (`workers.spot_checks`) records, for every server span of every route the
session used, the hidden states it sent and the hidden states it got back at each step. One message per
session goes to `keys.VERIFICATION_STREAM`; the verifier (`verifier/`) recomputes each span from its inputs
with blocks it holds itself and compares. Tensors travel as base64 of their raw little-endian bytes, so this
module stays free of torch.
"""

import json
from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from protocol.catalog import ModelId
from protocol.requests import RequestId

MAX_POSITIONS = 131_072
"""The most positions one recorded span (or one step) may hold: past any model's context here, and the verifier
recomputes a span in one pass whose attention mask is positions x positions."""

VERIFICATION_FIELD = "check"
"""The field of a verification-stream entry that holds the `SpotCheck` as JSON."""

UNVERIFIED_FIELD = "unverified"
"""The field of a verification-stream entry that holds a `NotVerified` notice as JSON, instead of a check."""

VERIFICATION_BYTES_FIELD = "bytes"
"""The field of a verification-stream entry that holds the length of its JSON: what the verifier subtracts from
`keys.VERIFICATION_STREAM_BYTES` when it deletes the entry."""

NoticeCause = Literal["over-budget", "unpublished", "nothing-recorded"]
"""Why a worker sends a notice instead of its sampled session's check: the check would pass the byte budget, Redis
refused it, or no span was recorded."""

UnverifiedCause = Literal[NoticeCause, "recording-unusable", "unknown-model", "malformed", "never-published"]
"""Why a sampled session ends unverified through no fault of its servers: a worker's notice, or what the verifier
found (every span the worker recorded unusable, a model not in its catalog, an entry that does not parse, a check
that never reached the stream); `schema/0029_never_published_checks.sql` lists the same words."""

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

    step: int = Field(ge=0, le=MAX_POSITIONS, description="The session's step (0 = prefill) this span served")
    tokens: int = Field(
        ge=1, le=MAX_POSITIONS, description="Positions sent in this step (the whole history on a span's first step)"
    )
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

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.tokens > MAX_POSITIONS:
            raise ValueError(f"a span holds at most {MAX_POSITIONS} positions, not {self.tokens}")
        return self

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


class NotVerified(BaseModel):
    """A sampled session whose check the worker could not hand over: a tiny entry outside the byte budget, so that
    the verifier records the session as not verified and its providers are paid as for an unsampled session,
    instead of being held forever for a verdict that will never come."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: RequestId
    model_id: ModelId
    cause: NoticeCause
    spans: int = Field(ge=0, description="The spans the worker recorded and did not hand over")

    def to_stream_fields(self) -> dict[str, str]:
        return {UNVERIFIED_FIELD: self.model_dump_json()}


def read_entry(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> SpotCheck | NotVerified:
    """Parse a verification-stream entry, a check or a notice; raises `ValueError` when it is malformed."""
    for key, value in fields.items():
        if key in (UNVERIFIED_FIELD, UNVERIFIED_FIELD.encode()):
            return NotVerified.model_validate_json(value)
    return SpotCheck.from_stream_fields(fields)


def readable_request_id(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> str | None:
    """The request id of an entry that does not parse, when its JSON still names a valid one: the verifier can
    then record that session as not verified rather than hold it forever."""
    for key, value in fields.items():
        if key in (VERIFICATION_FIELD, VERIFICATION_FIELD.encode(), UNVERIFIED_FIELD, UNVERIFIED_FIELD.encode()):
            try:
                found = json.loads(value).get("request_id")
                return _REQUEST_ID.validate_python(found)
            # pydantic's ValidationError is a ValueError; JSON nested deeper than the parser goes, a RecursionError
            except (ValueError, AttributeError, TypeError, RecursionError):
                return None
    return None


_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)

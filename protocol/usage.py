"""The usage record: one per finished session, appended by the worker to `keys.USAGE_STREAM`.

It is everything accounting needs to bill the user and pay the nodes, and it balances on its own:
total_cost_far == billed prompt tokens x prompt_price_per_token_far + tokens_generated x price_per_token_far
(`protocol.money.session_cost`: the prompt is billed once a token was generated), platform_fee_far ==
total_cost_far x platform_fee_bps / 10,000 rounded down, and sum(payment_far) + platform_fee_far +
platform_remainder_far == total_cost_far. A record that does not balance is rejected here, before it reaches
the ledger.
"""

from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from protocol.catalog import ModelId
from protocol.jobs import TRACE_PARENT_MAX_CHARS
from protocol.money import MAX_FEE_BPS, FarAmount, far_sum, platform_fee, session_cost
from protocol.pricing import MAX_PROVIDER_PREMIUM, PREMIUM_BASE_BPS
from protocol.requests import RequestId
from protocol.wallet import Wallet

USAGE_FIELD: Final = "record"
ROUTE_POLICY_MAX_CHARS: Final = 64
"""How long a usage record's `route_policy` may be (the route policy's words, then the buyer's preferences)."""
"""The single field of a usage-stream entry; its value is the record as JSON."""
_LEFT_OUT_WHEN_UNSET: Final = (
    "trace_parent",
    "spot_checked",
    "prompt_price_per_token_far",
    "platform_fee_bps",
    "platform_fee_far",
)
"""Fields left out of a stream entry while unset (None, False), so an accounting consumer older than them still
parses the record."""

DEAD_LETTER_FIELDS: Final = ("entry_id", "kind", "reason", "consumer", USAGE_FIELD)
"""The fields of a dead letter (`keys.USAGE_DEAD_LETTERS`), in this order: the usage entry's id, its
`DeadLetterKind`, the reason in words, the consumer that dead-lettered it, and its record as it came."""


class DeadLetterKind(StrEnum):
    """Why accounting dead-lettered a usage entry (a dead letter's `kind`, and the metric's label)."""

    UNPARSEABLE = "unparseable"
    """The entry is not a `UsageRecord`."""
    REJECTED = "rejected"
    """The ledger refused the record's data."""
    CONFLICT = "conflict"
    """The ledger holds a different session under the record's request id: the id ran twice."""


MAX_COUNT = 2**40
"""The most tokens, blocks or work units one record may claim: about a trillion, which no session approaches, and
small enough that the ledger's daily sums of them (BIGINT) hold millions of records: a record claiming 2**63 would
otherwise be stored and then make every later sum naming its node overflow, refusing that node's sessions all day."""


class NodeContribution(BaseModel):
    """What one node (a Petals server, by DHT peer id) did for a session, and what it is owed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(min_length=1, max_length=128, description="The server's DHT peer id (base58)")
    wallet: Wallet | None = Field(default=None, description="Where the node asked to be paid, as it announced")
    blocks_served: int = Field(
        ge=0, le=MAX_COUNT, description="Distinct transformer blocks this node ran for the session"
    )
    tokens_contributed: int = Field(
        ge=0, le=MAX_COUNT, description="Tokens that passed through this node (prefill included)"
    )
    work_units: int = Field(ge=0, le=MAX_COUNT, description="Sum over steps of blocks served x tokens processed")
    paid_work_units: int | None = Field(
        default=None,
        ge=0,
        le=MAX_COUNT * PREMIUM_BASE_BPS * (1 + int(MAX_PROVIDER_PREMIUM)),  # every block at the largest premium
        description="The work its share was paid on: each block-token weighed by the block's premium in basis points, "
        "fixed at admission (docs/pricing.md); None: paid on work_units, every block at par. Left out when None",
    )
    payment_far: FarAmount


class UsageRecord(BaseModel):
    """One finished session: who is billed, how much, and who is paid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: RequestId
    model_id: ModelId
    user_wallet: Wallet | None = None
    api_key_id: str | None = Field(default=None, max_length=64)
    status: Literal["completed", "cancelled", "failed"]
    finish_reason: str | None = Field(default=None, max_length=64)
    prompt_tokens: int = Field(ge=0, le=MAX_COUNT)
    tokens_generated: int = Field(ge=0, le=MAX_COUNT)
    price_per_token_far: FarAmount = Field(description="The completion price fixed at admission, per generated token")
    prompt_price_per_token_far: FarAmount = Field(
        default=Decimal(0), description="The prompt price fixed at admission, per prompt token"
    )
    total_cost_far: FarAmount
    platform_fee_bps: int = Field(default=0, ge=0, le=MAX_FEE_BPS, description="The fee fixed at admission")
    platform_fee_far: FarAmount = Field(
        default=Decimal(0), description="The platform's fee: total_cost_far x platform_fee_bps / 10,000, rounded down"
    )
    platform_remainder_far: FarAmount = Field(description="What rounding the providers' shares down left over")
    started_at: AwareDatetime
    finished_at: AwareDatetime
    time_to_first_token_ms: float | None = Field(default=None, ge=0)
    failovers: int = Field(default=0, ge=0, description="Fresh sessions opened after a failed step")
    route_policy: str | None = Field(
        default=None,
        max_length=ROUTE_POLICY_MAX_CHARS,
        description="How routes were chosen, e.g. avoid-banned:1 (workers.route_policy)",
    )
    worker_id: str = Field(min_length=1, max_length=128)
    contributions: tuple[NodeContribution, ...] = ()
    spot_checked: bool = Field(
        default=False,
        description="The worker recorded this session's spans for the verifier: its contributions are paid only "
        "once the verifier's verdicts are in the ledger (payouts.payable)",
    )
    trace_parent: str | None = Field(
        default=None,
        max_length=TRACE_PARENT_MAX_CHARS,
        description="W3C traceparent of the worker's run span when tracing is on, so the ledger write joins its "
        "trace; left out of the entry when None, so an accounting consumer older than it still parses the record",
    )

    @model_validator(mode="after")
    def _books_balance(self) -> Self:
        expected = session_cost(
            self.prompt_tokens, self.tokens_generated, self.prompt_price_per_token_far, self.price_per_token_far
        )
        if self.total_cost_far != expected:
            raise ValueError(
                f"total_cost_far {self.total_cost_far} != billed prompt tokens x prompt price + "
                f"tokens_generated x price = {expected}"
            )
        fee = platform_fee(self.total_cost_far, self.platform_fee_bps)
        if self.platform_fee_far != fee:
            raise ValueError(
                f"platform_fee_far {self.platform_fee_far} != {self.platform_fee_bps} bps of the cost = {fee}"
            )
        paid = far_sum(c.payment_far for c in self.contributions)
        if far_sum([paid, self.platform_fee_far, self.platform_remainder_far]) != self.total_cost_far:
            raise ValueError(
                f"payments {paid} + fee {self.platform_fee_far} + remainder {self.platform_remainder_far} != "
                f"total_cost_far {self.total_cost_far}"
            )
        node_ids = [c.node_id for c in self.contributions]
        if len(set(node_ids)) != len(node_ids):
            raise ValueError("each node may appear once in contributions")
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        return self

    def to_stream_fields(self) -> dict[str, str]:
        unset: dict[str, Any] = {name: True for name in _LEFT_OUT_WHEN_UNSET if not getattr(self, name)}
        if all(c.paid_work_units is None for c in self.contributions):
            unset["contributions"] = {"__all__": {"paid_work_units"}}
        return {USAGE_FIELD: self.model_dump_json(exclude=unset or None)}

    @classmethod
    def from_stream_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> "UsageRecord":
        """Parse a usage-stream entry; raises `ValueError` (pydantic's ValidationError) when it is malformed."""
        raw = fields.get(USAGE_FIELD) if USAGE_FIELD in fields else fields.get(USAGE_FIELD.encode())  # type: ignore[call-overload]
        if raw is None:
            raise ValueError(f"usage entry has no {USAGE_FIELD!r} field")
        return cls.model_validate_json(raw)

"""A buyer's routing preferences for one request: the `provider` object of OpenRouter's request shape.

One definition for both APIs (`GenerateRequest.provider`, the OpenAI bodies' `provider`), the job a worker runs
(`GenerateJob.provider`) and the OpenAPI document, so what the gateway validates is what the worker honours
(docs/routing.md):

- `max_price` (`prompt`, `completion`, $FAR per token like `/models` quotes them): checked by the gateway against
  the prices it quotes at admission; a quote above it is refused there, before anything is queued or held.
- `only` / `ignore`: peer ids, or wallets (a wallet stands for every server announcing it in the DHT). The worker
  routes through no server outside `only` and none in `ignore`.
- `min_reputation`: no server whose verifier reputation is below it (a server never scored counts as 0).
- `sort`: how the worker ranks the routes left (`latency`, `throughput`; `price` ranks as `latency`, since every
  route of a model costs the buyer the same price, fixed at admission).
- `allow_fallbacks`: false pins the request to the servers of its first route: a failed step never moves it to
  another server, it fails with `route_unsatisfiable` instead.

A request whose preferences leave a block without a server fails fast with `route_unsatisfiable`, naming the
blocks, instead of waiting out the no-route timeout.
"""

import re
from decimal import Decimal
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
    model_validator,
)

from protocol.money import FarAmount
from protocol.wallet import to_checksum_address

MAX_NODE_REFS: Final = 256
"""The most entries `only` or `ignore` may hold: more than any route crosses, few enough to match per request."""
PEER_ID_CHARS: Final = r"[1-9A-HJ-NP-Za-km-z]{32,128}"
"""A libp2p peer id in base58 (Qm... or 12D3KooW...), as Petals and the usage records name a server."""
NODE_REF_PATTERN: Final = rf"^(?:{PEER_ID_CHARS}|0x[0-9a-fA-F]{{40}})$"
"""Either a peer id or a wallet; base58 has no 0, so no peer id starts like a wallet."""
ROUTE_SORTS: Final = ("price", "throughput", "latency")

RouteSort = Literal["price", "throughput", "latency"]
PRICE_PATTERN: Final = r"^[0-9]+(\.[0-9]{1,18})?$"


def _decimal_string(value: object) -> object:
    """Money is a decimal string on the wire: a JSON number (which a client's float may have rounded) is refused,
    and so is any spelling the OpenAPI document does not state (an exponent, a sign)."""
    if isinstance(value, str | int | float) and str(value).strip().startswith("-"):
        raise ValueError("a price cannot be negative")
    if not isinstance(value, str) or not re.fullmatch(PRICE_PATTERN, value):
        raise ValueError('a price is a decimal string of $FAR such as "0.0001"')
    return value


PriceCap = Annotated[
    FarAmount,
    BeforeValidator(_decimal_string),
    WithJsonSchema({"type": "string", "pattern": PRICE_PATTERN, "description": "$FAR per token, a decimal string"}),
]


def _normalised_ref(value: str) -> str:
    """A wallet in EIP-55 form (so any letter case matches the same wallet); a peer id as given."""
    return to_checksum_address(value) if value.startswith("0x") else value


NodeRef = Annotated[
    str,
    Field(
        pattern=NODE_REF_PATTERN,
        description="A server's libp2p peer id (base58), or a wallet (0x and 40 hex digits): the servers announcing it",
    ),
    AfterValidator(_normalised_ref),
]


def is_wallet_ref(ref: str) -> bool:
    """True for a wallet entry of `only`/`ignore`, False for a peer id."""
    return ref.startswith("0x")


class MaxPrice(BaseModel):
    """The most the buyer pays per token, in $FAR (decimal strings, as every amount on the wire)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: PriceCap | None = Field(default=None, description="Most $FAR per prompt token; absent: any")
    completion: PriceCap | None = Field(default=None, description="Most $FAR per generated token; absent: any")


class ProviderPreferences(BaseModel):
    """How the buyer wants its request routed; every field optional, and an empty object changes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_price: MaxPrice | None = Field(
        default=None,
        description="Refuse (409 max_price_exceeded) when the price quoted at admission is above it; $FAR per token",
    )
    sort: RouteSort | None = Field(
        default=None,
        description="Rank routes by measured latency (client round trips plus compute), by the servers' throughput, "
        "or by price (every route of a model costs the same, so as latency); absent: latency, as Petals routes",
    )
    only: list[NodeRef] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NODE_REFS,
        description="Route only through these servers (peer ids, or wallets they announce)",
    )
    ignore: list[NodeRef] | None = Field(
        default=None, max_length=MAX_NODE_REFS, description="Never route through these servers (peer ids or wallets)"
    )
    allow_fallbacks: StrictBool = Field(
        default=True,
        description="false: never fail over outside the servers of the request's first route (the request fails "
        "with route_unsatisfiable instead)",
    )
    min_reputation: StrictFloat | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Far Mesh extra: route only through servers the verifier scored at least this (0 to 1; a "
        "server never scored counts as 0)",
    )

    @model_validator(mode="after")
    def _only_and_ignore_disjoint(self) -> "ProviderPreferences":
        both = sorted(set(self.only or ()) & set(self.ignore or ()))
        if both:
            raise ValueError(f"{', '.join(both)} is named in both only and ignore; name each server in one of them")
        return self

    @property
    def shapes_routes(self) -> bool:
        """Whether the worker routes this request differently from one without preferences."""
        return bool(
            self.sort or self.only or self.ignore or self.min_reputation is not None or not self.allow_fallbacks
        )

    def price_refusal(self, prompt_price: Decimal, completion_price: Decimal) -> tuple[str, str] | None:
        """(field, message) when a quoted price is above `max_price`, else None."""
        if self.max_price is None:
            return None
        for name, most, quoted in (
            ("prompt", self.max_price.prompt, prompt_price),
            ("completion", self.max_price.completion, completion_price),
        ):
            if most is not None and quoted > most:
                message = (
                    f"the {name} price is {format(quoted, 'f')} $FAR per token now, above provider.max_price.{name} "
                    f"({format(most, 'f')}); raise it, or retry when GET /models quotes less"
                )
                return f"provider.max_price.{name}", message
        return None

    def label(self) -> str:
        """A few characters for the usage record's `route_policy`: which preferences applied."""
        parts = [f"sort-{self.sort}"] if self.sort else []
        if self.only:
            parts.append(f"only:{len(self.only)}")
        if self.ignore:
            parts.append(f"ignore:{len(self.ignore)}")
        if self.min_reputation is not None:
            parts.append(f"min-rep:{self.min_reputation:g}")
        if not self.allow_fallbacks:
            parts.append("no-fallbacks")
        return ",".join(parts)

"""A buyer's routing preferences for one generation: the `provider` object of OpenRouter's request shape.

    mesh.chat("Hi", provider={"ignore": ["0xA1A1..."], "sort": "throughput", "allow_fallbacks": False,
                              "max_price": {"completion": Decimal("0.0003")}})

The gateway defines the fields (its docs/routing.md and `ProviderPreferences` in `/openapi.json`), so this package
types them without judging them: the object travels in the request body as given, and the gateway's 422/400
(`InvalidRequest`, `field` naming e.g. `provider.sort`) says what is wrong. A `TypedDict` rather than a class, so the
body a caller reads in the gateway's docs is the value they write here, and a field a newer gateway adds passes
through untouched. The one change on the way: a `max_price` given as a `Decimal` (what `models()` quotes prices
as) is written as the decimal string the wire wants, since JSON has no decimal type and the gateway refuses a
price given as a number a float may have rounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, TypedDict

RouteSort = Literal["price", "throughput", "latency"]


class MaxPrice(TypedDict, total=False):
    """The most the buyer pays per token, in $FAR: a quote above either is refused with `MaxPriceExceeded`."""

    prompt: Decimal | str
    completion: Decimal | str


class ProviderPreferences(TypedDict, total=False):
    """How the buyer wants its request routed through the swarm; every field optional, `{}` changes nothing.

    `only` / `ignore` name servers by libp2p peer id or by wallet (every server announcing it); `min_reputation`
    (0 to 1) keeps out servers the verifier scored lower; `sort` ranks the routes left; `allow_fallbacks=False`
    keeps the request on its first route's servers. A request no allowed route can serve fails with
    `RouteUnsatisfiable`.
    """

    max_price: MaxPrice
    sort: RouteSort
    only: Sequence[str]
    ignore: Sequence[str]
    allow_fallbacks: bool
    min_reputation: float


def provider_json(provider: Mapping[str, Any]) -> dict[str, Any]:
    """The `provider` member of a request body: `provider` as given, `max_price`'s Decimals as decimal strings and
    `only`/`ignore` as lists (a tuple is a fine `Sequence` to pass, and JSON's array either way)."""
    body = dict(provider)
    max_price = body.get("max_price")
    if isinstance(max_price, Mapping):
        body["max_price"] = {
            name: format(value, "f") if isinstance(value, Decimal) else value for name, value in max_price.items()
        }
    for name in ("only", "ignore"):
        refs = body.get(name)
        if isinstance(refs, Sequence) and not isinstance(refs, str):
            body[name] = list(refs)
    return body

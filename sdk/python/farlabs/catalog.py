"""The public, unauthenticated views of the mesh: the models on sale and a model's swarm status."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Model:
    """One model on sale (GET /models)."""

    model_id: str
    price_per_token_far: Decimal
    """The completion price (per generated token), under its older name."""
    active_nodes: int | None
    """None when no worker reported on its swarm recently: the gateway never invents a number."""
    status: str
    """available or unavailable"""
    prompt_price_per_token_far: Decimal = Decimal(0)
    """Per prompt token (0 from a gateway older than prompt prices); a request pays it once a token was generated."""
    completion_price_per_token_far: Decimal | None = None
    """Per generated token; equals price_per_token_far (None only when built by hand without it)."""
    family: str | None = None
    """What the model is, e.g. "tiny-llama (random weights)"; None when the catalogue does not say (or an older
    gateway)."""
    parameters: int | None = None
    context_length: int | None = None
    """Most tokens of prompt and completion together."""
    license: str | None = None

    @property
    def available(self) -> bool:
        return self.status == "available"

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Model:
        prompt, completion = _prices(item)
        return cls(
            item["model_id"],
            Decimal(item["price_per_token_far"]),
            item.get("active_nodes"),
            item["status"],
            prompt_price_per_token_far=prompt,
            completion_price_per_token_far=completion,
            family=item.get("family"),
            parameters=item.get("parameters"),
            context_length=item.get("context_length"),
            license=item.get("license"),
        )


def _prices(quoted: dict[str, Any]) -> tuple[Decimal, Decimal]:
    """(prompt, completion) price as the gateway quotes them; an older gateway quotes only price_per_token_far."""
    completion = quoted.get("completion_price_per_token_far", quoted["price_per_token_far"])
    return Decimal(quoted.get("prompt_price_per_token_far", "0")), Decimal(completion)


@dataclass(frozen=True)
class MeshStatus:
    """A model's swarm as the gateway sees it (GET /mesh/status)."""

    model_id: str
    status: str
    """connected, or disconnected when no worker has published a fresh snapshot"""
    healthy: bool
    active_nodes: int | None
    active_sessions: int
    price_per_token_far: Decimal
    snapshot_taken_at: str | None
    prompt_price_per_token_far: Decimal = Decimal(0)
    completion_price_per_token_far: Decimal | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MeshStatus:
        prompt, completion = _prices(body)
        return cls(
            model_id=body["model_id"],
            status=body["status"],
            healthy=bool(body.get("healthy", body["status"] == "connected")),
            active_nodes=body.get("active_nodes"),
            active_sessions=int(body.get("active_sessions", 0)),
            price_per_token_far=Decimal(body["price_per_token_far"]),
            snapshot_taken_at=body.get("snapshot_taken_at"),
            prompt_price_per_token_far=prompt,
            completion_price_per_token_far=completion,
        )


@dataclass(frozen=True)
class Balance:
    """The wallet's prepaid balance (`GET /v1/usage`'s `balance`): deposits credited minus sessions charged
    (`balance_far`), what requests in flight hold of it (`held_far`) and what a new request may use
    (`available_far`); `required` says whether the gateway admits requests against it."""

    balance_far: Decimal
    held_far: Decimal
    available_far: Decimal
    required: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Balance:
        return cls(
            balance_far=Decimal(str(body["balance_far"])),
            held_far=Decimal(str(body.get("held_far") or "0")),
            available_far=Decimal(str(body["available_far"])),
            required=bool(body.get("required", False)),
        )

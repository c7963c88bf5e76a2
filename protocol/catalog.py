"""Which models the mesh sells, what each is, where their weights come from, and what a token of each costs.

Each model has two prices: per prompt token (the prefill) and per generated token (the completion). An entry
that names neither falls back to the catalog-wide defaults, PROMPT_PRICE_PER_TOKEN_FAR and PRICE_PER_TOKEN_FAR;
the older `price_per_token_far` of an entry is its completion price, so existing FAR_MESH_MODELS keep working.

What a model is (its family, parameter count, context length and license) is said by its entry too, so the
gateway's model lists and the portal's swarm pages read it from the one place the prices come from.

The gateway (to price and route requests) and the workers (to know which clients to open) read the same
catalog from the same environment variables, so they cannot disagree on a price or a queue name.
"""

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.money import FarAmount

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
ModelId = Annotated[
    str, Field(pattern=MODEL_ID_PATTERN, description="A model id such as meta-llama/Llama-2-7b-chat-hf")
]


class ModelSpec(BaseModel):
    """One model the mesh serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: ModelId
    source: str | None = Field(
        default=None,
        description="Hugging Face repo id or local directory with config and tokenizer; defaults to model_id",
    )
    dht_prefix: str | None = Field(
        default=None, description="Prefix of the model's block uids in the DHT; None lets Petals derive it from source"
    )
    price_per_token_far: FarAmount | None = Field(
        default=None, description="The completion price under its older name; None means PRICE_PER_TOKEN_FAR"
    )
    prompt_price_per_token_far: FarAmount | None = Field(
        default=None, description="Price per prompt token, in $FAR; None means PROMPT_PRICE_PER_TOKEN_FAR"
    )
    completion_price_per_token_far: FarAmount | None = Field(
        default=None,
        description="Price per generated token, in $FAR; None means price_per_token_far, then PRICE_PER_TOKEN_FAR",
    )
    chat_template: str | None = Field(
        default=None,
        max_length=20_000,
        description="Jinja chat template for chat requests; None means the tokenizer's own (or the gateway's fallback)",
    )
    family: str | None = Field(
        default=None,
        max_length=200,
        description="What the model is, e.g. 'SmolLM2 (Llama architecture)' or 'tiny-llama (random weights)'",
    )
    parameters: int | None = Field(default=None, ge=0, description="Number of weights, tied ones counted once")
    context_length: int | None = Field(
        default=None, ge=1, description="Most tokens a sequence (prompt and completion together) may hold"
    )
    license: str | None = Field(
        default=None, max_length=200, description="License of the weights, an SPDX id where there is one"
    )

    @model_validator(mode="after")
    def _one_completion_price(self) -> "ModelSpec":
        old, new = self.price_per_token_far, self.completion_price_per_token_far
        if old is not None and new is not None and old != new:
            raise ValueError(
                f"{self.model_id}: price_per_token_far {old} and completion_price_per_token_far {new} name the same "
                "price; give one"
            )
        return self

    @property
    def weights_source(self) -> str:
        """Where a Petals client or server loads the config, tokenizer and (servers) weights from."""
        return self.source or self.model_id


class ModelCatalog(BaseModel):
    """The models on sale, in the order they were configured; the first is not special, `default_model_id` is."""

    model_config = ConfigDict(frozen=True)

    models: tuple[ModelSpec, ...]
    default_model_id: str
    default_price_far: FarAmount
    """The completion price of a model whose entry names none (PRICE_PER_TOKEN_FAR)."""
    default_prompt_price_far: FarAmount = Decimal(0)
    """The prompt price of a model whose entry names none (PROMPT_PRICE_PER_TOKEN_FAR)."""

    @model_validator(mode="after")
    def _default_is_listed(self) -> "ModelCatalog":
        ids = [m.model_id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique, got {ids}")
        if self.default_model_id not in ids:
            raise ValueError(f"DEFAULT_MODEL_ID {self.default_model_id!r} is not one of the models {ids}")
        return self

    def get(self, model_id: str) -> ModelSpec | None:
        """The spec of `model_id`, or None when the mesh does not sell it."""
        return next((m for m in self.models if m.model_id == model_id), None)

    def price_of(self, spec: ModelSpec) -> Decimal:
        """The price per generated token of `spec` (its completion price), falling back to the catalog's default."""
        for price in (spec.completion_price_per_token_far, spec.price_per_token_far):
            if price is not None:
                return price
        return self.default_price_far

    def prompt_price_of(self, spec: ModelSpec) -> Decimal:
        """The price per prompt token of `spec`, falling back to the catalog-wide default."""
        if spec.prompt_price_per_token_far is not None:
            return spec.prompt_price_per_token_far
        return self.default_prompt_price_far

    def quote(self, spec: ModelSpec) -> dict[str, str]:
        """`spec`'s prices as the routes quote them: decimal strings, the completion price under both its names
        (`price_per_token_far` is what clients read before prompts had a price)."""
        completion = format(self.price_of(spec), "f")
        return {
            "price_per_token_far": completion,
            "prompt_price_per_token_far": format(self.prompt_price_of(spec), "f"),
            "completion_price_per_token_far": completion,
        }

    @staticmethod
    def describe(spec: ModelSpec) -> dict[str, str | int | None]:
        """What `spec` is, as the routes and pages listing models say it (None where its entry does not say)."""
        return {
            "family": spec.family,
            "parameters": spec.parameters,
            "context_length": spec.context_length,
            "license": spec.license,
        }

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.models]


def is_model_id(text: str) -> bool:
    """True when `text` has the shape of a model id (it may still be unknown to the catalog)."""
    return re.fullmatch(MODEL_ID_PATTERN, text) is not None

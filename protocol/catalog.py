"""Which models the mesh sells, where their weights come from, and what a token of each costs.

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
    price_per_token_far: FarAmount | None = Field(default=None, description="None means PRICE_PER_TOKEN_FAR")
    chat_template: str | None = Field(
        default=None,
        max_length=20_000,
        description="Jinja chat template for chat requests; None means the tokenizer's own (or the gateway's fallback)",
    )

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
        """The price per generated token of `spec`, falling back to the catalog-wide default."""
        return spec.price_per_token_far if spec.price_per_token_far is not None else self.default_price_far

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.models]


def is_model_id(text: str) -> bool:
    """True when `text` has the shape of a model id (it may still be unknown to the catalog)."""
    return re.match(MODEL_ID_PATTERN, text) is not None

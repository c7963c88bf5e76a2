"""Settings every process shares, read from environment variables and validated once at start-up.

Each process extends `CommonSettings` with its own (`gateway.settings`, `workers.settings`,
`accounting.settings`). A bad value stops the process at start with the variable's name and the problem,
never with a traceback ten minutes later.
"""

import logging
import os
import socket
import uuid
from decimal import Decimal
from typing import Any, Literal, Self

from pydantic import Field, Json, RedisDsn, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.catalog import ModelCatalog, ModelSpec
from protocol.log_format import JsonFormatter
from protocol.money import FarAmount
from protocol.redis_shards import RedisShards
from protocol.settings_renames import renamed_in_use

LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]


def unique_consumer_name() -> str:
    """A Redis consumer-group member name unique per process (host-pid-random), so two replicas never share
    pending entries by accident."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names each variable and what is wrong with it."""


class CommonSettings(BaseSettings):
    """Variables from the seed's configuration table, plus the model catalog."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(default=RedisDsn("redis://localhost:6379/0"), description="Redis connection URL")
    log_level: LogLevel = Field(default="INFO", description="Logging level")
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one readable line per event; json: one JSON object per line (production)"
    )
    default_model_id: str = Field(
        default="meta-llama/Llama-2-7b-chat-hf", description="Model used when a request names none"
    )
    price_per_token_far: FarAmount = Field(default=Decimal("0.0001"), description="Price per generated token, in $FAR")
    prompt_price_per_token_far: FarAmount = Field(
        default=Decimal(0),
        description="Price per prompt token, in $FAR, of a model whose entry names none; 0 (prompts free, as "
        "before prompts had a price) until an operator sets one",
    )
    far_mesh_redis_require_durable: bool = Field(
        default=False,
        description="Refuse to start unless Redis has appendonly yes, appendfsync everysec and noeviction "
        "(otherwise a warning)",
    )
    far_mesh_tracing: str = Field(
        default="off",
        pattern=r"^(off|otlp|file:.+)$",
        description="Traces: off; otlp (OTLP over HTTP, set by OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME...); "
        "file:DIR (each process appends its spans as JSON lines under DIR)",
    )
    far_mesh_models: Json[list[ModelSpec]] | None = Field(
        default=None,
        description='JSON list of models: [{"model_id", "source", "dht_prefix", "prompt_price_per_token_far", '
        '"completion_price_per_token_far", "family", "parameters", "context_length", "license"}] '
        "(price_per_token_far: the completion price's older name; the last four say what the model is, on /models, "
        "/v1/models and the portal); unset means one model, DEFAULT_MODEL_ID",
    )

    far_mesh_model_redis: Json[dict[str, RedisDsn]] | None = Field(
        default=None,
        description='JSON object {"model_id": "redis://..."}: each named model\'s queue, token streams and usage '
        "records live on that Redis (its shard), read and written by every process by the same map; keys, wallets, "
        "budgets and every other model stay on REDIS_URL. Unset: everything on REDIS_URL (docs/performance.md, "
        "Past one Redis)",
    )

    @model_validator(mode="after")
    def _catalog_is_consistent(self) -> Self:
        self.catalog  # noqa: B018 - builds and validates the catalog once, at start-up
        unknown = sorted(set(self.far_mesh_model_redis or {}) - set(self.catalog.model_ids))
        if unknown:
            raise ValueError(
                f"FAR_MESH_MODEL_REDIS names {unknown}, which are not in the catalog {self.catalog.model_ids}"
            )
        return self

    @property
    def redis_shards(self) -> RedisShards:
        """Which Redis holds each model's requests (`protocol.redis_shards`); REDIS_URL for every model by default."""
        home = str(self.redis_url)
        return RedisShards(home, {model: str(url) for model, url in (self.far_mesh_model_redis or {}).items()})

    @property
    def catalog(self) -> ModelCatalog:
        """The models on sale; DEFAULT_MODEL_ID must be one of them."""
        models = self.far_mesh_models or [ModelSpec(model_id=self.default_model_id)]
        return ModelCatalog(
            models=tuple(models),
            default_model_id=self.default_model_id,
            default_price_far=self.price_per_token_far,
            default_prompt_price_far=self.prompt_price_per_token_far,
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Read and validate the environment, turning pydantic's report into one line per bad variable; a
        variable set under its old name stops the process too (protocol.settings_renames)."""
        if stale := renamed_in_use():
            raise SettingsError("; ".join(stale))
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc)) from None

    def configure_logging(self) -> None:
        """One short line per event, secrets never included (no DSN is ever logged); JSON with LOG_FORMAT=json."""
        logging.basicConfig(level=self.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        if self.log_format == "json":
            for handler in logging.getLogger().handlers:
                handler.setFormatter(JsonFormatter())


def describe_errors(exc: ValidationError) -> str:
    """`NAME: problem` per invalid variable, upper-cased as it is spelled in the environment."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        lines.append(f"{name}: {error['msg']}")
    return "; ".join(lines)

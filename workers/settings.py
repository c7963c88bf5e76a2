"""The worker's configuration: which swarm to join, which models to serve, and the bounds on every wait.

Every bound has a default that suits a small swarm; each is read once at start-up, and a bad value stops
`far-mesh worker` with the variable's name.
"""

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from mesh.dht_node import refuse_placeholders
from protocol.catalog import ModelSpec
from protocol.settings import CommonSettings


class WorkerSettings(CommonSettings):
    """WORKER_* variables of the worker process, on top of the shared ones (REDIS_URL, FAR_MESH_MODELS...)."""

    far_mesh_dht_bootstrap: str = Field(
        min_length=1,
        description="Required. Comma-separated multiaddrs of DHT peers, e.g. /ip4/10.0.0.5/tcp/31337/p2p/Qm...",
    )
    worker_models: str = Field(
        default="", description="Comma-separated model ids this worker serves; empty means every catalog model"
    )
    worker_max_jobs: int = Field(default=16, ge=1, le=1024, description="Concurrent jobs per served model")
    worker_metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of Prometheus /metrics and the /healthz probe; 0 disables both"
    )
    worker_metrics_host: str = Field(default="0.0.0.0", description="Address /metrics and /healthz bind")
    worker_snapshot_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between swarm snapshots published to Redis"
    )
    worker_poll_delay_s: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="How often workers poll their queues for jobs no wake-up announced (retries, a dead worker's)",
    )
    worker_petals_max_retries: int = Field(
        default=2, ge=1, le=100, description="Petals retries inside one step before the worker opens a fresh route"
    )
    worker_petals_request_timeout_s: float = Field(default=30.0, gt=0, description="Petals per-request timeout")
    worker_petals_connect_timeout_s: float = Field(default=5.0, gt=0, description="Petals connect timeout")
    worker_petals_max_backoff_s: float = Field(default=2.0, gt=0, description="Petals' longest sleep between retries")
    worker_no_route_timeout_s: float = Field(
        default=20.0, gt=0, description="Give up with a no_route error after failing to find a route this long"
    )
    worker_lease_ttl_s: float = Field(
        default=3.0, ge=0.5, le=60, description="A dead worker's job is taken over by another within about this"
    )
    worker_job_timeout_s: float = Field(default=900.0, gt=0, description="Hard limit on one job's run time")
    worker_job_max_tries: int = Field(
        default=5, ge=1, description="Runs of one job (first run plus recoveries after worker crashes)"
    )
    worker_redis_outage_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="A run retries its stream writes through a Redis outage this long before it gives the job up",
    )

    worker_verify_fraction: float = Field(
        default=0.05, ge=0, le=1, description="Share of sessions whose server spans the verifier recomputes"
    )
    worker_verify_min_per_node_hour: int = Field(
        default=1, ge=0, le=3600, description="Sessions sampled per server per hour at least, whatever the fraction"
    )
    worker_verify_sampling_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Key of the HMAC of request ids that picks the sampled fraction, so no client can pick ids "
        "that are never (or always) checked; every worker of a fleet sets the same one. Unset: a random key per "
        "process, with a warning",
    )
    worker_verify_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="Most bytes of spot checks waiting in Redis for the verifier; a check that would pass it is "
        "dropped unverified (and counted)",
    )

    @field_validator("far_mesh_dht_bootstrap")
    @classmethod
    def _multiaddrs(cls, value: str) -> str:
        addrs = [a.strip() for a in value.split(",") if a.strip()]
        bad = [a for a in addrs if not a.startswith("/")]
        if not addrs or bad:
            raise ValueError(f"expected comma-separated multiaddrs such as /ip4/1.2.3.4/tcp/31337/p2p/Qm..., got {bad}")
        refuse_placeholders(addrs)  # a template's SET_THE_BOOTSTRAP_PEER_ID would fail to join for minutes
        return value

    @model_validator(mode="after")
    def _served_models_are_in_catalog(self) -> Self:
        self.served_models  # noqa: B018 - validates the list once, at start-up
        return self

    @property
    def initial_peers(self) -> list[str]:
        return [a.strip() for a in self.far_mesh_dht_bootstrap.split(",") if a.strip()]

    @property
    def served_models(self) -> tuple[ModelSpec, ...]:
        """The catalog entries this worker opens a client for, in catalog order."""
        catalog = self.catalog
        wanted = [m.strip() for m in self.worker_models.split(",") if m.strip()]
        unknown = [m for m in wanted if catalog.get(m) is None]
        if unknown:
            raise ValueError(f"WORKER_MODELS names {unknown}, which are not in the catalog {catalog.model_ids}")
        return tuple(m for m in catalog.models if not wanted or m.model_id in wanted)

"""The verifier's settings: the ledger (POSTGRES_URL), Redis, the catalog whose weights it loads, and the ban rule."""

from pydantic import Field

from protocol.settings import unique_consumer_name
from schema.settings import LedgerSettings


class VerifierSettings(LedgerSettings):
    far_mesh_verifier_ban_after: int = Field(
        default=2, ge=1, le=1000, description="Mismatches within FAR_MESH_VERIFIER_BAN_WINDOW_S that ban a node"
    )
    far_mesh_verifier_ban_window_s: float = Field(
        default=86_400.0, gt=0, description="How far back mismatches count towards a ban"
    )
    far_mesh_verifier_ban_s: float = Field(
        default=3_600.0, gt=0, description="How long a banned node is kept out of routes (the cool-down)"
    )
    far_mesh_verifier_threads: int = Field(
        default=1, ge=1, le=256, description="torch threads for recomputation (1 suits small models on shared cores)"
    )
    far_mesh_verifier_batch: int = Field(default=8, ge=1, le=1000, description="Spot checks read per stream call")
    far_mesh_verifier_consumer_name: str = Field(
        default_factory=unique_consumer_name,
        min_length=1,
        max_length=200,
        description="This verifier's name in its consumer group; defaults to host-pid-random",
    )
    far_mesh_verifier_metrics_port: int = Field(
        default=9104, ge=0, le=65535, description="Port of the verifier's /metrics and /healthz; 0 disables both"
    )
    far_mesh_verifier_liveness_s: float = Field(
        default=120.0, gt=0, description="/healthz fails once the verifier loop has not turned for this long"
    )

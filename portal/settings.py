"""The portal's configuration: where it listens, which domain and chain its signatures are bound to, its cookie key.

Read once at start-up (`PortalSettings.from_env()`); a bad value stops `far-mesh portal` with the variable's name.
"""

from pydantic import Field, SecretStr

from protocol.settings import CommonSettings
from protocol.wallet import Wallet
from schema.settings import PostgresUrl


class PortalSettings(CommonSettings):
    """PORTAL_* variables plus POSTGRES_URL, on top of the shared ones (REDIS_URL for the swarm snapshots...)."""

    postgres_url: PostgresUrl = Field(description="Required. PostgreSQL URL of the ledger the portal reads")
    portal_host: str = Field(default="0.0.0.0", description="Address the portal binds")
    portal_port: int = Field(default=8200, ge=1, le=65535, description="Port the portal listens on")
    portal_secret_key: SecretStr = Field(
        min_length=32, description="Required. Signs the session cookies; at least 32 random characters"
    )
    portal_domain: str = Field(
        default="localhost:8200",
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        description="host[:port] users reach the portal at; signed messages must name it (EIP-4361 domain)",
    )
    portal_chain_id: int = Field(default=1, ge=1, description="Chain id signed messages must name")
    portal_nonce_ttl_s: float = Field(
        default=300.0, ge=10, le=3600, description="How long a message to sign stays valid (its nonce lives this long)"
    )
    portal_messages_per_client: int = Field(
        default=30,
        ge=1,
        le=10_000,
        description="Messages to sign one client (an IPv4 address, an IPv6 /64) may ask for per PORTAL_NONCE_TTL_S; "
        "then 429",
    )
    portal_messages_per_address: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Of those, how many may name one wallet address (counted per client, so nobody can use up "
        "another wallet's)",
    )
    portal_session_ttl_s: float = Field(default=43200.0, ge=60, le=30 * 86400, description="Sign-in session length")
    portal_secure_cookies: bool = Field(
        default=True, description="Mark the session cookie Secure (HTTPS only; browsers also allow it on localhost)"
    )
    portal_initial_peers: str = Field(
        default="", description="Multiaddrs of the swarm's DHT, printed in the onboarding page's node command"
    )
    portal_node_image: str = Field(
        default="ghcr.io/far-mesh/far-mesh-mesh:0.1.0", description="Container image the onboarding page names"
    )
    chain_id: int = Field(default=31337, ge=1, description="Chain id of the deposit contract")
    deposit_contract_address: Wallet | None = Field(
        default=None, description="The FarDeposit contract the balance page tells buyers to deposit into"
    )
    chain_token_address: Wallet | None = Field(
        default=None, description="The $FAR token the balance page tells buyers to approve"
    )

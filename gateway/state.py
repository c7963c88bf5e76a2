"""Everything one gateway process holds while it runs, built at start-up and reachable from each request."""

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from starlette.requests import Request

from gateway.api_keys import KeyStore
from gateway.balances import Balances
from gateway.budget_admission import Budgets
from gateway.inflight import Inflight
from gateway.metrics import GatewayMetrics
from gateway.rate_limit import RateLimiter
from gateway.relay import StreamRelay
from gateway.request_history import RequestHistory
from gateway.settings import GatewaySettings
from gateway.shards import Shard


@dataclass
class GatewayState:
    settings: GatewaySettings
    metrics: GatewayMetrics
    redis: aioredis.Redis
    arq: Any  # arq.connections.ArqRedis (arq ships no type hints)
    key_store: KeyStore
    request_history: RequestHistory
    relay: StreamRelay
    inflight: Inflight
    rate_limiter: RateLimiter
    budgets: Budgets
    balances: Balances | None = None
    """Set when GATEWAY_REQUIRE_PREPAID_BALANCE is on: requests are held against their wallet's balance."""
    shards: dict[str, Shard] = field(default_factory=dict)
    """model id -> the connections of the Redis its requests live on, for each model not on the home Redis
    (`redis`, `arq` and `relay` above; FAR_MESH_MODEL_REDIS)."""

    def shard(self, model_id: str) -> Shard:
        """Where `model_id`'s queue, token streams and cancel flags are: its shard, else the home Redis."""
        return self.shards.get(model_id) or Shard(redis=self.redis, relay=self.relay, arq=self.arq)


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state

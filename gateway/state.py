"""Everything one gateway process holds while it runs, built at start-up and reachable from each request."""

from dataclasses import dataclass
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


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state

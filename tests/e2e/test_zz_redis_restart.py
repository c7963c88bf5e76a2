"""Redis restarted under the running system: the gateway answers 503 meanwhile, then everything serves again.

Its own module, named to run after the other e2e modules: a restarted Redis has lost every key (queues,
snapshots, the usage group); every process must reconnect on its own.
"""

import asyncio
import time

import httpx
import pytest

from tests.e2e.test_faults import (
    PROMPT,
    assert_complete_once,
    assert_exactly_once_in_the_ledger,
    greedy,
    new_request_id,
)
from tests.fixtures.system import SystemUnderTest, UnexpectedStatus, collect, wait_for_redis
from tests.fixtures.workers import reference_continuation

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]


async def test_while_redis_restarts_the_gateway_answers_503_then_serves_again(e2e_system: SystemUnderTest) -> None:
    """Runs last in this module: a restarted Redis has lost every key (queues, snapshots, the usage group)."""
    async with e2e_system.client(timeout_s=15) as client:
        await asyncio.to_thread(e2e_system.redis_server.stop)
        try:
            health = await client.get("/health")
            refused = await client.post("/inference/generate", json=greedy(new_request_id(), 4))
        finally:
            await asyncio.to_thread(e2e_system.redis_server.start)
        assert health.status_code == 503
        assert refused.status_code == 503 and refused.headers.get("Retry-After")
        assert refused.json()["error"]["code"] == "redis_unavailable"
        await wait_for_redis(e2e_system.redis_url)
        request_id = new_request_id()
        deadline = time.monotonic() + 60
        while True:  # until the workers have published a fresh snapshot into the new Redis
            # Known bug (see the report): arq's poll loop raises on the lost connection and the worker exits.
            # Restart whatever died, as Kubernetes restarts a crashed pod; the gateway and accounting must survive.
            dead = e2e_system.dead_processes()
            assert "web" not in dead and "accounting" not in dead
            for name in dead:
                await asyncio.to_thread(e2e_system.restart_process, name)
            try:
                events = await collect(client, greedy(request_id, 8))
                break
            except (UnexpectedStatus, httpx.TransportError) as exc:  # 503 no_healthy_swarm meanwhile
                assert time.monotonic() < deadline, f"the system did not recover: {exc}"
                await asyncio.sleep(0.5)
    assert_complete_once(events, reference_continuation(e2e_system.models[0], PROMPT, 8))
    await assert_exactly_once_in_the_ledger(e2e_system, {request_id: events})

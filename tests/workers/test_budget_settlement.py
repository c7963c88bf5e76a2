"""The worker's half of a key's budget: settling a request's reservation at what it cost, once, whoever ends it."""

import asyncio
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from gateway.api_keys import ApiKey, KeyLimits
from gateway.budget_admission import REBUILD, Budgets
from mesh.local_swarm import LocalSwarm
from protocol import budgets, keys
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, ErrorBody, TokenEvent, encode_event
from protocol.money import cost_of
from protocol.ownership import RequestOwner
from tests.fixtures.workers import PRICE_FAR, WorkerProcess, job_mid_stream_on_two_workers, make_job, wait_for_end
from workers.budget_settlement import settle_reservation
from workers.ending import end_abandoned

BUDGET_FAR = Decimal("1")


async def budgeted_key(redis: aioredis.Redis) -> tuple[ApiKey, Budgets]:
    """A key with a budget whose account is as a rebuild from an empty ledger leaves it (no ledger needed)."""
    key = ApiKey(uuid.uuid4().hex[:16], "0x0", "", KeyLimits(max_budget_far=BUDGET_FAR))
    account_keys = [keys.budget_account(key.key_id), keys.budget_reservations(key.key_id)]
    now_ms = str(int(time.time() * 1000))
    await redis.eval(REBUILD, 2, *account_keys, "3600", now_ms, "300000", "spent", "0")  # type: ignore[misc]
    return key, Budgets(redis, None, timeout_s=5, reservation_ttl_s=600)  # type: ignore[arg-type]


async def account(redis: aioredis.Redis, key: ApiKey) -> tuple[Decimal, Decimal]:
    spent, held = await redis.hmget(keys.budget_account(key.key_id), ["spent", "held"])  # type: ignore[misc]
    return budgets.from_nano(int(spent)), budgets.from_nano(int(held))


async def settled_account(redis: aioredis.Redis, key: ApiKey, timeout_s: float = 10) -> tuple[Decimal, Decimal]:
    """The account once nothing is held: a worker settles just after it writes the ending a client reads."""
    deadline = time.monotonic() + timeout_s
    while (now := await account(redis, key))[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return now


async def test_settling_replaces_the_reservation_by_the_actual_cost_and_only_once(
    redis: aioredis.Redis, tiny_models: tuple[ModelSpec, ...]
) -> None:
    key, store = await budgeted_key(redis)
    job = make_job(tiny_models[0], max_tokens=100, budgeted=True, api_key_id=key.key_id)
    await store.reserve(key, job.request_id, 100 * PRICE_FAR)
    assert await account(redis, key) == (0, 100 * PRICE_FAR)
    assert await settle_reservation(redis, job, 7 * PRICE_FAR)
    assert not await settle_reservation(redis, job, 7 * PRICE_FAR)  # a second ending (a recovery) counts nothing
    assert await account(redis, key) == (7 * PRICE_FAR, 0)


async def test_a_job_without_a_budget_settles_nothing(
    redis: aioredis.Redis, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[0])
    assert not await settle_reservation(redis, job, Decimal(1))
    # No budget or balance key, nor any key of the request, was written (the whole database is not asked: a process
    # an earlier test started may still write its own keys, e.g. a worker's swarm snapshot, after the flush).
    money = (
        keys.BUDGET_PREFIX,
        keys.BUDGET_SETTLED_PREFIX,
        keys.BALANCE_PREFIX,
        keys.BALANCE_HOLD_PREFIX,
        keys.BALANCE_SETTLED_PREFIX,
    )
    written = [key.decode() for key in await redis.keys("*")]
    assert [key for key in written if key.startswith(money) or job.request_id in key] == []


async def test_a_job_ended_without_its_run_settles_at_what_it_billed_and_only_once(
    redis: aioredis.Redis, tiny_models: tuple[ModelSpec, ...]
) -> None:
    key, store = await budgeted_key(redis)
    job = make_job(tiny_models[0], max_tokens=100, budgeted=True, api_key_id=key.key_id)
    await store.reserve(key, job.request_id, 100 * PRICE_FAR)
    for index in range(2):  # delivered by a run that then died; the ending bills them
        token = TokenEvent(
            token=f" t{index}",
            request_id=job.request_id,
            index=index,
            token_id=index + 5,
            tokens_generated=index + 1,
            cost_far=cost_of(index + 1, PRICE_FAR),
        )
        await redis.xadd(keys.token_stream(job.request_id), encode_event(token))  # type: ignore[arg-type]
    error = ErrorBody(code="model_not_served", message="misrouted")
    payload = job.model_dump(mode="json")
    assert await end_abandoned(redis, job.request_id, payload, error, worker_id="w", lease_ttl_s=5)
    assert await account(redis, key) == (2 * PRICE_FAR, 0)
    owner_ttl, stream_ttl = (
        await redis.ttl(keys.request_owner(job.request_id)),
        await redis.ttl(keys.token_stream(job.request_id)),
    )
    assert owner_ttl > stream_ttl > 0  # ownership outlives the ending's stream, as a run's ending leaves it
    assert not await end_abandoned(redis, job.request_id, payload, error, worker_id="w", lease_ttl_s=5)
    assert not await settle_reservation(redis, job, 2 * PRICE_FAR)  # its ending settled it: nothing counts twice
    assert await account(redis, key) == (2 * PRICE_FAR, 0)


async def test_an_invalid_payload_settles_its_owners_reservation_at_nothing(redis: aioredis.Redis) -> None:
    key, store = await budgeted_key(redis)
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    await redis.set(keys.request_owner(request_id), RequestOwner(key.key_id, "some/model").encode())  # the gateway's
    await store.reserve(key, request_id, 100 * PRICE_FAR)
    error = ErrorBody(code="invalid_job", message="the job payload is invalid")
    assert await end_abandoned(redis, request_id, {"max_tokens": -1}, error, worker_id="w", lease_ttl_s=5)
    assert await account(redis, key) == (0, 0)


# hivemind's p2p client drops its unix-socket streams (to the killed peer, to its daemon) without closing them;
# the GC reports them, at whichever test comes next: here, when this test is the first to start the swarm.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function StreamWriter.__del__:pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket.socket fd=\d+, family=1,:pytest.PytestUnraisableExceptionWarning"
)
# Garbage an earlier test of the session left (an unclosed event loop) is collected during the swarm's start-up.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function BaseEventLoop.__del__:pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.swarm
async def test_a_worker_killed_mid_request_releases_its_reservation_through_the_worker_that_finishes_it(
    two_server_swarm: LocalSwarm,
    worker_process_factory: Callable[[dict[str, str]], WorkerProcess],
    tiny_models: tuple[ModelSpec, ...],
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    key, store = await budgeted_key(redis)
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    await store.reserve(key, request_id, 150 * PRICE_FAR)
    job, _, victim = await job_mid_stream_on_two_workers(
        two_server_swarm,
        worker_process_factory,
        tiny_models[0],
        redis,
        redis_url,
        prompt="A budget walks through the gateway",
        max_tokens=150,
        request_id=request_id,
        budgeted=True,
        api_key_id=key.key_id,
    )
    victim.kill()
    done = (await wait_for_end(redis, job.request_id))[-1]
    assert isinstance(done, DoneEvent) and done.total_cost_far == cost_of(done.tokens_generated, PRICE_FAR)
    assert await settled_account(redis, key) == (done.total_cost_far, 0)

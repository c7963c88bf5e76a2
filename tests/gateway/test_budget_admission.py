"""Per-key budgets and limits on a real gateway, real Redis and real PostgreSQL; the synthetic worker settles each
request exactly as a worker does (`workers.budget_settlement.settle_reservation`)."""

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import redis.asyncio as aioredis
from langchain_openai import ChatOpenAI

import schema
from accounting.batch_writer import write_batch
from gateway.api_keys import ApiKey, KeyLimits
from gateway.budget_admission import BudgetExceeded, Budgets
from gateway.commands import _far
from protocol import budgets, keys
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, OTHER_MODEL_ID, PRICE, IssueKey, SyntheticWorker, auth, read_events
from tests.fixtures.ledger import unique_id, usage_record


def _body(max_tokens: int, prompt: str = "Hi") -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "request_id": f"budget-{uuid.uuid4().hex[:12]}"}


async def _generate(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
        if response.status_code != 200:
            return response.status_code, (await response.aread()) and response.json()
        return 200, await read_events(response)


async def _usage(http: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await http.get("/v1/usage", headers=auth(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _settled_budget(http: httpx.AsyncClient, key: str) -> dict[str, Any]:
    """The key's budget once no reservation is open: the worker settles just after it writes the ending, so a
    client reading the done event can be a moment ahead of it."""
    deadline = time.monotonic() + 5
    while True:
        budget: dict[str, Any] = (await _usage(http, key))["budget"]
        if Decimal(budget["held_far"]) == 0 or time.monotonic() > deadline:
            return budget
        await asyncio.sleep(0.02)


async def test_a_request_that_fits_reserves_its_most_and_settles_to_what_it_cost(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key(limits=KeyLimits(max_budget_far=Decimal("0.001")))
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        status, events = await _generate(http, key, _body(max_tokens=4))
        assert status == 200 and events[-1][1]["total_cost_far"] == f"{4 * PRICE:f}"
        budget = await _settled_budget(http, key)
    assert (Decimal(budget["spent_far"]), Decimal(budget["held_far"])) == (4 * PRICE, 0)
    assert Decimal(budget["remaining_far"]) == Decimal("0.001") - 4 * PRICE
    assert synthetic_worker.jobs[0].budgeted


async def test_a_request_that_does_not_fit_is_402_with_what_remains(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key(limits=KeyLimits(max_budget_far=Decimal("0.0003")))
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        status, body = await _generate(http, key, _body(max_tokens=4))
        assert status == 402 and body["error"]["code"] == "budget_exceeded"
        assert body["error"]["details"][0]["remaining_far"] == "0.000300000"
        status, _ = await _generate(http, key, _body(max_tokens=3))  # 3 tokens fit exactly
        assert status == 200
    async with openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.completions.create(model=MODEL_ID, prompt="x", max_tokens=1)
    assert refused.value.status_code == 402 and refused.value.code == "budget_exceeded"
    assert refused.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    async with httpx.AsyncClient(timeout=10) as http:  # LangChain's own client is cached across event loops
        llm = ChatOpenAI(
            model=MODEL_ID,
            base_url=f"{gateway_url}/v1",
            api_key=key,  # type: ignore[arg-type]
            max_retries=0,
            max_tokens=1,  # type: ignore[call-arg]
            http_async_client=http,
        )
        with pytest.raises(openai.APIStatusError) as refused_too:
            await llm.ainvoke("Hi")
    assert refused_too.value.status_code == 402 and "remain" in refused_too.value.message
    assert len(synthetic_worker.jobs) == 1


async def test_concurrent_requests_racing_for_the_last_of_a_budget_never_overspend_it(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    limits = KeyLimits(max_budget_far=10 * PRICE, rate_limit_per_minute=100, max_concurrent_streams=20)
    key, _ = await issue_key(limits=limits)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=20) as http:
        results = await asyncio.gather(*(_generate(http, key, _body(5, "slow race")) for _ in range(8)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 200] + [402] * 6
        budget = await _settled_budget(http, key)
    assert Decimal(budget["spent_far"]) == 10 * PRICE and Decimal(budget["remaining_far"]) == 0


async def test_a_period_budget_refuses_what_the_total_would_allow(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    limits = KeyLimits(max_budget_far=Decimal(1), period_budget_far=4 * PRICE, budget_period="day")
    key, _ = await issue_key(limits=limits)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        assert (await _generate(http, key, _body(max_tokens=4)))[0] == 200
        status, body = await _generate(http, key, _body(max_tokens=1))
    assert status == 402 and body["error"]["details"][0]["limit"] == "period"


async def test_an_expired_key_is_401_and_a_model_outside_its_list_is_403(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    expiring, _ = await issue_key(limits=KeyLimits(expires_at=soon))
    narrow, _ = await issue_key(limits=KeyLimits(allowed_models=(OTHER_MODEL_ID,)))
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        status, body = await _generate(http, expiring, _body(max_tokens=1))
        assert status == 401 and body["error"]["code"] == "key_expired"
        for path in ("/v1/usage", "/v1/files", "/v1/batches"):  # an expired key reads nothing either
            response = await http.get(path, headers=auth(expiring))
            assert response.status_code == 401 and "expired" in response.text, path
        status, body = await _generate(http, narrow, _body(max_tokens=1))
        assert status == 403 and body["error"]["code"] == "model_not_allowed"


async def test_a_keys_own_rate_limit_replaces_the_gateways(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key(limits=KeyLimits(rate_limit_per_minute=1))
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        assert (await _generate(http, key, _body(max_tokens=1)))[0] == 200
        status, body = await _generate(http, key, _body(max_tokens=1))
    assert status == 429 and "1 requests per minute" in body["error"]["message"]


async def test_usage_shows_spend_by_day_model_and_key_as_the_ledger_has_it(
    gateway_url: str, issue_key: IssueKey, migrated_postgres_dsn: str
) -> None:
    key, key_id = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        usage = await _usage(http, key)
        assert usage["object"] == "usage" and usage["budget"]["api_key_id"] == key_id
        assert usage["budget"]["max_budget_far"] is None
        assert all(set(row) >= {"date", "model", "api_key_id", "cost_far"} for row in usage["data"])
        bad = await http.get("/v1/usage", params={"start": "yesterday"}, headers=auth(key))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"
        for edge in ({"end": "9999-12-31"}, {"end": "0001-01-01"}, {"start": "0001-01-01", "end": "0001-01-02"}):
            far = await http.get("/v1/usage", params=edge, headers=auth(key))  # a range worked out past `date`'s ends
            assert far.status_code == 200 and far.json()["data"] == [], edge


async def test_a_reservation_whose_request_never_settles_lapses_and_frees_the_budget(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    """What happens when a request's gateway and every worker die: nobody settles, and the hold expires."""
    key = ApiKey(uuid.uuid4().hex[:16], "0x0", "", KeyLimits(max_budget_far=Decimal("0.001")))
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=1)
    try:
        store = Budgets(redis, pool, timeout_s=5, reservation_ttl_s=0.3)
        await store.reserve(key, "req-a", Decimal("0.001"))
        with pytest.raises(BudgetExceeded):
            await store.reserve(key, "req-b", Decimal("0.0001"))
        await asyncio.sleep(0.4)
        await store.reserve(key, "req-b", Decimal("0.0001"))
        assert (
            await redis.hget(keys.budget_account(key.key_id), "held")
            == str(budgets.to_nano(Decimal("0.0001"))).encode()
        )
    finally:
        await pool.close()


async def test_a_request_id_reserves_once_however_often_its_submission_is_retried(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    """A retry starts a request whose first submission Redis cut short after its reservation (gateway.submission):
    the reservation it finds is the request's, never a second one on top."""
    key = ApiKey(uuid.uuid4().hex[:16], "0x0", "", KeyLimits(max_budget_far=Decimal("0.001")))
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=1)
    try:
        store = Budgets(redis, pool, timeout_s=5, reservation_ttl_s=60)
        for _ in range(2):
            await store.reserve(key, "req-a", Decimal("0.0006"))
        held = await redis.hget(keys.budget_account(key.key_id), "held")
        assert held == str(budgets.to_nano(Decimal("0.0006"))).encode()
    finally:
        await pool.close()


async def _settle(redis: aioredis.Redis, key_id: str, request_id: str, cost_far: Decimal) -> None:
    """What the worker does when a request ends: settle its reservation to its cost (`budgets.SETTLE`)."""
    args = budgets.settle_args(request_id, cost_far, datetime.now(UTC))
    settle_keys = budgets.settle_keys(key_id, request_id)
    assert await redis.eval(budgets.SETTLE, len(settle_keys), *settle_keys, *args) == 1  # type: ignore[misc]


async def _make_rebuild_due(redis: aioredis.Redis, key_id: str) -> None:
    stale = int(time.time() * 1000) - (budgets.RECONCILE_S + 1) * 1000
    await redis.hset(keys.budget_account(key_id), "rebuilt", stale)  # type: ignore[misc]


async def test_an_account_in_use_is_reconciled_with_the_ledger_every_few_minutes(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    """Spend the ledger holds but Redis missed (a worker died between its ending and its settle) is added at the
    next rebuild."""
    key = ApiKey(uuid.uuid4().hex[:16], "0x0", "", KeyLimits(max_budget_far=Decimal("0.001")))
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=1)
    try:
        store = Budgets(redis, pool, timeout_s=5, reservation_ttl_s=60)
        await store.reserve(key, "req-a", Decimal("0.0001"))
        await _settle(redis, key.key_id, "req-a", Decimal("0.0001"))
        missed = usage_record(unique_id("req"), {"peer-a": 1}, tokens_generated=9, price_far=Decimal("0.0001"))
        async with pool.acquire() as connection:
            await write_batch(connection, [missed.model_copy(update={"api_key_id": key.key_id})])
        await _make_rebuild_due(redis, key.key_id)
        with pytest.raises(BudgetExceeded):  # 0.0009 in the ledger + 0.0002 > 0.001
            await store.reserve(key, "req-b", Decimal("0.0002"))
        assert (
            await redis.hget(keys.budget_account(key.key_id), "spent")
            == str(budgets.to_nano(missed.total_cost_far)).encode()
        )
    finally:
        await pool.close()


async def test_a_rebuild_never_lowers_spend_settled_in_redis_that_the_ledger_has_not_written_yet(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    """Accounting lags the settles: a rebuild in that window must not forget the spend, or the key overspends."""
    key = ApiKey(uuid.uuid4().hex[:16], "0x0", "", KeyLimits(max_budget_far=Decimal("0.001")))
    account_key = keys.budget_account(key.key_id)
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=1)
    try:
        store = Budgets(redis, pool, timeout_s=5, reservation_ttl_s=60)
        await store.reserve(key, "req-a", Decimal("0.0008"))
        await _settle(redis, key.key_id, "req-a", Decimal("0.0008"))  # settled; the ledger has nothing yet
        spent_before = await redis.hgetall(account_key)  # type: ignore[misc]
        await _make_rebuild_due(redis, key.key_id)
        with pytest.raises(BudgetExceeded):  # 0.0008 settled + 0.0005 > 0.001, rebuilt or not
            await store.reserve(key, "req-b", Decimal("0.0005"))
        after = await redis.hgetall(account_key)  # type: ignore[misc]
        assert int(after[b"rebuilt"]) > int(time.time() * 1000) - 60_000  # the rebuild did run
        for field, value in spent_before.items():
            if field.startswith(b"spent"):
                assert after[field] == value, field
        await store.reserve(key, "req-c", Decimal("0.0002"))  # what truly remains still fits
    finally:
        await pool.close()


def test_one_bound_on_a_budget_for_the_cli_and_the_ledger() -> None:
    # `far-mesh keys` checks protocol.budgets.MAX_BUDGET_FAR; the ledger's CHECK (a migration, never edited)
    # must hold the same number.
    sql = (Path(schema.__file__).parent / "0012_key_budgets.sql").read_text()
    assert sql.count(f"<= {budgets.MAX_BUDGET_FAR}") == 2
    assert _far(str(budgets.MAX_BUDGET_FAR)) == budgets.MAX_BUDGET_FAR
    with pytest.raises(argparse.ArgumentTypeError, match="between 0 and 9000000 FAR"):
        _far(str(budgets.MAX_BUDGET_FAR + budgets.NANO_FAR))

"""Admission against a wallet's prepaid balance (GATEWAY_REQUIRE_PREPAID_BALANCE) on a real gateway started with
the setting on, real Redis and real PostgreSQL; deposits are journal entries posted directly
(`accounting.journal.post_entry`), and the synthetic worker settles each request as a worker does
(`workers.budget_settlement.settle_reservation`, which settles the balance's hold too)."""

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, cast

import asyncpg
import httpx
import openai
import pytest
import redis.asyncio as aioredis
from eth_account import Account

from accounting.journal import TREASURY_CHAIN, Line, buyer_account, post_entry
from devstack.harness.gateway import start_gateway, stop_gateway
from gateway.api_keys import KeyLimits, KeyStoreUnavailable
from gateway.balances import Balances, InsufficientBalance, ledger_balance
from protocol import balances, budgets, keys
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, PRICE, IssueKey, SseReader, SyntheticWorker, auth, read_events
from tests.fixtures.ledger import unique_id
from workers.budget_settlement import settle_balance, settle_owned_reservation


@pytest.fixture(scope="module")
def prepaid_gateway_url(gateway_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**gateway_env, "GATEWAY_REQUIRE_PREPAID_BALANCE": "true"}
    process, url = start_gateway(env, tmp_path_factory.mktemp("prepaid-gateway") / "gateway.log")
    yield url
    stop_gateway(process)


def a_wallet() -> str:
    return str(Account.create().address)


async def deposit(dsn: str, wallet: str, amount: Decimal) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        lines = [Line(TREASURY_CHAIN, amount), Line(buyer_account(wallet), -amount)]
        await post_entry(connection, "deposit", unique_id("test"), lines)
    finally:
        await connection.close()


def _body(max_tokens: int, prompt: str = "Hi") -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "request_id": f"prepaid-{uuid.uuid4().hex[:12]}"}


async def _generate(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
        if response.status_code != 200:
            return response.status_code, (await response.aread()) and response.json()
        return 200, await read_events(response)


async def _account(redis: aioredis.Redis, wallet: str) -> dict[str, int]:
    """The wallet's balance account once no hold is open (the worker settles just after writing the ending)."""
    deadline = time.monotonic() + 5
    while True:
        raw = await redis.hgetall(keys.balance_account(wallet))  # type: ignore[misc]
        account = {k.decode(): int(v) for k, v in raw.items()}
        if account.get("held", 0) == 0 or time.monotonic() > deadline:
            return account
        await asyncio.sleep(0.02)


async def test_a_wallet_without_deposits_is_402_on_both_apis_and_admitted_when_the_setting_is_off(
    prepaid_gateway_url: str,
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
) -> None:
    key, _ = await issue_key(wallet=a_wallet())
    async with httpx.AsyncClient(base_url=prepaid_gateway_url, timeout=10) as http:
        status, body = await _generate(http, key, _body(max_tokens=4))
    assert status == 402 and body["error"]["code"] == "insufficient_balance"
    assert body["error"]["details"][0] == {"balance_far": "0.000000000", "max_cost_far": f"{4 * PRICE:f}"}
    assert "balance" in body["error"]["message"] and f"{4 * PRICE:f}" in body["error"]["message"]
    async with openai.AsyncOpenAI(base_url=f"{prepaid_gateway_url}/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.completions.create(model=MODEL_ID, prompt="x", max_tokens=1)
    assert refused.value.status_code == 402 and refused.value.code == "insufficient_balance"
    assert refused.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert "0.000000000 FAR available" in refused.value.message
    async with httpx.AsyncClient(base_url=prepaid_gateway_url, timeout=10) as http:  # n choices: n × max_tokens
        status, body = await _generate(http, key, {**_body(max_tokens=4), "n": 3})
    assert status == 402 and body["error"]["details"][0]["max_cost_far"] == f"{12 * PRICE:f}"
    assert synthetic_worker.jobs == []

    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:  # the setting off: admitted
        status, events = await _generate(http, key, _body(max_tokens=2))
    assert status == 200 and events[-1][1]["tokens_generated"] == 2


async def test_a_deposit_makes_a_wallet_admissible_and_its_hold_settles_at_the_actual_cost(
    prepaid_gateway_url: str,
    redis: aioredis.Redis,
    migrated_postgres_dsn: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
) -> None:
    wallet = a_wallet()
    key, _ = await issue_key(wallet=wallet)
    async with httpx.AsyncClient(base_url=prepaid_gateway_url, timeout=10) as http:
        assert (await _generate(http, key, _body(max_tokens=4)))[0] == 402
        await deposit(migrated_postgres_dsn, wallet, Decimal("0.01"))  # credited after that refusal
        body = _body(max_tokens=50, prompt="hold on")
        async with http.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert response.status_code == 200
            reader = SseReader(response)
            await reader.events(limit=2)
            held = await redis.hget(keys.balance_account(wallet), "held")  # type: ignore[misc]
            assert int(held) == budgets.to_nano(50 * PRICE)  # the most it can cost
            cancel = await http.post(f"/inference/{body['request_id']}/cancel", headers=auth(key))
            assert cancel.status_code < 300
            events = await reader.events()
        cost = Decimal(events[-1][1]["total_cost_far"])
        assert 0 < cost < 50 * PRICE
        account = await _account(redis, wallet)
        assert account["held"] == 0 and account[balances.CHARGED] == budgets.to_nano(cost)  # the actual cost
        assert account[balances.CREDITED] == budgets.to_nano(Decimal("0.01"))
        assert await settle_balance(redis, body["request_id"], cost) is False  # once per request id

        usage = (await http.get("/v1/usage", headers=auth(key))).json()
    # the journal has the deposit; the charge reaches it when accounting stores the session
    assert usage["balance"] == {
        "balance_far": "0.010000000000000000",
        "held_far": "0.000000000",
        "available_far": "0.010000000000000000",
        "required": True,
    }


async def test_twenty_requests_racing_for_the_last_of_a_balance_never_overspend_it(
    prepaid_gateway_url: str,
    redis: aioredis.Redis,
    migrated_postgres_dsn: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
) -> None:
    wallet = a_wallet()
    await deposit(migrated_postgres_dsn, wallet, 10 * PRICE)
    limits = KeyLimits(rate_limit_per_minute=100, max_concurrent_streams=20)
    key, _ = await issue_key(wallet=wallet, limits=limits)
    async with httpx.AsyncClient(base_url=prepaid_gateway_url, timeout=20) as http:
        results = await asyncio.gather(*(_generate(http, key, _body(5, "slow race")) for _ in range(20)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200] + [402] * 18
    assert {body["error"]["code"] for status, body in results if status == 402} == {"insufficient_balance"}
    account = await _account(redis, wallet)
    assert account["held"] == 0 and account[balances.CHARGED] == account[balances.CREDITED] == budgets.to_nano(
        10 * PRICE
    )


async def test_a_hold_nobody_settles_lapses_and_a_key_budget_still_applies_on_top(
    prepaid_gateway_url: str,
    redis: aioredis.Redis,
    migrated_postgres_dsn: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
) -> None:
    wallet = a_wallet()
    await deposit(migrated_postgres_dsn, wallet, Decimal(1))
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=1)
    try:
        store = Balances(redis, pool, timeout_s=5, hold_ttl_s=0.3)
        await store.hold(wallet, "req-a", Decimal(1))
        with pytest.raises(InsufficientBalance):
            await store.hold(wallet, "req-b", Decimal("0.1"))
        await asyncio.sleep(0.4)
        await store.hold(wallet, "req-b", Decimal("0.1"))  # req-a's hold lapsed
        await store.hold(wallet, "req-b", Decimal("0.1"))  # a retried submission: req-b holds once, not twice
        assert int(await redis.hget(keys.balance_account(wallet), "held")) == budgets.to_nano(Decimal("0.1"))  # type: ignore[misc]
        await store.release(wallet, "req-b")
        assert int(await redis.hget(keys.balance_account(wallet), "held")) == 0  # type: ignore[misc]
    finally:
        await pool.close()

    key, _ = await issue_key(wallet=wallet, limits=KeyLimits(max_budget_far=3 * PRICE))
    async with httpx.AsyncClient(base_url=prepaid_gateway_url, timeout=10) as http:
        status, body = await _generate(http, key, _body(max_tokens=4))
        assert status == 402 and body["error"]["code"] == "budget_exceeded"
        assert (await _generate(http, key, _body(max_tokens=3)))[0] == 200
    account = await _account(redis, wallet)
    assert account["held"] == 0 and account[balances.CHARGED] == budgets.to_nano(3 * PRICE)


async def test_a_job_ended_without_running_settles_its_hold_by_request_id_once(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    """An invalid payload's ending knows only the request id (`settle_owned_reservation`): the hold names its
    wallet, so it is settled all the same, at what the ending billed, and a second ending counts nothing."""
    wallet = a_wallet()
    await deposit(migrated_postgres_dsn, wallet, Decimal(1))
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=1)
    try:
        await Balances(redis, pool, timeout_s=5, hold_ttl_s=60).hold(wallet, "req-invalid", Decimal("0.5"))
    finally:
        await pool.close()
    assert await settle_owned_reservation(redis, "req-invalid", Decimal(0)) is False  # no key budget to settle
    await settle_balance(redis, "req-invalid", Decimal("0.2"))  # a second ending
    account = await _account(redis, wallet)
    assert (account["held"], account[balances.CHARGED]) == (0, 0)
    assert await redis.exists(keys.balance_hold("req-invalid")) == 0


def _documented_schema(document: dict[str, Any], path: str, status: str) -> dict[str, Any]:
    """The JSON schema the OpenAPI document gives `path`'s POST `status` response (a component, by its $ref)."""
    ref = document["paths"][path]["post"]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


async def test_the_402_insufficient_balance_bodies_are_the_ones_the_openapi_document_states(
    prepaid_gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    """Each generation endpoint documents its 402 in its own error shape, and a real refusal matches it."""
    from jsonschema import Draft202012Validator

    key, _ = await issue_key(wallet=a_wallet())
    async with httpx.AsyncClient(base_url=prepaid_gateway_url, timeout=10) as http:
        document = (await http.get("/openapi.json")).json()
        refusals = {
            "/inference/generate": await _generate(http, key, _body(max_tokens=4)),
            "/v1/completions": await _post(http, key, "/v1/completions", {"model": MODEL_ID, "prompt": "x"}),
            "/v1/chat/completions": await _post(
                http, key, "/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}]}
            ),
        }
    for path, (status, body) in refusals.items():
        assert status == 402, (path, body)
        schema = _documented_schema(document, path, "402")
        Draft202012Validator(schema).validate(body)
        assert body["error"]["code"] == "insufficient_balance"
        if path.startswith("/v1"):
            assert schema == document["components"]["schemas"]["OpenAIError"] and body["error"]["param"] == "max_tokens"
        else:
            assert "insufficient_balance" in schema["properties"]["error"]["properties"]["code"]["enum"]
            assert set(body["error"]["details"][0]) == {"balance_far", "max_cost_far"}
    assert synthetic_worker.jobs == []


async def _post(http: httpx.AsyncClient, key: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await http.post(path, json={**body, "max_tokens": 4}, headers=auth(key))
    return response.status_code, response.json()


async def test_a_pooled_connection_left_mid_operation_answers_unavailable_not_an_internal_error() -> None:
    """InternalClientError ("another operation is in progress"), from a connection a PostgreSQL restart left
    mid-operation, is the ledger being away (503, retry), as a lost connection is, not the gateway failing (500)."""

    class LeftMidOperation:
        async def fetchrow(self, *args: object, **kwargs: object) -> None:
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress")

    with pytest.raises(KeyStoreUnavailable, match="InternalClientError"):
        await ledger_balance(cast(asyncpg.Pool, LeftMidOperation()), "0x" + "ab" * 20, 1.0)

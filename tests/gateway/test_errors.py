"""Every bad input gets a 4xx JSON error naming the field and the problem; an outage gets a 503."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from devstack.redis_server import RedisServer
from mesh.ports import free_port
from protocol import keys
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import (
    MODEL_ID,
    OTHER_MODEL_ID,
    IssueKey,
    SseReader,
    auth,
    snapshot,
    start_gateway,
    stop_gateway,
)

GOOD_BODY = {"prompt": "hello", "max_tokens": 4}


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["code"] and error["message"] and "Traceback" not in response.text
    return error


@pytest.fixture
async def client(gateway_url: str) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        yield client  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 4}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 65}, "max_tokens"),  # over the configured cap of 64
        ({"prompt": "x" * 1001}, "prompt"),  # over the configured cap of 1000 characters
        ({"prompt": "x", "user_wallet": "0x742d35cc6634c0532925a3b844bc454e4438f4"}, "user_wallet"),
        ({"prompt": "x", "request_id": "has space"}, "request_id"),
        ({"prompt": "x", "model_id": "../etc"}, "model_id"),
        ({"prompt": "x", "tempreature": 0.5}, "tempreature"),
    ],
)
async def test_invalid_fields_get_422_naming_the_field(
    client: httpx.AsyncClient, issue_key: IssueKey, body: dict[str, object], field: str, healthy_swarm: SwarmSnapshot
) -> None:
    key, _ = await issue_key()
    error = error_of(await client.post("/inference/generate", json=body, headers=auth(key)), 422)
    assert error["field"] == field
    assert error["details"][0]["loc"] == ["body", field] and error["details"][0]["msg"]  # type: ignore[index]


async def test_a_body_that_is_not_json_gets_422_and_a_wrong_content_type_415(
    client: httpx.AsyncClient, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    headers = {**auth(key), "content-type": "application/json"}
    assert (
        "JSON" in error_of(await client.post("/inference/generate", content=b"{nope", headers=headers), 422)["message"]
    )
    text = {**auth(key), "content-type": "text/plain"}
    error_of(await client.post("/inference/generate", content=b"hi", headers=text), 415)


async def test_a_body_over_the_size_cap_gets_413(client: httpx.AsyncClient, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    error_of(await client.post("/inference/generate", json={"prompt": "x" * 5000}, headers=auth(key)), 413)

    async def chunked():  # no Content-Length: the cap must hold while reading
        for _ in range(10):
            yield b"x" * 1000

    error_of(await client.post("/inference/generate", content=chunked(), headers=auth(key)), 413)


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer fmk_0123456789abcdef_" + "a" * 43, "Bearer x"])
async def test_missing_or_wrong_api_keys_get_401(client: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = await client.post("/inference/generate", json=GOOD_BODY, headers=headers)
    error_of(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_right_key_id_with_a_wrong_secret_gets_401(client: httpx.AsyncClient, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    error_of(await client.post("/inference/generate", json=GOOD_BODY, headers=auth(forged)), 401)


async def test_a_user_wallet_other_than_the_keys_gets_403(
    client: httpx.AsyncClient, issue_key: IssueKey, healthy_swarm: SwarmSnapshot
) -> None:
    key, _ = await issue_key()
    body = {**GOOD_BODY, "user_wallet": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"}
    assert (
        error_of(await client.post("/inference/generate", json=body, headers=auth(key)), 403)["field"] == "user_wallet"
    )


async def test_unknown_models_requests_and_routes_get_404(client: httpx.AsyncClient, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    body = {**GOOD_BODY, "model_id": "nobody/sells-this"}
    assert error_of(await client.post("/inference/generate", json=body, headers=auth(key)), 404)["field"] == "model_id"
    error_of(await client.get("/inference/req_never/stream", headers=auth(key)), 404)
    error_of(await client.post("/inference/req_never/cancel", headers=auth(key)), 404)
    error_of(await client.get("/nowhere"), 404)
    error_of(await client.delete("/inference/generate"), 405)
    error_of(await client.get("/mesh/status", params={"model_id": "nobody/sells-this"}), 404)


async def test_a_bad_last_event_id_gets_422(client: httpx.AsyncClient, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    headers = {**auth(key), "Last-Event-ID": "yesterday"}
    assert error_of(await client.get("/inference/req_x/stream", headers=headers), 422)["field"] == "Last-Event-ID"


async def test_a_last_event_id_past_the_end_of_a_running_stream_gets_422_not_a_wait_for_ever(
    client: httpx.AsyncClient, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, key_id = await issue_key()
    await redis.set(keys.request_owner("req_running"), f"{key_id} {MODEL_ID}")
    sent = (await redis.xadd(keys.token_stream("req_running"), {"kind": "token", "data": "{}"})).decode()
    later = f"{int(sent.split('-')[0]) + 60_000}-0"  # another request's, a minute on, or made up
    headers = {**auth(key), "Last-Event-ID": later}
    error = error_of(await client.get("/inference/req_running/stream", headers=headers), 422)
    assert error["field"] == "Last-Event-ID" and "for this request" in error["message"]


async def test_another_keys_request_cannot_be_followed_or_cancelled(
    client: httpx.AsyncClient, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    _, owner_id = await issue_key()
    await redis.set(keys.request_owner("req_theirs"), f"{owner_id} {MODEL_ID}")
    error_of(await client.get("/inference/req_theirs/stream", headers=auth(key)), 403)
    error_of(await client.post("/inference/req_theirs/cancel", headers=auth(key)), 403)


async def test_no_fresh_healthy_snapshot_gets_503(
    client: httpx.AsyncClient, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    body = {**GOOD_BODY, "model_id": OTHER_MODEL_ID}
    assert error_of(await client.post("/inference/generate", json=body, headers=auth(key)), 503)["code"] == (
        "no_healthy_swarm"
    )
    stale = snapshot(taken_at=datetime.now(UTC) - timedelta(minutes=5))
    await redis.hset(keys.SWARM_SNAPSHOTS, MODEL_ID, stale.model_dump_json())  # type: ignore[misc]
    error_of(await client.post("/inference/generate", json=GOOD_BODY, headers=auth(key)), 503)
    await redis.hset(keys.SWARM_SNAPSHOTS, MODEL_ID, snapshot(online=False).model_dump_json())  # type: ignore[misc]
    response = await client.post("/inference/generate", json=GOOD_BODY, headers=auth(key))
    assert "no online server" in error_of(response, 503)["message"] and response.headers["retry-after"]


async def test_the_rate_limit_answers_429_with_retry_after(
    client: httpx.AsyncClient, issue_key: IssueKey, healthy_swarm: SwarmSnapshot, synthetic_worker: object
) -> None:
    key, _ = await issue_key()
    for _ in range(12):  # the configured limit per minute; each stream runs to its end
        async with client.stream("POST", "/inference/generate", json=GOOD_BODY, headers=auth(key)) as response:
            assert response.status_code == 200
            await SseReader(response).events()
    response = await client.post("/inference/generate", json=GOOD_BODY, headers=auth(key))
    assert error_of(response, 429)["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_more_concurrent_streams_than_allowed_get_429(
    client: httpx.AsyncClient, issue_key: IssueKey, healthy_swarm: SwarmSnapshot, synthetic_worker: object
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "hold this", "max_tokens": 4}
    streams = [client.stream("POST", "/inference/generate", json=body, headers=auth(key)) for _ in range(3)]
    opened = [await s.__aenter__() for s in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        response = await client.post("/inference/generate", json=body, headers=auth(key))
        assert error_of(response, 429)["code"] == "too_many_streams" and response.headers["retry-after"]
    finally:
        for s in streams:
            await s.__aexit__(None, None, None)


async def test_redis_going_away_gets_503_not_500(
    migrated_postgres_dsn: str, gateway_env: dict[str, str], tmp_path: Path, issue_key: IssueKey
) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()
    process, url = start_gateway({**gateway_env, "REDIS_URL": redis_server.url}, tmp_path / "gateway.log")
    try:
        key, _ = await issue_key()
        redis_server.stop()
        async with httpx.AsyncClient(base_url=url, timeout=15) as client:
            error = error_of(await client.post("/inference/generate", json=GOOD_BODY, headers=auth(key)), 503)
            assert error["code"] == "redis_unavailable"
            assert (await client.get("/health")).status_code == 503
    finally:
        stop_gateway(process)
        redis_server.stop()


async def test_an_unreachable_key_store_gets_503_and_the_gateway_still_starts(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    process, url = start_gateway({**gateway_env, "POSTGRES_URL": nowhere}, tmp_path / "gateway.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=15) as client:
            response = await client.post(
                "/inference/generate", json=GOOD_BODY, headers=auth("fmk_" + "0" * 16 + "_" + "a" * 43)
            )
            assert error_of(response, 503)["code"] == "key_store_unavailable"
    finally:
        stop_gateway(process)
    assert "nothing" not in (tmp_path / "gateway.log").read_text()  # no DSN in the logs

"""Every SSE response ends: after its final event, at the gateway's deadline, or when its client stops reading.

Against a real gateway (a second one with a short deadline and a small unsent-bytes bound) and a real Redis.
"""

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.inflight import FollowedRequest, Inflight
from gateway.sse import EventStreamResponse
from protocol import keys
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import IssueKey, SyntheticWorker, auth, read_events, start_gateway, stop_gateway
from tests.fixtures.ledger import unique_id

DEADLINE_S = 1.5


@pytest.fixture(scope="module")
def strict_gateway_url(gateway_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose streams end after DEADLINE_S."""
    env = {**gateway_env, "GATEWAY_STREAM_DEADLINE_S": str(DEADLINE_S)}
    process, url = start_gateway(env, tmp_path_factory.mktemp("strict-gateway") / "gateway.log")
    yield url
    stop_gateway(process)


@pytest.fixture(scope="module")
def small_buffer_gateway(
    gateway_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A gateway whose clients may leave only 1 KiB of events unread; (its URL, its log)."""
    log_path = tmp_path_factory.mktemp("small-buffer-gateway") / "gateway.log"
    process, url = start_gateway({**gateway_env, "GATEWAY_MAX_UNSENT_BYTES": "1024"}, log_path)
    yield url, log_path
    stop_gateway(process)


async def test_resuming_after_the_final_event_answers_204_at_once_so_event_sources_stop_reconnecting(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "short", "max_tokens": 3, "request_id": unique_id("ended")}
    path = f"/inference/{body['request_id']}/stream"
    async with httpx.AsyncClient(base_url=gateway_url, timeout=5) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            events = await read_events(response)
        final_id, second_id = events[-1][0], events[1][0]
        assert final_id is not None and second_id is not None
        started = time.monotonic()
        at_end = await client.get(path, headers={**auth(key), "Last-Event-ID": final_id})
        ms, _, seq = final_id.partition("-")
        past_end = await client.get(path, headers={**auth(key), "Last-Event-ID": f"{ms}-{int(seq) + 5}"})
        assert time.monotonic() - started < 2
        assert (at_end.status_code, at_end.content) == (204, b"")
        assert past_end.status_code == 204
        async with client.stream("GET", path, headers={**auth(key), "Last-Event-ID": second_id}) as response:
            assert [event_id for event_id, _ in await read_events(response)] == [e[0] for e in events[2:]]


async def test_a_stream_past_the_deadline_gets_an_error_event_and_its_request_is_cancelled(
    strict_gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "hold it", "max_tokens": 4, "request_id": unique_id("endless")}
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=strict_gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            events = await read_events(response)
    assert DEADLINE_S <= time.monotonic() - started < DEADLINE_S + 5
    event_id, last = events[-1]
    assert event_id is None and last["error"]["code"] == "stream_deadline"
    assert all("token" in data for _, data in events[:-1])
    assert await redis.get(keys.cancel_flag(body["request_id"])) is not None
    await wait_for_final_kind(redis, body["request_id"], "done")  # the worker stopped and billed what it made


async def test_a_non_streaming_openai_call_past_the_deadline_answers_504_and_is_cancelled(
    strict_gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    key, _ = await issue_key()
    body = {"model": "test/tiny-llama", "prompt": "hold that", "max_tokens": 4, "request_id": unique_id("slow")}
    async with httpx.AsyncClient(base_url=strict_gateway_url, timeout=10) as client:
        response = await client.post("/v1/completions", json=body, headers=auth(key))
    assert response.status_code == 504 and response.json()["error"]["code"] == "stream_deadline"
    assert response.headers["x-should-retry"] == "false"  # OpenAI's clients ran (and billed) it twice more
    await wait_for_final_kind(redis, body["request_id"], "done")


async def test_a_streamed_openai_call_past_the_deadline_ends_with_an_error_chunk_not_a_cut_connection(
    strict_gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    key, _ = await issue_key()
    body = {
        "model": "test/tiny-llama",
        "prompt": "hold this",
        "max_tokens": 4,
        "stream": True,
        "request_id": unique_id("slow-stream"),
    }
    async with httpx.AsyncClient(base_url=strict_gateway_url, timeout=10) as client:
        async with client.stream("POST", "/v1/completions", json=body, headers=auth(key)) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_deadline" and "billed" in error["message"]
    await wait_for_final_kind(redis, body["request_id"], "done")


async def test_a_client_that_never_reads_is_cut_off_and_its_slot_and_request_released(
    small_buffer_gateway: tuple[str, Path],
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    url, log_path = small_buffer_gateway
    key, key_id = await issue_key()
    request_id = unique_id("unread")
    payload = json.dumps({"prompt": "flood it", "max_tokens": 4, "request_id": request_id}).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.connect((host, int(port)))
    try:
        head = (
            f"POST /inference/generate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        sock.sendall(head.encode() + payload)  # and never read a byte
        async with asyncio.timeout(30):
            while not await redis.exists(keys.token_stream(request_id)):
                await asyncio.sleep(0.05)
            while await redis.zcard(keys.active_streams(key_id)):  # the cut-off connection gave its slot back
                await asyncio.sleep(0.1)
            while not await redis.exists(keys.cancel_flag(request_id)):  # and nobody came back within the grace
                await asyncio.sleep(0.1)
    finally:
        sock.close()
    assert f"stream cut off request_id={request_id} reason=overflow" in log_path.read_text()


class RedisAway:
    """A relay whose subscriptions fail as they do while Redis is unreachable."""

    async def subscribe(self, *args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Connection refused")

    def unsubscribe(self, sub: object) -> None:
        raise AssertionError("nothing was subscribed")


async def test_a_response_that_cannot_subscribe_gives_its_slot_back(redis: aioredis.Redis) -> None:
    """Leaked slots would lock the key out with 429s until the process restarts."""
    inflight = Inflight(redis, lease_s=30, cancel_grace_s=0)
    followed = FollowedRequest("key-1", "model-1", "req-1")
    for _ in range(3):
        slot = await inflight.admit(followed, 3)
        assert slot is not None

        async def on_close(finished: bool, client_left: bool, slot: object = slot) -> None:
            await inflight.release(slot, finished=finished, client_left=client_left)  # type: ignore[arg-type]

        response = EventStreamResponse(
            RedisAway(),  # type: ignore[arg-type]
            keys.token_stream("req-1"),
            request_id="req-1",
            on_open=lambda slot=slot: inflight.attach(slot),  # type: ignore[misc]
            on_close=on_close,
            on_deadline=lambda: asyncio.sleep(0),
            deadline_s=60,
            max_unsent_bytes=1 << 20,
        )
        with pytest.raises(RedisConnectionError):
            await response({"type": "http"}, _never_receive, _no_send)
    assert await inflight.admit(followed, 3) is not None
    assert inflight._local == set()  # nothing left to renew forever


async def _never_receive() -> dict[str, object]:
    await asyncio.Event().wait()
    raise AssertionError


async def _no_send(message: object) -> None:
    raise AssertionError("nothing may be sent before subscribing")


async def wait_for_final_kind(redis: aioredis.Redis, request_id: str, kind: str) -> None:
    async with asyncio.timeout(10):
        while True:
            last = await redis.xrevrange(keys.token_stream(request_id), count=1)
            if last and last[0][1][b"kind"] == kind.encode():
                return
            await asyncio.sleep(0.05)

"""A session's token writes from the pool thread, against a real Redis: the same fenced script as the event loop's."""

import asyncio
import socket
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol import keys
from protocol.events import TokenEvent
from workers.pipelined_writes import PipelinedTokenWrites
from workers.stream import StreamSoFar, TokenStreamWriter, Written


def token(index: int) -> TokenEvent:
    return TokenEvent(
        token=f"t{index}", request_id="req-1", index=index, token_id=index, tokens_generated=index + 1, cost_far=0
    )


async def test_tokens_written_from_a_thread_are_fenced_counted_and_survive_redis_forgetting_its_scripts(
    redis: aioredis.Redis, redis_url: str
) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    writes = PipelinedTokenWrites(redis_url, writer, timeout_s=5)

    def write(index: int) -> Written:
        writes.send(token(index), None)
        return writes.result()

    assert await asyncio.to_thread(write, 0) is Written.WRITTEN
    await redis.script_flush()  # as a restarted Redis: the thread's next write sends the script whole
    assert await asyncio.to_thread(write, 1) is Written.WRITTEN
    await writer.append_token(token(2))  # the event loop's writes and the thread's count the same entries
    assert await asyncio.to_thread(write, 3) is Written.WRITTEN

    usurper = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    await usurper.acquire()
    assert await asyncio.to_thread(write, 4) is Written.SUPERSEDED
    writes.close()
    assert await redis.xlen(keys.token_stream("req-1")) == 4


async def test_a_write_whose_reply_was_left_unread_is_recognised_when_sent_again_on_a_fresh_connection(
    redis: aioredis.Redis, redis_url: str
) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    writes = PipelinedTokenWrites(redis_url, writer, timeout_s=5)
    await asyncio.to_thread(writes.send, token(0), None)
    writes.close()  # the reply is unread: the connection is dropped, never handed to the next write

    def write(index: int) -> Written:
        writes.send(token(index), None)
        return writes.result()

    assert await asyncio.to_thread(write, 0) is Written.WRITTEN  # the same token again: already on the stream
    assert await asyncio.to_thread(write, 1) is Written.WRITTEN
    writes.close()
    entries = await redis.xrange(keys.token_stream("req-1"))
    assert StreamSoFar.parse(entries, cancelled=False).token_ids == (0, 1)


async def test_a_renewal_overtaken_by_the_threads_writes_still_holds_the_lease(
    redis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    writes = PipelinedTokenWrites(redis_url, writer, timeout_s=5)
    fenced = writer._fenced

    async def overtaken(script: str, *args: Any) -> Written:
        if script == "renew" and writer._written == 0:  # two tokens land after the renewal read its count
            for index in (0, 1):
                await asyncio.to_thread(writes.send, token(index), None)
                assert await asyncio.to_thread(writes.result) is Written.WRITTEN
        return await fenced(script, *args)

    monkeypatch.setattr(writer, "_fenced", overtaken)
    assert await writer.renew() is Written.WRITTEN
    writes.close()


async def test_a_redis_gone_silent_hands_the_write_back_within_the_timeout(redis: aioredis.Redis) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers: a partition, not a restart
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    writes = PipelinedTokenWrites(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", writer, timeout_s=0.2)

    def write() -> None:
        writes.send(token(0), None)
        writes.result()

    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        await asyncio.to_thread(write)
    assert time.monotonic() - started < 2
    writes.close()
    silent.close()

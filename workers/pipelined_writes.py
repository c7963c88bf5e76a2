"""One session's token writes, made by the pool thread that steps the session, each overlapping the next step.

The thread that chooses a token sends its fenced token script (`workers.stream`, the same call the event loop
makes) on a synchronous connection held for the session, takes the next step while the write travels, and reads
the reply after that step, when it has long arrived. A token therefore costs one Redis round trip off the critical
path, as when the event loop wrote it, without the two thread crossings per token (the event loop handing each
step to the pool, the pool handing its result back) that were most of the worker's CPU over a Petals client
driven directly (docs/performance.md).

A connection error (Redis away, restarted) is not retried here: the caller hands that write to the event loop's
outage retry, whose fenced script recognises a write that landed before its reply was lost. The connection is
then dropped, so an unread reply never reaches the next write.
"""

import threading
import time
from typing import Any

import redis
from redis.exceptions import NoScriptError

from protocol.events import TokenEvent
from protocol.served_steps import ServedStep
from workers.stream import TokenStreamWriter, Written

_pools: dict[tuple[str, float], "redis.ConnectionPool"] = {}
_pools_lock = threading.Lock()


def _pool(redis_url: str, timeout_s: float) -> "redis.ConnectionPool":
    """One synchronous pool per Redis URL (and timeout) per process, shared by every session's thread."""
    with _pools_lock:
        pool = _pools.get((redis_url, timeout_s))
        if pool is None:
            pool = _pools[(redis_url, timeout_s)] = redis.ConnectionPool.from_url(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        return pool


class PipelinedTokenWrites:
    """The token writes of one session's thread: `send` one, then `result` it (after the next step); one at a time."""

    def __init__(self, redis_url: str, writer: TokenStreamWriter, *, timeout_s: float) -> None:
        """`timeout_s`: how long a write may go unanswered before it is the event loop's (the lease's TTL: by
        then the lease has lapsed anyway); a Redis gone silent must not hold the thread, and with it a stopping
        worker, forever."""
        self._pool = _pool(redis_url, timeout_s)
        self._writer = writer
        self._sha, self._source = writer.token_script()
        self._connection: Any = None
        self._sent: tuple[list[str], list[str | int]] | None = None
        """The call whose reply is unread."""
        self._sent_at = 0.0
        """When (monotonic) that call was sent: its script renews the lease no earlier."""

    def send(self, event: TokenEvent, step: ServedStep | None) -> None:
        """Send `event`'s token script (and its step's route); its reply waits for `result`."""
        assert self._sent is None, "the previous write's reply is unread"
        script_keys, args = self._writer.token_call(event, step)
        if self._connection is None:
            self._connection = self._pool.get_connection()
        self._sent = (script_keys, args)
        self._sent_at = time.monotonic()
        try:
            self._connection.send_command("EVALSHA", self._sha, len(script_keys), *script_keys, *args)
        except BaseException:
            self._drop()
            raise

    def result(self) -> Written:
        """What the write `send` sent found (blocking until its reply is read: by then it has usually arrived)."""
        assert self._sent is not None and self._connection is not None, "nothing was sent"
        script_keys, args = self._sent
        try:
            try:
                reply = self._connection.read_response()
            except NoScriptError:  # Redis restarted and lost its script cache: the script did not run, so send it whole
                self._connection.send_command("EVAL", self._source, len(script_keys), *script_keys, *args)
                reply = self._connection.read_response()
        except BaseException:
            self._drop()
            raise
        self._sent = None
        written = Written(int(reply))
        if written is Written.WRITTEN:
            self._writer.token_written(self._sent_at)
        return written

    def close(self) -> None:
        """Hand the connection back to the pool, or drop it if a reply is still unread."""
        if self._sent is not None:
            self._drop()
        elif self._connection is not None:
            self._pool.release(self._connection)
            self._connection = None

    def _drop(self) -> None:
        connection, self._connection, self._sent = self._connection, None, None
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)

"""Server-Sent Events relayed from one token stream, ending after its done or error event.

Each event's `id:` is the stream entry id, so `Last-Event-ID` resumes exactly after it on any replica. Idle
connections get a keep-alive comment every GATEWAY_HEARTBEAT_INTERVAL_S. The response follows its request as
every route does (`gateway.following`: slot, subscription, deadline, disconnect watch, cancel, release).

Every response ends, whatever the stream does: past its deadline the client gets an error event (without an
id, so a resume still starts after the last real event) and the request is cancelled; a client that stops
reading is cut off once its unsent events pass a bound, even while a write to it is stuck.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.direct_send import direct_send
from gateway.following import Following, Hooks, OnClose, follow
from gateway.relay import Entry, StreamRelay, Subscription
from protocol.error_codes import StreamErrorCode
from protocol.events import ErrorEvent
from protocol.stream_ids import BEFORE_FIRST

log = logging.getLogger(__name__)

KEEP_ALIVE = b": keep-alive\n\n"
Render = Callable[[Entry], bytes]
FINAL_WRITE_TIMEOUT_S = 5.0
"""How long the deadline's error event may take to be written before the connection is given up."""


def sse_event(data: bytes, event_id: str) -> bytes:
    if not event_id:
        return b"data: %s\n\n" % data
    return b"id: %s\ndata: %s\n\n" % (event_id.encode(), data)


def render_native(entry: Entry) -> bytes:
    return sse_event(entry.data, entry.entry_id)


def deadline_entry(request_id: str, deadline_s: float) -> Entry:
    """The error event a client gets when its stream outlives GATEWAY_STREAM_DEADLINE_S (it has no entry id)."""
    message = f"the request was still running after {deadline_s:g} s, the gateway's limit; it was cancelled"
    error = {"error": {"code": StreamErrorCode.STREAM_DEADLINE, "message": message}, "request_id": request_id}
    return Entry("", ErrorEvent.kind, json.dumps(error).encode())


class EventStreamResponse(Response):
    """An ASGI response relaying `stream` after `after_id`, rendered event by event with `render`; `on_open`,
    `on_close` and `on_deadline` are the `Hooks` of following it (`gateway.following.slot_hooks` for a slot's)."""

    def __init__(
        self,
        relay: StreamRelay,
        stream: str,
        *,
        request_id: str,
        after_id: str = BEFORE_FIRST,
        render: Render = render_native,
        on_open: Callable[[], None],
        on_close: OnClose,
        on_deadline: Callable[[], Awaitable[None]],
        deadline_s: float,
        max_unsent_bytes: int,
        headers: Mapping[str, str] | None = None,
        active_gauge: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.relay = relay
        self.stream = stream
        self.request_id = request_id
        self.after_id = after_id
        self.render_entry = render
        self.hooks = Hooks(on_open, on_close, on_deadline)
        self.deadline_s = deadline_s
        self.max_unsent_bytes = max_unsent_bytes
        self.extra_headers = dict(headers or {})
        self.active_gauge = active_gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with follow(
            self.relay,
            self.stream,
            self.hooks,
            deadline_s=self.deadline_s,
            after_id=self.after_id,
            max_unsent_bytes=self.max_unsent_bytes,
        ) as following:
            following.finished = await self._relay(following, receive, send, direct_send(scope, send))

    async def _relay(self, following: Following, receive: Receive, send: Send, body_send: Send) -> bool:
        """Relay until the final event (True), or until the client leaves or the relay ends it (False)."""
        sub = following.sub
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **self.extra_headers,
        }
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        task = asyncio.current_task()
        assert task is not None
        events: asyncio.Task[bool] | None = None

        def abort_stuck_write() -> None:  # a write the client never reads would otherwise wait forever
            if sub.writing and events is not None:
                events.cancel()

        sub.on_abort = abort_stuck_write
        self.active_gauge(1)
        try:
            with following.watching(receive):
                # A task of its own: a token wakes it alone, not the coroutines of every middleware around this one
                # (resuming them for each token cost about a tenth of the gateway's CPU at 3,000 streams).
                events = asyncio.ensure_future(self._events(following, body_send))
                return await events
        except asyncio.CancelledError:
            if sub.ended_by is None or task.cancelling() > 0:
                raise  # not our abort (shutdown): stop as asked
            log.warning("stream cut off request_id=%s reason=%s", self.request_id, sub.ended_by)
            return False  # the response is left incomplete: the server closes the connection
        except OSError:
            sub.interrupt()  # the write failed: the client is gone
            return False
        finally:
            self.active_gauge(-1)

    async def _events(self, following: Following, send: Send) -> bool:
        sub = following.sub
        while True:
            batch = await sub.next_batch()
            if batch is None:
                if following.timed_out:
                    await following.deadline_passed()  # cancelled before the client hears of it
                    body = self.render_entry(deadline_entry(self.request_id, self.deadline_s))
                    with contextlib.suppress(TimeoutError):  # nothing may wait on a client that stopped reading
                        async with asyncio.timeout(FINAL_WRITE_TIMEOUT_S):
                            await self._write(sub, send, body, more=False)
                return False
            if not batch:
                await self._write(sub, send, KEEP_ALIVE, more=True)
                continue
            chunks = []
            finished = False
            for entry in batch:
                chunks.append(self.render_entry(entry))
                if entry.final:
                    finished = True
                    break
            await self._write(sub, send, b"".join(chunks), more=not finished)
            if finished:
                return True

    @staticmethod
    async def _write(sub: Subscription, send: Send, body: bytes, *, more: bool) -> None:
        sub.writing = True
        try:
            await send({"type": "http.response.body", "body": body, "more_body": more})
        finally:
            sub.writing = False

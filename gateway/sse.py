"""Server-Sent Events relayed from one token stream, ending after its done or error event.

Each event's `id:` is the stream entry id, so `Last-Event-ID` resumes exactly after it on any replica. Idle
connections get a comment line every heartbeat interval. The response watches for the client going away
itself (rather than relying on a failed write) so the job can be cancelled promptly.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.relay import Entry, StreamRelay

HEARTBEAT = b": keep-alive\n\n"
Render = Callable[[Entry], bytes]
OnClose = Callable[[bool, bool], Awaitable[None]]
"""Called once when the response ends: (the final event was sent, the client disconnected)."""


def sse_event(data: bytes, event_id: str) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (event_id.encode(), data)


def render_native(entry: Entry) -> bytes:
    return sse_event(entry.data, entry.entry_id)


class EventStreamResponse(Response):
    """An ASGI response relaying `stream` after `after_id`, rendered event by event with `render`."""

    def __init__(
        self,
        relay: StreamRelay,
        stream: str,
        *,
        after_id: str = "0-0",
        render: Render = render_native,
        on_close: OnClose,
        headers: Mapping[str, str] | None = None,
        active_gauge: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.relay = relay
        self.stream = stream
        self.after_id = after_id
        self.render_entry = render
        self.on_close = on_close
        self.extra_headers = dict(headers or {})
        self.active_gauge = active_gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **self.extra_headers,
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
        )
        sub = await self.relay.subscribe(self.stream, self.after_id)
        watcher = asyncio.create_task(watch_disconnect(receive, sub.interrupt))
        finished = False
        self.active_gauge(1)
        try:
            while not finished:
                batch = await sub.next_batch()
                if batch is None:
                    break
                if not batch:
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                    continue
                chunks = []
                for entry in batch:
                    chunks.append(self.render_entry(entry))
                    if entry.final:
                        finished = True
                        break
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": not finished})
        except OSError:
            sub.interrupt()  # the write failed: the client is gone
        finally:
            self.active_gauge(-1)
            watcher.cancel()
            self.relay.unsubscribe(sub)
            # shielded: a response cancelled at shutdown still releases its lease
            await asyncio.shield(self.on_close(finished, sub.interrupted and not finished))


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    """Call `on_disconnect` when the client closes the connection (the request body must be read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return

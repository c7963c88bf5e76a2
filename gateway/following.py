"""Following a request to its end: the steps every route that answers from a token stream takes around reading it.

A connection answering from a request's stream, as Server-Sent Events (the native routes, the OpenAI routes with
`stream`) or as one JSON body (the OpenAI routes without), goes through the same steps: its slot is attached
(renewed while the connection lasts), the stream subscribed before any answer starts (Redis away: a 503, not an
empty 200), a deadline (GATEWAY_STREAM_DEADLINE_S) set and the connection watched for the client going away
while the stream is read; and at the end, whatever ended it (the final event, the deadline, the client, a
shutdown), the subscription dropped, a request that outlived the deadline cancelled, the request's trace ended
and the slot released, shielded from cancellation (a response cancelled at shutdown still releases its slot, or
the key would be locked out with 429s). The routes differ only in how they read and what they answer; the steps
are here once, so their order is fixed in one place for all of them.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from starlette.types import Receive

from gateway.inflight import Slot
from gateway.relay import StreamRelay, Subscription
from gateway.request_trace import RequestTrace
from gateway.state import GatewayState
from protocol import keys
from protocol.stream_ids import BEFORE_FIRST

DEADLINE = "deadline"
"""`Subscription.ended_by` when the request outlived GATEWAY_STREAM_DEADLINE_S."""
OVERFLOW = "overflow"
"""`Subscription.ended_by` when the client left more than GATEWAY_MAX_UNSENT_BYTES unread (it is cut off)."""
UNBOUNDED = 2**62
"""No bound on the bytes a client leaves unread: a reader that writes nowhere cannot fall behind."""

OnClose = Callable[[bool, bool], Awaitable[None]]
"""Called once when the connection ends: (the request is done with — final event sent or deadline passed —,
the client disconnected or was cut off)."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """What following a request does at its edges, given by whoever holds the connection's slot."""

    on_open: Callable[[], None]
    """Before subscribing: the connection is being served."""
    on_close: OnClose
    on_deadline: Callable[[], Awaitable[None]]
    """The request outlived the deadline: cancel it (called once)."""


def slot_hooks(state: GatewayState, slot: Slot, trace: RequestTrace | None) -> Hooks:
    """The hooks of a connection holding `slot`: attach it (and start `trace`'s relay span), cancel its request past
    the deadline, end `trace` (a new submission's; None when re-attaching) and release the slot."""

    def on_open() -> None:
        state.inflight.attach(slot)
        if trace is not None:
            trace.relay_started()

    async def on_close(finished: bool, client_left: bool) -> None:
        if trace is not None:
            trace.ended(state.metrics, finished=finished, client_left=client_left)
        await state.inflight.release(slot, finished=finished, client_left=client_left)

    async def on_deadline() -> None:
        await state.inflight.cancel(slot.followed, "stream deadline passed")

    return Hooks(on_open, on_close, on_deadline)


class Following:
    """One connection reading a request's stream through `sub`, from `follow`'s start to its end."""

    def __init__(self, sub: Subscription, hooks: Hooks, deadline_s: float) -> None:
        self.sub = sub
        self.deadline_s = deadline_s
        self.finished = False
        """The stream's final event reached the client: set by the reader."""
        self._hooks = hooks
        self._deadline_handled = False

    @property
    def timed_out(self) -> bool:
        return self.sub.ended_by == DEADLINE

    @contextlib.contextmanager
    def watching(self, receive: Receive) -> Iterator[None]:
        """While the stream is read: the deadline ends the subscription, and the client going away interrupts it
        (watched on the connection itself, not by a failed write, so its job can be cancelled promptly)."""
        deadline = asyncio.get_running_loop().call_later(self.deadline_s, self.sub.end, DEADLINE)
        watcher = asyncio.create_task(watch_disconnect(receive, self.sub.interrupt))
        try:
            yield
        finally:
            deadline.cancel()
            watcher.cancel()

    async def deadline_passed(self) -> None:
        """Cancel the request for outliving the deadline, once; shielded: the client may be cut off meanwhile. A
        reader that tells the client calls it first, so the request is cancelled before the client hears of it."""
        if not self._deadline_handled:
            self._deadline_handled = True
            await asyncio.shield(self._hooks.on_deadline())

    async def _end(self, relay: StreamRelay) -> None:
        relay.unsubscribe(self.sub)
        ended_by = self.sub.ended_by
        if ended_by == DEADLINE and not self.finished:
            await self.deadline_passed()  # the deadline cut off a read or a write the client never saw the end of
        client_left = (self.sub.interrupted or ended_by == OVERFLOW) and not self.finished
        await asyncio.shield(self._hooks.on_close(self.finished or ended_by == DEADLINE, client_left))


@contextlib.asynccontextmanager
async def follow(
    relay: StreamRelay,
    stream: str,
    hooks: Hooks,
    *,
    deadline_s: float,
    after_id: str = BEFORE_FIRST,
    max_unsent_bytes: int = UNBOUNDED,
) -> AsyncIterator[Following]:
    """Follow `stream` after `after_id` until the block ends (the reader reads within `Following.watching` and sets
    `finished`); raises before the block when the stream cannot be subscribed, its slot already released."""
    hooks.on_open()
    try:
        sub = await relay.subscribe(stream, after_id, max_unsent_bytes=max_unsent_bytes)
    except BaseException:
        await asyncio.shield(hooks.on_close(False, True))
        raise
    following = Following(sub, hooks, deadline_s)
    try:
        yield following
    finally:
        await following._end(relay)


def follow_slot(
    state: GatewayState, slot: Slot, *, trace: RequestTrace | None, after_id: str = BEFORE_FIRST
) -> contextlib.AbstractAsyncContextManager[Following]:
    """`follow` the request of `slot` as the gateway's routes do: its token stream, this gateway's deadline, and
    `slot_hooks` (a reader that writes to its client bounds what it leaves unread itself: `EventStreamResponse`)."""
    return follow(
        state.shard(slot.followed.model_id).relay,
        keys.token_stream(slot.followed.request_id),
        slot_hooks(state, slot, trace),
        deadline_s=state.settings.gateway_stream_deadline_s,
        after_id=after_id,
    )


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    """Call `on_disconnect` when the client closes the connection (the request body must be read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return

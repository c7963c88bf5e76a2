"""gateway.following: however an answer ends (its final event, the deadline, the client leaving, Redis away),
the request's slot is released once, saying which; the request is cancelled only past the deadline, once. A
relay stand-in that hands out real subscriptions; the routes' own ends are in test_sse.py and test_openai_api.py."""

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.following import Following, Hooks, follow
from gateway.relay import Entry, Subscription
from protocol.events import DoneEvent, TokenEvent


class Relay:
    def __init__(self, *, away: bool = False) -> None:
        self.away = away
        self.subscribed: list[Subscription] = []

    async def subscribe(self, stream: str, after_id: str, *, max_unsent_bytes: int) -> Subscription:
        if self.away:
            raise RedisConnectionError("Connection refused")
        sub = Subscription(stream, after_id, max_unsent_bytes=max_unsent_bytes)
        self.subscribed.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribed.remove(sub)


class Calls:
    """Hooks that record what they were called with."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.hooks = Hooks(lambda: self.log.append("open"), self._close, self._deadline)

    async def _close(self, finished: bool, client_left: bool) -> None:
        self.log.append(("close", finished, client_left))

    async def _deadline(self) -> None:
        self.log.append("cancel")


async def read_to_the_end(following: Following, receive: Any) -> None:
    with following.watching(receive):
        while (batch := await following.sub.next_batch()) is not None:
            if any(entry.final for entry in batch):
                following.finished = True
                return


async def never_disconnects() -> dict[str, str]:
    await asyncio.Event().wait()
    raise AssertionError


async def disconnects() -> dict[str, str]:
    return {"type": "http.disconnect"}


def entry(n: int, kind: str) -> tuple[tuple[int, int], Entry]:
    return (n, 0), Entry(f"{n}-0", kind, b"{}")


async def test_a_request_read_to_its_final_event_is_released_as_finished_and_not_cancelled() -> None:
    relay, calls = Relay(), Calls()
    async with follow(relay, "gen:r", calls.hooks, deadline_s=60) as following:  # type: ignore[arg-type]
        following.sub.deliver([entry(1, TokenEvent.kind), entry(2, DoneEvent.kind)])
        await read_to_the_end(following, never_disconnects)
    assert calls.log == ["open", ("close", True, False)]
    assert relay.subscribed == []


async def test_past_the_deadline_the_request_is_cancelled_once_and_released_as_done_with() -> None:
    relay, calls = Relay(), Calls()
    async with follow(relay, "gen:r", calls.hooks, deadline_s=0.01) as following:  # type: ignore[arg-type]
        await read_to_the_end(following, never_disconnects)
        assert following.timed_out
        await following.deadline_passed()  # a reader telling its client cancels first; the end does not again
    assert calls.log == ["open", "cancel", ("close", True, False)]


async def test_a_client_that_leaves_releases_the_slot_as_left_and_the_request_is_not_cancelled_here() -> None:
    relay, calls = Relay(), Calls()
    async with follow(relay, "gen:r", calls.hooks, deadline_s=60) as following:  # type: ignore[arg-type]
        await read_to_the_end(following, disconnects)
    assert calls.log == ["open", ("close", False, True)]  # the grace period decides (gateway.inflight)


async def test_a_stream_that_cannot_be_subscribed_raises_with_its_slot_already_released() -> None:
    calls = Calls()
    with pytest.raises(RedisConnectionError):
        async with follow(Relay(away=True), "gen:r", calls.hooks, deadline_s=60):  # type: ignore[arg-type]
            raise AssertionError("nothing is read without a subscription")
    assert calls.log == ["open", ("close", False, True)]

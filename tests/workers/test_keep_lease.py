"""The lease renewer of a run: only the renewal's own answer ends the run's ownership, never an error."""

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from workers.generate import _keep_lease
from workers.stream import Written


class ScriptedWriter:
    """Answers each renewal with the next scripted outcome (an exception is raised)."""

    request_id = "req-1"

    def __init__(self, *answers: Written | Exception) -> None:
        self.answers = list(answers)
        self.tokens_renew = False
        """Whether the run's tokens renew the lease meanwhile (each look then finds it renewed)."""
        self.renewals = 0

    def lease_renewed_within(self, seconds: float) -> bool:
        return self.tokens_renew

    async def renew(self) -> Written:
        self.renewals += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_errors_while_renewing_are_retried_and_only_a_superseded_answer_ends_the_lease() -> None:
    writer = ScriptedWriter(
        ResponseError("BUSY Redis is busy running a script"),
        RedisConnectionError("Connection reset by peer"),
        Written.WRITTEN,
        Written.SUPERSEDED,
    )
    result = await asyncio.wait_for(_keep_lease(writer, 0.03), 5)  # type: ignore[arg-type]
    assert result is Written.SUPERSEDED and writer.answers == []


async def test_a_lost_stream_ends_the_lease_with_its_reason() -> None:
    result = await asyncio.wait_for(_keep_lease(ScriptedWriter(Written.STATE_LOST), 0.03), 5)  # type: ignore[arg-type]
    assert result is Written.STATE_LOST


async def test_while_the_runs_tokens_renew_the_lease_the_renewer_sends_nothing_and_renews_once_they_stop() -> None:
    writer = ScriptedWriter(Written.SUPERSEDED)
    writer.tokens_renew = True
    renewer = asyncio.create_task(_keep_lease(writer, 0.03))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)  # about 20 looks
    assert writer.renewals == 0 and not renewer.done()
    writer.tokens_renew = False  # a step stalls: nothing is written, so the renewer renews (and learns it lost)
    assert await asyncio.wait_for(renewer, 5) is Written.SUPERSEDED

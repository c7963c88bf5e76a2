"""n > 1 in the worker, without a swarm: the seeds that make choices differ (and choice 0 the reply n = 1 gets),
how a recovering run finds each choice's tokens on the stream, how the ending lists every choice, and the bill
(the prompt once, every choice's tokens). A whole request through the system: tests/e2e/test_choices.py."""

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import torch

from protocol.events import ChoiceEnd, DoneEvent, TokenEvent, encode_event
from protocol.jobs import GenerateJob
from protocol.requests import SamplingOptions
from tests.fixtures.workers import make_job
from workers.attribution import Attribution
from workers.ending import Billing, Outcome, ending_of
from workers.generate import _by_choice, _choice_ends
from workers.sampling import Sampler
from workers.stream import StreamSoFar

PRICE, PROMPT_PRICE = Decimal("0.001"), Decimal("0.0001")


def _job(**fields: Any) -> GenerateJob:
    return make_job("m", "p", price_per_token_far=PRICE, prompt_price_per_token_far=PROMPT_PRICE, **fields)


def _draws(choice: int, *, seed: int | None = 7, steps: int = 12) -> list[int]:
    sampler = Sampler(
        SamplingOptions(seed=seed),
        temperature=1.0,
        top_p=1.0,
        seed_key="req-1",
        prompt_ids=[],
        decode=lambda ids: "",
        choice=choice,
    )
    return [sampler.choose(torch.zeros(1000)) for _ in range(steps)]


def test_each_choice_draws_its_own_tokens_and_choice_0_draws_what_one_choice_would() -> None:
    assert _draws(0) == _draws(0) and _draws(1) == _draws(1)
    assert len({tuple(_draws(choice)) for choice in range(3)}) == 3
    unchosen = Sampler(
        SamplingOptions(seed=7), temperature=1.0, top_p=1.0, seed_key="req-1", prompt_ids=[], decode=lambda ids: ""
    )
    assert [unchosen.choose(torch.zeros(1000)) for _ in range(12)] == _draws(0)
    assert _draws(1, seed=None) != _draws(1, seed=8)


def _stream(*tokens: tuple[int, int | None]) -> StreamSoFar:
    """A stream holding token events of (token id, choice)."""
    entries = []
    for n, (token_id, choice) in enumerate(tokens):
        event = TokenEvent(
            token="t",
            request_id="req-choices",
            index=0,
            token_id=token_id,
            tokens_generated=n + 1,
            cost_far=Decimal(n + 1),
            choice=choice,
        )
        entries.append((f"{n}-0".encode(), {k.encode(): v.encode() for k, v in encode_event(event).items()}))
    return StreamSoFar.parse(entries, cancelled=False)


def test_a_recovering_run_finds_each_choices_tokens_and_continues_the_last_one() -> None:
    assert _by_choice(_stream()) == [[]]
    assert _by_choice(_stream((5, None), (6, None))) == [[5, 6]]  # one choice: its tokens name none
    # choice 1 ended at end of sequence before any token: it left nothing on the stream, and is empty
    assert _by_choice(_stream((5, 0), (6, 0), (7, 2))) == [[5, 6], [], [7]]


def _run(job: GenerateJob, ends: list[ChoiceEnd], generated: list[int], choice: int) -> Any:
    return cast(Any, SimpleNamespace(job=job, ends=ends, generated=generated, choice=choice))


def test_the_ending_lists_every_choice_and_a_cancellation_ends_the_ones_it_cut_short_or_never_reached() -> None:
    job = _job(n=3)
    first = ChoiceEnd(index=0, finish_reason="length", tokens_generated=4)
    assert _choice_ends(_run(_job(), [], [1], 0), Outcome("completed", "stop")) is None
    finished = [first, first.model_copy(update={"index": 1}), first.model_copy(update={"index": 2})]
    assert _choice_ends(_run(job, finished, [1, 2, 3, 4], 2), Outcome("completed", "length")) == finished
    assert _choice_ends(_run(job, [first], [9, 9], 1), Outcome("cancelled", "cancelled")) == [
        first,
        ChoiceEnd(index=1, finish_reason="cancelled", tokens_generated=2),
        ChoiceEnd(index=2, finish_reason="cancelled", tokens_generated=0),
    ]


def test_the_done_event_and_usage_record_bill_the_prompt_once_and_every_choices_tokens() -> None:
    job = _job(n=2)
    ends = [
        ChoiceEnd(index=0, finish_reason="stop", tokens_generated=3),
        ChoiceEnd(index=1, finish_reason="length", tokens_generated=4),
    ]
    billing = Billing(
        prompt_tokens=10, tokens_generated=7, started_at=datetime.now(UTC), attribution=Attribution(), choices=ends
    )
    event, usage = ending_of(job, Outcome("completed", "length"), billing, "worker-1")
    assert isinstance(event, DoneEvent) and event.choices == ends
    assert event.total_cost_far == usage.total_cost_far == 10 * PROMPT_PRICE + 7 * PRICE
    assert (usage.prompt_tokens, usage.tokens_generated) == (10, 7)
    one = Billing(prompt_tokens=10, tokens_generated=3, started_at=datetime.now(UTC), attribution=Attribution())
    single, _ = ending_of(_job(), Outcome("completed", "stop"), one, "worker-1")
    assert '"choices"' not in encode_event(single)["data"]

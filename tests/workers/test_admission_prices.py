"""A run bills at the prices and the fee fixed on its job at admission, never at the catalog's prices when it
runs: the buyer pays what it was quoted. A scripted model stands in for the swarm (no Petals call is made)."""

import asyncio
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import redis.asyncio as aioredis
import torch

from mesh.session import ServedSpan, StepResult
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, TokenEvent
from protocol.money import far_sum
from tests.fixtures.workers import enqueue, make_job, read_stream, settings_for, usage_records
from workers.generate import WorkerContext
from workers.queue_worker import QueueWorker

T = TypeVar("T")
UNREACHABLE_PEERS = ["/ip4/127.0.0.1/tcp/9/p2p/QmNotDialledBecauseTheseJobsNeverReachTheSwarm"]
PROMPT_PRICE, PRICE, FEE_BPS = Decimal("0.000000000000000007"), Decimal("0.012345678901234567"), 333
ROUTE = (ServedSpan("QmFirstHalf", 0, 1), ServedSpan("QmSecondHalf", 1, 4))


class ScriptedSession:
    """Every step is served by the same two peers (one block and three) and favours token 7."""

    def step(self, pending: list[int]) -> StepResult:
        logits = torch.zeros(16)
        logits[7] = 5.0
        return StepResult(logits=logits, spans=ROUTE, tokens=len(pending))

    def close(self) -> None:
        pass


class ScriptedModel:
    """A served model without a swarm: one token per word of the prompt, token 0 is the end."""

    tokenizer = None
    eos_token_ids = frozenset({0})
    max_positions = 64
    client = None

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model_id = spec.model_id

    def encode(self, text: str) -> list[int]:
        return [3] * len(text.split())

    def decode(self, token_ids: Sequence[int]) -> str:
        return " w" * len(token_ids)

    def open_session(self, *, max_length: int, recorder: Any = None) -> ScriptedSession:
        return ScriptedSession()

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def note_routed(self) -> None:
        pass

    def note_no_route(self, *, every_block_announced: bool) -> None:
        pass


async def test_a_run_bills_the_prompt_and_tokens_at_the_jobs_prices_and_fee_even_after_the_catalog_changed(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(
        model,
        prompt="five words of prompt here",
        max_tokens=4,
        price_per_token_far=PRICE,
        prompt_price_per_token_far=PROMPT_PRICE,
        platform_fee_bps=FEE_BPS,
    )
    await enqueue(redis_url, job)
    # Since admission the operator raised both prices: the worker's catalog says so, the job does not.
    settings = settings_for(
        redis_url,
        UNREACHABLE_PEERS,
        [model],
        price_per_token_far=Decimal("0.9"),
        prompt_price_per_token_far=Decimal("0.5"),
        worker_verify_fraction=0.0,
    )
    assert settings.catalog.price_of(model) != PRICE
    served: Any = {model.model_id: ScriptedModel(model)}
    ctx = WorkerContext(redis=redis, settings=settings, served=served, worker_id="test-worker")
    worker = QueueWorker(ctx, model.model_id, burst=True)
    try:
        await asyncio.wait_for(worker.main(), 30)
    finally:
        await worker.close()

    events = await read_stream(redis, job.request_id)
    tokens, done = [e for e in events if isinstance(e, TokenEvent)], events[-1]
    assert isinstance(done, DoneEvent) and done.tokens_generated == len(tokens) == 4
    assert [t.cost_far for t in tokens] == [5 * PROMPT_PRICE + n * PRICE for n in range(1, 5)]
    (usage,) = await usage_records(redis, job.request_id)
    assert (usage.prompt_price_per_token_far, usage.price_per_token_far, usage.platform_fee_bps) == (
        PROMPT_PRICE,
        PRICE,
        FEE_BPS,
    )
    assert usage.prompt_tokens == 5
    assert usage.total_cost_far == done.total_cost_far == Decimal("0.049382715604938303")  # 5 x 7e-18 + 4 x PRICE
    assert usage.platform_fee_far == Decimal("0.001644444429644445")  # 333 bps: ...4454899, rounded down
    paid = far_sum(c.payment_far for c in usage.contributions)
    assert far_sum([paid, usage.platform_fee_far, usage.platform_remainder_far]) == usage.total_cost_far
    # the providers share the rest, 0.047738271175293858, by blocks x tokens: a quarter and three quarters
    assert {c.node_id: c.payment_far for c in usage.contributions} == {
        "QmFirstHalf": Decimal("0.011934567793823464"),
        "QmSecondHalf": Decimal("0.035803703381470393"),
    }
    assert usage.platform_remainder_far == Decimal("0.000000000000000001")


async def test_a_run_pays_its_providers_by_work_weighed_with_the_block_premiums_fixed_on_its_job(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    # Block 0 was thin at admission: its work weighs 3 times par, so QmFirstHalf's one block weighs as much as
    # QmSecondHalf's three, and the two share the pool equally (#30).
    job = make_job(
        model, prompt="four words of prompt", max_tokens=3, block_premium_bps=(30_000, 10_000, 10_000, 10_000)
    )
    await enqueue(redis_url, job)
    settings = settings_for(redis_url, UNREACHABLE_PEERS, [model], worker_verify_fraction=0.0)
    served: Any = {model.model_id: ScriptedModel(model)}
    ctx = WorkerContext(redis=redis, settings=settings, served=served, worker_id="test-worker")
    worker = QueueWorker(ctx, model.model_id, burst=True)
    try:
        await asyncio.wait_for(worker.main(), 30)
    finally:
        await worker.close()

    (usage,) = await usage_records(redis, job.request_id)
    paid = {c.node_id: c for c in usage.contributions}
    assert (paid["QmFirstHalf"].work_units, paid["QmSecondHalf"].work_units) == (6, 18)  # 4 + 2 tokens
    assert paid["QmFirstHalf"].paid_work_units == paid["QmSecondHalf"].paid_work_units == 180_000
    assert paid["QmFirstHalf"].payment_far == paid["QmSecondHalf"].payment_far == usage.total_cost_far / 2
    assert (
        far_sum([*(c.payment_far for c in usage.contributions), usage.platform_remainder_far]) == usage.total_cost_far
    )

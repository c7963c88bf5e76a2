"""The whole system as a client sees it: tokens over HTTP, the costs they carry, and the ledger rows they leave."""

import asyncio
import uuid
from decimal import Decimal

import openai
import pytest

from tests.fixtures.system import (
    PRICE_FAR,
    SystemUnderTest,
    assert_books_balance,
    collect,
    stream_events,
    the_ledger_session,
    token_events,
    wait_until_accounted,
)
from tests.fixtures.workers import decode_locally, reference_continuation

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

PROMPT = "The mesh streams tokens from many small servers"


def new_request_id() -> str:
    return f"e2e-{uuid.uuid4().hex[:12]}"


def peer_ids_of(sut: SystemUnderTest, model_index: int) -> set[str]:
    assert sut.system.swarm is not None
    model_id = sut.models[model_index].model_id
    return {s.peer_id for s in sut.system.swarm.servers if s.plan.model.model_id == model_id}


async def test_a_greedy_request_streams_the_reference_tokens_with_running_costs_and_is_billed_once_to_its_nodes(
    e2e_system: SystemUnderTest,
) -> None:
    model = e2e_system.models[0]
    request_id = new_request_id()
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "request_id": request_id}
    async with e2e_system.client() as client:
        events = await collect(client, body)

    tokens, done = token_events(events), events[-1]
    expected = reference_continuation(model, PROMPT, 24)
    assert [t["token_id"] for t in tokens] == expected
    assert [t["index"] for t in tokens] == list(range(len(expected)))
    assert [t["cost_far"] for t in tokens] == [str((i + 1) * PRICE_FAR) for i in range(len(expected))]
    assert "".join(t["token"] for t in tokens) == decode_locally(model, expected)
    assert done["status"] == "completed" and done["tokens_generated"] == len(expected)
    assert Decimal(done["total_cost_far"]) == len(expected) * PRICE_FAR

    await wait_until_accounted(e2e_system.redis_url)
    session = await the_ledger_session(e2e_system.postgres_url, request_id)
    assert session.row["model_id"] == model.model_id and session.row["status"] == "completed"
    assert_books_balance(session, len(expected))
    served = {c["node_id"] for c in session.contributions}
    assert served <= peer_ids_of(e2e_system, 0)
    assert len(served) == 2, "one server per span of a route"  # 0:2 and one of the two 2:4 replicas


async def test_two_models_are_served_at_once_each_by_its_own_servers(e2e_system: SystemUnderTest) -> None:
    ids = [new_request_id(), new_request_id()]
    async with e2e_system.client() as client:
        streams = await asyncio.gather(
            *(
                collect(client, {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "request_id": r, "model_id": m})
                for r, m in zip(ids, [spec.model_id for spec in e2e_system.models], strict=True)
            )
        )

    await wait_until_accounted(e2e_system.redis_url)
    for index, (request_id, events) in enumerate(zip(ids, streams, strict=True)):
        model = e2e_system.models[index]
        assert [t["token_id"] for t in token_events(events)] == reference_continuation(model, PROMPT, 12)
        session = await the_ledger_session(e2e_system.postgres_url, request_id)
        assert session.row["model_id"] == model.model_id
        assert_books_balance(session, len(token_events(events)))
        assert {c["node_id"] for c in session.contributions} <= peer_ids_of(e2e_system, index)
    (second_server,) = peer_ids_of(e2e_system, 1)
    second = await the_ledger_session(e2e_system.postgres_url, ids[1])
    assert [c["node_id"] for c in second.contributions] == [second_server]


async def test_the_openai_client_streams_a_chat_completion_that_matches_the_ledger(
    e2e_system: SystemUnderTest,
) -> None:
    model = e2e_system.models[0]
    client = openai.AsyncOpenAI(base_url=f"{e2e_system.url}/v1", api_key=e2e_system.system.api_key, max_retries=0)
    try:
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model=model.model_id,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=16,
                temperature=0,
                stream=True,
            )
        ]
    finally:
        await client.close()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("length", "stop")
    assert last.usage is not None and 0 < last.usage.completion_tokens <= 16
    request_id = (last.model_extra or {})["request_id"]

    async with e2e_system.client() as http:  # the same request's native stream: its token ids, for decoding
        replay = [event async for _, (_, event) in stream_events(http, "GET", f"/inference/{request_id}/stream")]
    token_ids = [t["token_id"] for t in token_events(replay)]
    assert text == decode_locally(model, token_ids)
    assert len(token_ids) == last.usage.completion_tokens

    await wait_until_accounted(e2e_system.redis_url)
    session = await the_ledger_session(e2e_system.postgres_url, request_id)
    assert_books_balance(session, last.usage.completion_tokens)
    assert Decimal((last.model_extra or {})["cost_far"]) == session.row["total_cost_far"]

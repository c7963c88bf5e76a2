"""The Python SDK against the whole running system: what a user's loop receives, and what the ledger bills.

Each test drives `farlabs` exactly as a user would and checks the tokens against the HTTP API's own stream of
the same greedy request; faults (a dropped TCP connection, the gateway process killed) land mid-stream.
"""

import asyncio
import json
import os
import signal
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from farlabs import (
    AsyncFarMesh,
    Conflict,
    FarMesh,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
)

from tests.fixtures.system import (
    PRICE_FAR,
    SystemUnderTest,
    assert_books_balance,
    collect,
    the_ledger_session,
    token_events,
    wait_until_accounted,
)
from tests.sdk.proxy import DroppingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

PROMPT = "A request walks through the gateway"
LONG = 120
"""Tokens of a request still streaming when a fault lands (a few seconds on the tiny model)."""


def new_request_id() -> str:
    return f"sdk-{uuid.uuid4().hex[:12]}"


def http_api_tokens(sut: SystemUnderTest, max_tokens: int, prompt: str = PROMPT) -> list[str]:
    """The token texts the HTTP API streams for this greedy request, read with a plain SSE client."""

    async def read() -> list[dict[str, Any]]:
        async with sut.client() as client:
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "request_id": new_request_id()}
            return await collect(client, body)

    return [event["token"] for event in token_events(asyncio.run(read()))]


def billed(sut: SystemUnderTest, request_id: str, tokens: int) -> dict[str, Any]:
    """Accounting settles; the request's one ledger session bills exactly `tokens`. Its row."""

    async def row() -> dict[str, Any]:
        await wait_until_accounted(sut.redis_url)
        session = await the_ledger_session(sut.postgres_url, request_id)
        assert_books_balance(session, tokens)
        return session.row

    return asyncio.run(row())


def test_the_seed_snippet_streams_the_same_tokens_as_the_http_api_with_its_cost(
    e2e_system: SystemUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARLABS_BASE_URL", e2e_system.url)
    mesh = FarMesh(api_key=e2e_system.system.api_key)
    response = mesh.chat(PROMPT, max_tokens=16, temperature=0)
    costs = []
    tokens = []
    for token in response:
        tokens.append(token)
        costs.append(response.cost_far)
    mesh.close()

    assert tokens == http_api_tokens(e2e_system, 16)
    assert costs == [(i + 1) * PRICE_FAR for i in range(len(tokens))]
    assert response.finish_reason in ("length", "stop") and response.usage is not None
    assert response.usage.completion_tokens == response.tokens_generated == len(tokens)
    assert response.usage.total_cost_far == response.cost_far == len(tokens) * PRICE_FAR
    assert response.usage.status == "completed" and response.usage.prompt_tokens > 0
    assert billed(e2e_system, response.request_id, len(tokens))["status"] == "completed"


def test_models_and_mesh_status_describe_what_is_on_sale(e2e_system: SystemUnderTest) -> None:
    with FarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url) as mesh:
        models = mesh.models()
        status = mesh.mesh_status()
    assert [m.model_id for m in models] == [m.model_id for m in e2e_system.models]
    assert all(m.available and m.price_per_token_far == PRICE_FAR for m in models)
    assert all((m.prompt_price_per_token_far, m.completion_price_per_token_far) == (0, PRICE_FAR) for m in models)
    assert [(m.family, m.parameters, m.context_length) for m in models] == [
        (spec.family, spec.parameters, spec.context_length) for spec in e2e_system.models
    ]
    assert all(m.family == "tiny-llama (random weights)" and m.license for m in models)
    assert (status.prompt_price_per_token_far, status.completion_price_per_token_far) == (0, PRICE_FAR)
    assert status.model_id == e2e_system.models[0].model_id
    assert status.status == "connected" and status.healthy and status.active_nodes


async def test_chat_messages_stream_the_same_tokens_on_the_native_and_the_openai_routes(
    e2e_system: SystemUnderTest,
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}]
    model = e2e_system.models[0].model_id
    async with AsyncFarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url) as mesh:
        native = await mesh.chat(messages, max_tokens=8, temperature=0)
        native_tokens = [token async for token in native]
        openai = await mesh.chat(messages, model=model, max_tokens=8, temperature=0, api="openai")
        openai_tokens = [token async for token in openai]
    assert native_tokens == openai_tokens and native_tokens
    assert native.usage == openai.usage
    assert openai.cost_far == len(openai_tokens) * PRICE_FAR


async def test_a_response_format_makes_the_tokens_one_json_value_that_validates_on_both_routes(
    e2e_system: SystemUnderTest,
) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "shade": {"type": "integer", "maximum": 9}},
        "required": ["colour", "shade"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "colour", "schema": schema, "strict": True}}
    model = e2e_system.models[0].model_id
    async with AsyncFarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url) as mesh:
        for api in ("native", "openai"):
            stream = await mesh.chat(
                "Name a colour", model=model, max_tokens=64, temperature=1.0, api=api, response_format=response_format
            )
            reply = json.loads(await stream.text())
            assert reply["colour"] in ("red", "green", "blue") and set(reply) == {"colour", "shade"}


def test_a_tcp_connection_cut_mid_stream_resumes_and_yields_every_token_exactly_once(
    e2e_system: SystemUnderTest, dropping_proxy: DroppingProxy
) -> None:
    tokens = []
    with FarMesh(api_key=e2e_system.system.api_key, base_url=dropping_proxy.url) as mesh:
        stream = mesh.chat(PROMPT, max_tokens=LONG, temperature=0)
        for token in stream:
            tokens.append(token)
            if len(tokens) in (5, 40):
                assert dropping_proxy.cut() == 1
    assert dropping_proxy.cuts == 2 and dropping_proxy.connections >= 3  # each cut was followed by a resume
    assert tokens == http_api_tokens(e2e_system, LONG)
    assert stream.usage is not None and stream.usage.status == "completed"
    assert stream.usage.completion_tokens == len(tokens)
    billed(e2e_system, stream.request_id, len(tokens))


async def test_the_gateway_restarted_mid_stream_and_the_stream_still_completes(e2e_system: SystemUnderTest) -> None:
    web = e2e_system.system.process("web")
    tokens: list[str] = []
    restarted: asyncio.Future[object] | None = None
    async with AsyncFarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url, max_retries=20) as mesh:
        stream = await mesh.chat(PROMPT, max_tokens=LONG, temperature=0)
        async for token in stream:
            tokens.append(token)
            if len(tokens) == 5:
                os.killpg(web.process.pid, signal.SIGKILL)
                web.process.wait(10)
                restarted = asyncio.ensure_future(asyncio.to_thread(e2e_system.restart_process, "web"))
    assert restarted is not None
    await restarted
    assert e2e_system.system.process("web").process.pid != web.process.pid
    assert tokens == await asyncio.to_thread(http_api_tokens, e2e_system, LONG)
    assert stream.usage is not None and stream.usage.completion_tokens == len(tokens)
    await asyncio.to_thread(billed, e2e_system, stream.request_id, len(tokens))


def test_a_rate_limit_is_raised_as_rate_limited_with_retry_after(
    e2e_system: SystemUnderTest, strict_gateway: str, new_api_key: Any
) -> None:
    with FarMesh(api_key=new_api_key(), base_url=strict_gateway) as mesh:
        first = mesh.chat(PROMPT, max_tokens=2, temperature=0)
        with pytest.raises(RateLimited) as raised:
            mesh.chat(PROMPT, max_tokens=2, temperature=0)
        assert first.text()  # the first request, within the limit, runs to its end
    error = raised.value
    assert error.status == 429 and error.code == "rate_limited"
    assert error.retry_after is not None and 1 <= error.retry_after <= 60
    billed(e2e_system, first.request_id, first.tokens_generated)


def test_cancel_stops_the_generation_and_bills_exactly_the_tokens_yielded(e2e_system: SystemUnderTest) -> None:
    tokens = []
    with FarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url) as mesh:
        stream = mesh.chat(PROMPT, max_tokens=400, temperature=0)
        for token in stream:
            tokens.append(token)
            if len(tokens) == 5:
                assert stream.cancel() == "cancelling"
    assert stream.finish_reason == "cancelled"
    assert stream.usage is not None and stream.usage.status == "cancelled"
    assert 5 <= len(tokens) == stream.usage.completion_tokens < 400
    assert stream.cost_far == len(tokens) * PRICE_FAR
    row = billed(e2e_system, stream.request_id, len(tokens))
    assert row["status"] == "cancelled" and row["total_cost_far"] == Decimal(stream.cost_far)


def test_refusals_are_typed_errors_naming_what_was_wrong(e2e_system: SystemUnderTest, new_api_key: Any) -> None:
    with FarMesh(api_key="fmk_0000000000000000_" + "x" * 43, base_url=e2e_system.url, max_retries=0) as stranger:
        with pytest.raises(Unauthorized) as unauthorized:
            stranger.chat("Hello", max_tokens=1)
    assert unauthorized.value.status == 401
    with FarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url) as mesh:
        with pytest.raises(InvalidRequest) as invalid:
            mesh.chat("Hello", max_tokens=0)
        assert invalid.value.field == "max_tokens" and invalid.value.status == 422
        with pytest.raises(NotFound) as unknown:
            mesh.chat("Hello", model="no-such-model", max_tokens=1)
        assert unknown.value.field == "model_id"
        with pytest.raises(NotFound):
            mesh.cancel("never-submitted")
        owned = mesh.chat("Hello", max_tokens=1, temperature=0)
        owned.text()
    with FarMesh(api_key=new_api_key(), base_url=e2e_system.url) as other:
        with pytest.raises(Conflict) as conflict:
            other.chat("Hello", max_tokens=1, request_id=owned.request_id)
    assert conflict.value.field == "request_id"


def test_when_the_answer_to_its_post_is_lost_the_sdk_posts_the_same_request_id_and_it_runs_and_bills_once(
    e2e_system: SystemUnderTest, dropping_proxy: DroppingProxy
) -> None:
    dropping_proxy.drop_next_answer()
    with FarMesh(api_key=e2e_system.system.api_key, base_url=dropping_proxy.url) as mesh:
        stream = mesh.chat(PROMPT, max_tokens=12, temperature=0)
        tokens = list(stream)
    assert dropping_proxy.connections == 2  # the lost answer, then the retried POST
    assert tokens == http_api_tokens(e2e_system, 12)
    billed(e2e_system, stream.request_id, len(tokens))  # exactly one ledger session, billing what was yielded


def test_a_retried_post_after_a_dropped_answer_reattaches_and_is_billed_once(
    e2e_system: SystemUnderTest, dropping_proxy: DroppingProxy
) -> None:
    """A client that lost the POST's answer sends the same request id again: one job, one bill."""
    request_id = new_request_id()
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "request_id": request_id}
    headers = {"Authorization": f"Bearer {e2e_system.system.api_key}"}
    with httpx.Client(base_url=dropping_proxy.url, headers=headers, timeout=30) as raw:
        with raw.stream("POST", "/inference/generate", json=body) as response:
            assert response.status_code == 200
            dropping_proxy.cut()
    with FarMesh(api_key=e2e_system.system.api_key, base_url=e2e_system.url) as mesh:
        tokens = list(mesh.chat(PROMPT, max_tokens=12, temperature=0, request_id=request_id))
    assert tokens == http_api_tokens(e2e_system, 12)
    billed(e2e_system, request_id, len(tokens))

"""farlabs.stream: which request each attempt sends, and what the iterator yields, over a scripted transport.

The gateway side is an `httpx.MockTransport` playing back a script of answers, so each retry rule is checked
exactly and fast; the same behaviour against the real system is in test_python_sdk.py.
"""

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, Literal

import httpx
import pytest
from farlabs import (
    APIConnectionError,
    AsyncFarMesh,
    FarMesh,
    FarMeshError,
    GenerationFailed,
    MaxPriceExceeded,
    ModelUnavailable,
    ProviderPreferences,
    RateLimited,
    RetryPolicy,
    RouteUnsatisfiable,
)

NO_WAIT = RetryPolicy(max_retries=3, backoff_s=0, max_backoff_s=0)


def token(index: int) -> bytes:
    event = {"token": f"w{index}", "request_id": "r1", "index": index, "token_id": index}
    event |= {"tokens_generated": index + 1, "cost_far": str(Decimal("0.0003") * (index + 1))}
    return b"id: 1-%d\ndata: %s\n\n" % (index, json.dumps(event).encode())


def done(tokens: int, status: str = "completed", reason: str = "length") -> bytes:
    event = {"done": True, "request_id": "r1", "status": status, "finish_reason": reason, "prompt_tokens": 3}
    event |= {"tokens_generated": tokens, "total_cost_far": str(Decimal("0.0003") * tokens)}
    return b"id: 1-%d\ndata: %s\n\n" % (tokens, json.dumps(event).encode())


class Dropped(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that delivers `chunks`, then fails as a reset connection does (or ends if `drop` is False)."""

    def __init__(self, chunks: list[bytes], drop: bool = True) -> None:
        self.chunks = chunks
        self.drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk
        if self.drop:
            raise httpx.ReadError("connection reset by peer")


Answer = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests in order, remembering each."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)(request)

    def summary(self) -> list[tuple[str, str, str | None]]:
        return [(r.method, r.url.path, r.headers.get("last-event-id")) for r in self.requests]


def stream(*chunks: bytes, drop: bool = False) -> Answer:
    return lambda _: httpx.Response(200, stream=Dropped(list(chunks), drop=drop))


def refuse(status: int, code: str, headers: dict[str, str] | None = None) -> Answer:
    body = {"error": {"code": code, "message": f"refused: {code}", "field": None}}
    return lambda _: httpx.Response(status, json=body, headers=headers)


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def mesh_for(script: Script, retry: RetryPolicy = NO_WAIT) -> FarMesh:
    http = httpx.Client(transport=httpx.MockTransport(script))
    return FarMesh(api_key="fmk_test", base_url="http://gateway.test", retry=retry, http_client=http)


def test_a_connection_dropped_mid_stream_resumes_after_the_last_event_read() -> None:
    script = Script(stream(token(0), token(1), drop=True), stream(token(2), done(3)))
    with mesh_for(script) as mesh:
        response = mesh.chat("Hello", max_tokens=3, request_id="r1")
        assert list(response) == ["w0", "w1", "w2"]
    assert script.summary() == [("POST", "/inference/generate", None), ("GET", "/inference/r1/stream", "1-1")]
    assert response.usage is not None and response.usage.completion_tokens == 3
    assert response.cost_far == Decimal("0.0009") and response.finish_reason == "length"


def test_a_resume_that_replays_from_the_start_yields_no_token_twice() -> None:
    script = Script(stream(token(0), token(1), drop=True), stream(token(0), token(1), token(2), done(3)))
    with mesh_for(script) as mesh:
        assert mesh.chat("Hello", request_id="r1").text() == "w0w1w2"


def test_a_stream_that_ends_before_its_final_event_is_resumed_too() -> None:
    script = Script(stream(token(0)), stream(token(1), done(2)))
    with mesh_for(script) as mesh:
        assert list(mesh.chat("Hello", request_id="r1")) == ["w0", "w1"]
    assert script.summary()[1] == ("GET", "/inference/r1/stream", "1-0")


def test_until_the_gateway_accepts_the_request_each_retry_posts_the_same_request_id() -> None:
    script = Script(unreachable, refuse(503, "unavailable", {"retry-after": "1"}), stream(token(0), done(1)))
    with mesh_for(script) as mesh:
        assert list(mesh.chat("Hello", max_tokens=1)) == ["w0"]
    bodies = [json.loads(r.content) for r in script.requests]
    assert [r.method for r in script.requests] == ["POST"] * 3
    assert bodies[0] == bodies[1] == bodies[2] and bodies[0]["request_id"].startswith("req_")


def test_a_429_is_raised_at_once_as_rate_limited_with_retry_after() -> None:
    script = Script(refuse(429, "rate_limited", {"retry-after": "42"}))
    with mesh_for(script) as mesh, pytest.raises(RateLimited) as raised:
        mesh.chat("Hello")
    assert raised.value.retry_after == 42 and len(script.requests) == 1


def lost_answer(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("the POST went out; its answer never came", request=request)


def test_a_429_to_a_repost_whose_first_post_may_have_landed_is_waited_out_not_raised() -> None:
    """The gateway takes the rate limit before it re-attaches a known request id: raising here abandoned a
    generation that was running, and billing, under that id."""
    script = Script(lost_answer, refuse(429, "rate_limited", {"retry-after": "0"}), stream(token(0), done(1)))
    with mesh_for(script) as mesh:
        assert list(mesh.chat("Hello", max_tokens=1)) == ["w0"]
    assert [r.method for r in script.requests] == ["POST"] * 3
    assert len({json.loads(r.content)["request_id"] for r in script.requests}) == 1


def test_a_model_without_a_healthy_swarm_is_not_retried() -> None:
    script = Script(refuse(503, "no_healthy_swarm", {"retry-after": "5"}))
    with mesh_for(script) as mesh, pytest.raises(ModelUnavailable):
        mesh.chat("Hello")
    assert len(script.requests) == 1


def test_when_every_retry_fails_the_error_says_the_gateway_was_unreachable() -> None:
    script = Script(*[unreachable] * 4)
    with mesh_for(script) as mesh, pytest.raises(APIConnectionError, match="unreachable after retries"):
        mesh.chat("Hello")
    assert len(script.requests) == NO_WAIT.max_retries + 1


def test_each_event_received_renews_the_retry_budget() -> None:
    drops = [stream(token(i), drop=True) for i in range(6)]  # six drops in a row, each after one new token
    script = Script(*drops, stream(done(6)))
    with mesh_for(script, RetryPolicy(max_retries=1, backoff_s=0, max_backoff_s=0)) as mesh:
        assert len(list(mesh.chat("Hello", request_id="r1"))) == 6


def test_an_error_event_ends_the_stream_with_generation_failed() -> None:
    error: dict[str, Any] = {"error": {"code": "no_route", "message": "no server holds block 3"}, "request_id": "r1"}
    error |= {"tokens_generated": 1, "total_cost_far": "0.0003"}
    script = Script(stream(token(0), b"id: 1-1\ndata: %s\n\n" % json.dumps(error).encode()))
    with mesh_for(script) as mesh:
        response = mesh.chat("Hello", request_id="r1")
        assert next(response) == "w0"
        with pytest.raises(GenerationFailed) as raised:
            next(response)
    assert raised.value.code == "no_route" and response.finish_reason == "error"


def test_chat_messages_become_the_gateways_chat_template_and_options_the_native_fields() -> None:
    script = Script(stream(done(0)))
    with mesh_for(script) as mesh:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        mesh.chat(messages, model="m", max_tokens=5, temperature=0, top_p=0.5, request_id="r1").text()
    assert json.loads(script.requests[0].content) == {
        "prompt": "System: Be brief.\nUser: Hi\nAssistant:",
        "request_id": "r1",
        "model_id": "m",
        "max_tokens": 5,
        "temperature": 0,
        "top_p": 0.5,
    }
    assert script.requests[0].headers["authorization"] == "Bearer fmk_test"


PROVIDER: ProviderPreferences = {
    "max_price": {"completion": Decimal("0.0003")},
    "sort": "throughput",
    "ignore": ["0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1"],
    "allow_fallbacks": False,
    "min_reputation": 0.5,
}
PROVIDER_JSON = PROVIDER | {"max_price": {"completion": "0.0003"}}


@pytest.mark.parametrize(("api", "path"), [("native", "/inference/generate"), ("openai", "/v1/chat/completions")])
def test_routing_preferences_travel_in_the_body_of_either_api_as_the_provider_object(
    api: Literal["native", "openai"], path: str
) -> None:
    script = Script(stream(done(0)))
    with mesh_for(script) as mesh:
        mesh.chat("Hi", model="m", api=api, provider=PROVIDER, request_id="r1").text()
    assert script.requests[0].url.path == path
    assert json.loads(script.requests[0].content)["provider"] == PROVIDER_JSON


def test_a_price_above_max_price_is_raised_at_once_as_max_price_exceeded_not_retried() -> None:
    script = Script(refuse(409, "max_price_exceeded"))
    with mesh_for(script) as mesh, pytest.raises(MaxPriceExceeded) as raised:
        mesh.chat("Hi", provider={"max_price": {"completion": "0.0001"}})
    assert raised.value.status == 409 and len(script.requests) == 1


def test_a_stream_no_allowed_route_can_serve_ends_with_route_unsatisfiable() -> None:
    error: dict[str, Any] = {"error": {"code": "route_unsatisfiable", "message": "no server ... holds blocks 2..3"}}
    error |= {"request_id": "r1", "tokens_generated": 0, "total_cost_far": "0"}
    script = Script(stream(b"id: 1-0\ndata: %s\n\n" % json.dumps(error).encode()))
    with mesh_for(script) as mesh, pytest.raises(RouteUnsatisfiable) as raised:
        mesh.chat("Hi", provider={"ignore": ["0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1"]}, request_id="r1").text()
    assert isinstance(raised.value, GenerationFailed) and "blocks 2..3" in raised.value.message
    assert len(script.requests) == 1


async def test_the_async_client_sends_the_routing_preferences_too() -> None:
    script = Script(stream(done(0)))
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    async with AsyncFarMesh(api_key="k", base_url="http://gateway.test", retry=NO_WAIT, http_client=http) as mesh:
        await (await mesh.chat("Hi", provider=PROVIDER, request_id="r1")).text()
    await http.aclose()
    assert json.loads(script.requests[0].content)["provider"] == PROVIDER_JSON


def test_the_base_url_comes_from_farlabs_base_url_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARLABS_BASE_URL", "http://mesh.example:9000/")
    monkeypatch.setenv("FARLABS_API_KEY", "fmk_from_env")
    mesh = FarMesh()
    assert mesh.base_url == "http://mesh.example:9000" and mesh.options.api_key == "fmk_from_env"
    mesh.close()


def test_an_api_key_read_with_its_newline_is_trimmed_and_one_a_header_cannot_carry_is_refused_unsent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx refuses such a header with an error that quotes it, key and all; the SDK retried it and said so."""
    mesh = FarMesh(api_key="fmk_from_a_file\n")
    assert mesh.options.api_key == "fmk_from_a_file"
    mesh.close()
    for bad in ("fmk_SECRET\nKEY", "fmk SECRET", "fmk_SECRÉT"):
        with pytest.raises(FarMeshError) as raised:
            FarMesh(api_key=bad)
        assert "SECR" not in str(raised.value)


async def test_the_async_stream_resumes_the_same_way() -> None:
    script = Script(stream(token(0), drop=True), stream(token(1), done(2)))
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    async with AsyncFarMesh(api_key="k", base_url="http://gateway.test", retry=NO_WAIT, http_client=http) as mesh:
        response = await mesh.chat("Hello", request_id="r1")
        assert [t async for t in response] == ["w0", "w1"]
    await http.aclose()
    assert script.summary()[1] == ("GET", "/inference/r1/stream", "1-0")
    assert response.usage is not None and response.usage.status == "completed"


def test_a_429_on_resuming_a_running_generation_is_waited_out_not_raised() -> None:
    script = Script(
        stream(token(0), drop=True), refuse(429, "rate_limited", {"retry-after": "0"}), stream(token(1), done(2))
    )
    with mesh_for(script) as mesh:
        assert list(mesh.chat("Hello", request_id="r1")) == ["w0", "w1"]
    assert [method for method, _, _ in script.summary()] == ["POST", "GET", "GET"]


def test_a_204_on_resuming_means_nothing_was_left_to_read() -> None:
    script = Script(stream(token(0), drop=True), lambda _: httpx.Response(204))
    with mesh_for(script) as mesh:
        response = mesh.chat("Hello", request_id="r1")
        assert list(response) == ["w0"]
    assert response.finished and len(script.requests) == 2

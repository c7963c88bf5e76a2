"""The soak's buyers spread their requests over the gateway replicas and, as a load balancer would, send a
request's next attempt (a resume, a re-POST) to another replica once its own failed it."""

import json
from decimal import Decimal

import httpx

from devstack.harness.soak.buyers import Buyers, GatewayChoice, Request
from gateway.openai_api import ResponseShape
from gateway.relay import Entry
from protocol.error_codes import StreamErrorCode
from protocol.events import ErrorBody, ErrorEvent, TokenEvent

URLS = ("http://127.0.0.1:1", "http://127.0.0.1:2")


def test_a_request_stays_on_its_gateway_until_it_fails_then_resumes_on_the_other() -> None:
    request = Request("soak-1", "sse", 10, 0.0)
    choice = GatewayChoice(URLS, 1, request)
    assert choice.url("/inference/generate") == "http://127.0.0.1:2/inference/generate"
    assert choice.url("/inference/soak-1/stream") == "http://127.0.0.1:2/inference/soak-1/stream"
    assert request.gateways == {1}
    choice.failed()
    assert choice.url("/inference/soak-1/stream") == "http://127.0.0.1:1/inference/soak-1/stream"
    choice.failed()
    assert choice.url("/x").startswith(URLS[1])
    assert request.gateways == {0, 1}


def test_one_gateway_takes_every_attempt() -> None:
    request = Request("soak-2", "openai", 10, 0.0)
    choice = GatewayChoice(URLS[:1], 0, request)
    choice.failed()
    assert choice.url("/v1/chat/completions") == URLS[0] + "/v1/chat/completions"
    assert request.gateways == {0}


SEED_33_TEXTS = ("", "\ufffdV", "", "", "\ufffd\ufffdte", "σ", "\x10", "K", "E", "")
"""The texts of the 10 token events soak-d0d2b3b51e93598ae367 was sent before its `no_route` (seed 33): the soak's
chat prompt, greedy, on far-tiny-llama-4, through `workers.detokenize`. Four are "": the bytes of a character
not yet complete, held back by the worker, their token delivered and billed all the same."""


def _seed_33_stream(request_id: str) -> bytes:
    """What the gateway's OpenAI stream sends for those tokens and the error that ended them, rendered by the
    gateway's own `ResponseShape`."""
    shape = ResponseShape(chat=True, request_id=request_id, model="far-tiny-llama-4", include_usage=True)
    body = b""
    for index, text in enumerate(SEED_33_TEXTS):
        token = TokenEvent(
            token=text,
            request_id=request_id,
            index=index,
            token_id=100 + index,
            tokens_generated=index + 1,
            cost_far=Decimal("0.001") * (index + 1),
        )
        body += shape.chunk(Entry(f"1-{index}", TokenEvent.kind, token.model_dump_json(exclude_none=True).encode()))
    error = ErrorEvent(
        error=ErrorBody(code=StreamErrorCode.NO_ROUTE, message="no server holds block 2"),
        request_id=request_id,
        tokens_generated=len(SEED_33_TEXTS),
        total_cost_far=Decimal("0.001") * len(SEED_33_TEXTS),
    )
    return body + shape.chunk(Entry("1-99", ErrorEvent.kind, error.model_dump_json(exclude_none=True).encode()))


async def test_an_openai_stream_that_ends_in_an_error_counts_every_token_chunk_delivered_even_an_empty_one() -> None:
    """Seed 33's false money failure: the buyer counted only the chunks with text, 6 of the 10 delivered."""
    request = Request("soak-d0d2b3b51e93598ae367", "openai_stream", 20, 0.0)

    def gateway(sent: httpx.Request) -> httpx.Response:
        assert json.loads(sent.content)["stream"] is True
        return httpx.Response(200, content=_seed_33_stream(request.request_id))

    buyers = Buyers(URLS[:1], "key", "budget-key", 33, "far-tiny-llama-4")
    async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as client:
        await buyers._follow_openai(client, GatewayChoice(URLS[:1], 0, request), request)
    assert request.ending == "error:no_route"
    assert request.delivered == len(SEED_33_TEXTS) == 10  # what the worker billed: every token it was sent

"""The soak's buyers spread their requests over the gateway replicas and, as a load balancer would, send a
request's next attempt (a resume, a re-POST) to another replica once its own failed it."""

from devstack.harness.soak.buyers import GatewayChoice, Request

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

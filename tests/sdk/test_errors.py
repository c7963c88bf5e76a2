"""farlabs.errors: each gateway refusal becomes its own exception, carrying what the gateway said."""

import json

import pytest
from farlabs.errors import (
    Conflict,
    Forbidden,
    GenerationFailed,
    InvalidRequest,
    MaxPriceExceeded,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RouteUnsatisfiable,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    error_from_response,
)


def body(code: str, message: str = "what is wrong", field: str | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (409, "request_id_used", Conflict),
        (409, "max_price_exceeded", MaxPriceExceeded),
        (409, "route_unsatisfiable", RouteUnsatisfiable),
        (413, "payload_too_large", PayloadTooLarge),
        (415, "unsupported_media_type", UnsupportedMediaType),
        (422, "validation_error", InvalidRequest),
        (502, "generation_failed", GenerationFailed),
        (503, "unavailable", ServiceUnavailable),
        (504, "stream_deadline", GenerationFailed),
    ],
)
def test_each_status_is_its_own_class_with_the_gateways_code_and_message(status: int, code: str, cls: type) -> None:
    error = error_from_response(status, {}, body(code), request_id="r1")
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.request_id) == (status, code, "what is wrong", "r1")


def test_a_validation_error_names_the_field_and_keeps_every_detail() -> None:
    payload = {"error": {"code": "validation_error", "message": "m", "field": "max_tokens", "details": [{"loc": []}]}}
    error = error_from_response(422, {}, json.dumps(payload).encode())
    assert isinstance(error, InvalidRequest) and error.field == "max_tokens" and error.details == [{"loc": []}]
    assert "max_tokens" in str(error)


def test_a_rate_limit_carries_retry_after_in_seconds() -> None:
    error = error_from_response(429, {"retry-after": "17"}, body("too_many_streams"))
    assert isinstance(error, RateLimited) and error.retry_after == 17.0 and error.code == "too_many_streams"


def test_no_healthy_swarm_is_a_model_unavailable_service_unavailable() -> None:
    error = error_from_response(503, {"retry-after": "5"}, body("no_healthy_swarm"))
    assert isinstance(error, ModelUnavailable) and isinstance(error, ServiceUnavailable)
    assert error.retry_after == 5.0


def test_an_answer_that_is_not_the_gateways_json_still_says_what_came_back() -> None:
    error = error_from_response(502, {}, b"<html>Bad Gateway</html>")
    assert error.code == "http_502" and "Bad Gateway" in error.message
    assert type(error_from_response(418, {}, b"")) is InvalidRequest


def openai_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def test_an_openai_shaped_error_from_v1_names_its_param_as_the_field() -> None:
    error = error_from_response(
        400, {}, openai_body("stop: at most 4", "invalid_request_error", "stop", "validation_error")
    )
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.code, error.field, error.message) == (
        400,
        "validation_error",
        "stop",
        "stop: at most 4",
    )
    assert "stop" in str(error)


def test_an_openai_shaped_error_without_a_code_or_param_takes_its_type_as_the_code() -> None:
    error = error_from_response(404, {}, openai_body("no such model", "invalid_request_error", None, None))
    assert isinstance(error, NotFound) and (error.code, error.field) == ("invalid_request_error", None)


def test_an_openai_shaped_rate_limit_keeps_retry_after() -> None:
    error = error_from_response(
        429, {"retry-after": "3"}, openai_body("slow", "rate_limit_error", None, "too_many_streams")
    )
    assert isinstance(error, RateLimited) and (error.retry_after, error.code) == (3.0, "too_many_streams")


def test_a_max_price_refusal_is_a_conflict_naming_the_cap_it_is_above() -> None:
    message = "the completion price is 0.0004 $FAR per token now, above provider.max_price.completion (0.0003)"
    error = error_from_response(409, {}, body("max_price_exceeded", message, "provider.max_price.completion"))
    assert isinstance(error, MaxPriceExceeded) and isinstance(error, Conflict)
    assert error.field == "provider.max_price.completion" and "0.0003" in error.message


def test_an_unsatisfiable_route_from_a_non_streamed_openai_route_is_the_stream_errors_class() -> None:
    answer = openai_body("no server holds blocks 2..3", "invalid_request_error", "provider", "route_unsatisfiable")
    error = error_from_response(409, {}, answer)
    assert isinstance(error, RouteUnsatisfiable) and isinstance(error, GenerationFailed)
    assert (error.status, error.field) == (409, "provider")

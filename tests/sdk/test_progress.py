"""farlabs.progress: tokens counted once, the running cost, and the ending, from native and OpenAI events."""

import json
from decimal import Decimal
from typing import Any

import pytest
from farlabs.errors import GenerationFailed
from farlabs.progress import Progress


def token(index: int, text: str = "t") -> str:
    cost = str(Decimal("0.0003") * (index + 1))
    return json.dumps(
        {
            "token": text,
            "request_id": "r",
            "index": index,
            "token_id": 1,
            "tokens_generated": index + 1,
            "cost_far": cost,
        }
    )


def done(tokens: int, status: str = "completed", reason: str = "length") -> str:
    cost = str(Decimal("0.0003") * tokens)
    body = {"done": True, "request_id": "r", "status": status, "finish_reason": reason}
    return json.dumps(body | {"prompt_tokens": 4, "tokens_generated": tokens, "total_cost_far": cost})


def test_tokens_carry_the_running_cost_and_the_done_event_the_billed_usage() -> None:
    progress = Progress("r")
    assert [progress.accept(f"1-{i}", token(i, f"w{i}")) for i in range(3)] == ["w0", "w1", "w2"]
    assert progress.cost_far == Decimal("0.0009") and progress.last_event_id == "1-2"
    assert progress.accept("1-3", done(3)) is None
    assert progress.finished and progress.finish_reason == "length"
    assert progress.usage is not None and progress.usage.total_tokens == 7
    assert progress.usage.total_cost_far == Decimal("0.0009")


def test_a_replay_that_overlaps_what_was_delivered_yields_nothing_twice() -> None:
    progress = Progress("r")
    first = [progress.accept(f"1-{i}", token(i)) for i in range(3)]
    replayed = [progress.accept(f"1-{i}", token(i)) for i in range(5)]
    assert first == ["t"] * 3 and replayed == [None, None, None, "t", "t"]
    assert progress.tokens_generated == 5


def test_an_error_event_raises_generation_failed_with_what_was_billed() -> None:
    progress = Progress("r")
    progress.accept("1-0", token(0))
    event: dict[str, Any] = {"error": {"code": "no_route", "message": "no server"}, "request_id": "r"}
    with pytest.raises(GenerationFailed) as raised:
        progress.accept("1-1", json.dumps(event | {"tokens_generated": 1, "total_cost_far": "0.0003"}))
    assert raised.value.code == "no_route" and raised.value.tokens_generated == 1
    assert raised.value.total_cost_far == Decimal("0.0003") and progress.finish_reason == "error"


def test_an_openai_error_chunk_says_what_was_billed_as_cost_far() -> None:
    progress = Progress("r")
    chunk = {"error": {"code": "no_route", "message": "no server"}, "request_id": "r", "cost_far": "0.0002"}
    with pytest.raises(GenerationFailed) as raised:
        progress.accept("", json.dumps(chunk))
    assert raised.value.total_cost_far == Decimal("0.0002") and progress.cost_far == Decimal("0.0002")


def test_openai_chunks_give_the_same_tokens_cost_and_usage() -> None:
    progress = Progress("r")
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hi", "role": "assistant"}}], "cost_far": "0.0003"}
    assert progress.accept("1-0", json.dumps(chunk)) == "Hi"
    usage = {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5, "cost_far": "0.0003"}
    final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": usage, "status": "completed"}
    assert progress.accept("1-1", json.dumps(final)) is None
    assert progress.accept("", "[DONE]") is None
    assert progress.finish_reason == "length" and progress.usage is not None
    assert progress.usage.completion_tokens == 1 and progress.cost_far == Decimal("0.0003")
    # the same stream resumed on the native route goes on counting from where the chunks left it
    assert Progress("r").accept("1-0", token(0)) == "t"

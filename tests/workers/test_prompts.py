import time

import pytest
from transformers import AutoTokenizer

from protocol.catalog import ModelSpec
from protocol.jobs import ChatTurn, GenerateJob
from workers.prompts import has_chat_template, prompt_ids

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
    "{{ m['content'] }}{% endfor %}"
)


class _Served:
    def __init__(self, tokenizer: object, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.spec = ModelSpec(model_id="m", chat_template=chat_template)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])  # type: ignore[operator]


def _job(**fields: object) -> GenerateJob:
    values: dict[str, object] = {
        "request_id": "req-template",
        "model_id": "m",
        "prompt": "User: Hi\nAssistant:",
        "max_tokens": 4,
        "temperature": 0.0,
        "top_p": 1.0,
        "price_per_token_far": "0.1",
        "enqueued_at": time.time(),
    }
    return GenerateJob.model_validate({**values, **fields})


@pytest.fixture
def tokenizer(tiny_models: tuple[ModelSpec, ...]) -> object:
    return AutoTokenizer.from_pretrained(tiny_models[0].weights_source)


def test_a_chat_job_is_formatted_with_the_tokenizers_own_template(tokenizer: object) -> None:
    tokenizer.chat_template = TEMPLATE  # type: ignore[attr-defined]
    served = _Served(tokenizer)
    job = _job(messages=[ChatTurn(role="system", content="Be brief."), ChatTurn(role="user", content="Hi")])
    expected = tokenizer("<system>Be brief.\n<user>Hi\n<assistant>", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert prompt_ids(served, job) == expected


def test_without_a_template_of_its_own_the_gateways_fallback_prompt_is_used(tokenizer: object) -> None:
    assert not has_chat_template(tokenizer)  # transformers' class-wide default (ChatML) is not the model's
    served = _Served(tokenizer)
    job = _job(messages=[ChatTurn(role="user", content="Hi")])
    assert prompt_ids(served, job) == served.encode("User: Hi\nAssistant:")


def test_a_template_that_refuses_the_turns_falls_back_to_the_prompt(tokenizer: object) -> None:
    tokenizer.chat_template = STRICT_TEMPLATE  # type: ignore[attr-defined]
    served = _Served(tokenizer)
    job = _job(messages=[ChatTurn(role="system", content="x"), ChatTurn(role="user", content="Hi")])
    assert prompt_ids(served, job) == served.encode(job.prompt)


def test_a_completion_job_uses_its_prompt_whatever_the_template(tokenizer: object) -> None:
    tokenizer.chat_template = TEMPLATE  # type: ignore[attr-defined]
    served = _Served(tokenizer)
    assert prompt_ids(served, _job(prompt="Once upon")) == served.encode("Once upon")


def test_a_template_recorded_in_the_catalogue_serves_a_tokenizer_without_one(tokenizer: object) -> None:
    served = _Served(tokenizer, chat_template=TEMPLATE)
    job = _job(messages=[ChatTurn(role="user", content="Hi")])
    expected = tokenizer("<user>Hi\n<assistant>", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert prompt_ids(served, job) == expected

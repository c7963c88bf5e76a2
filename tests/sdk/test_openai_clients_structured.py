"""Structured outputs through the clients buyers use, against the whole system (gateway, real workers, real
swarm): the openai package's `chat.completions.parse` with a pydantic model and LangChain's
`with_structured_output`. The tiny model's weights are random: the worker's grammar alone makes its replies parse
into the models. (Tool calls need a prompt offering the tools, longer than the tiny models' 256 positions: LangChain's
`bind_tools` is checked against the gateway in tests/gateway/test_tool_calls.py, the worker's grammar for calls
in tests/workers.)"""

from typing import Literal

import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.fixtures.system import SystemUnderTest

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]


class Colour(BaseModel):
    """A colour and how dark it is."""

    name: Literal["red", "green", "blue"]
    shade: int = Field(ge=0, le=9)


def chat_openai(sut: SystemUnderTest) -> ChatOpenAI:
    return ChatOpenAI(
        model=sut.models[0].model_id,
        base_url=f"{sut.url}/v1",
        api_key=sut.system.api_key,  # type: ignore[arg-type]
        max_retries=0,
        max_tokens=96,  # type: ignore[call-arg]
        temperature=1.0,
    )


async def test_the_openai_package_parses_a_reply_into_a_pydantic_model(e2e_system: SystemUnderTest) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{e2e_system.url}/v1", api_key=e2e_system.system.api_key, max_retries=0, timeout=60
    ) as client:
        completion = await client.chat.completions.parse(
            model=e2e_system.models[0].model_id,
            messages=[{"role": "user", "content": "Name a colour"}],
            response_format=Colour,
            max_tokens=96,
        )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Colour) and completion.choices[0].finish_reason == "stop"


async def test_langchain_with_structured_output_returns_the_pydantic_model(e2e_system: SystemUnderTest) -> None:
    structured = chat_openai(e2e_system).with_structured_output(Colour, method="json_schema", strict=True)
    assert isinstance(await structured.ainvoke("Name a colour"), Colour)

"""A chat job on a real swarm is prefilled with the model's chat template, here the one the catalogue records."""

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from transformers import AutoTokenizer

from mesh.local_swarm import LocalSwarm
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent
from protocol.jobs import ChatTurn
from tests.fixtures.workers import RunningFleet, enqueue, make_job, wait_for_end

pytestmark = pytest.mark.swarm

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


async def test_a_chat_job_is_prefilled_with_the_catalogues_template_not_the_fallback_prompt(
    two_server_swarm: LocalSwarm,
    fleet_factory: Callable[..., RunningFleet],
    tiny_models: tuple[ModelSpec, ...],
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    model = tiny_models[0].model_copy(update={"chat_template": TEMPLATE})
    fleet_factory(two_server_swarm.initial_peers, [model])
    turns = [ChatTurn(role="system", content="Be brief."), ChatTurn(role="user", content="Name a colour.")]
    fallback = "System: Be brief.\nUser: Name a colour.\nAssistant:"
    job = make_job(model, prompt=fallback, max_tokens=4, messages=turns)
    await enqueue(redis_url, job)
    done = (await wait_for_end(redis, job.request_id))[-1]

    tokenizer = AutoTokenizer.from_pretrained(model.weights_source)
    templated = tokenizer.apply_chat_template(
        [t.model_dump() for t in turns], chat_template=TEMPLATE, add_generation_prompt=True, tokenize=True
    )
    assert isinstance(done, DoneEvent) and done.status == "completed"
    assert done.prompt_tokens == len(templated) != len(tokenizer(fallback)["input_ids"])

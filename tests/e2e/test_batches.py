"""A batch through the whole system with a worker killed while it runs one of the batch's lines: every line is
answered once in the output file and billed once in the ledger, at the batch's discounted price."""

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from devstack.harness.system import PRICE_FAR
from devstack.supervisor import Child
from gateway.batch_store import line_request_id
from protocol import keys
from tests.e2e.helpers import PROMPT, kill_group, killed_then_restarted, worker_running
from tests.fixtures.system import SystemUnderTest, assert_books_balance, ledger_rows, wait_until_accounted

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

LINES = 20
TOKENS = 30


async def _victim(sut: SystemUnderTest, batch_id: str, timeout_s: float = 60) -> Child:
    """The worker running a line of `batch_id` that is mid-stream (a few tokens out, more to come)."""
    redis = aioredis.Redis.from_url(sut.redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for index in range(LINES):
                request_id = line_request_id(batch_id, index)
                if (
                    await redis.exists(keys.job_lease(request_id))
                    and 3 <= await redis.xlen(keys.token_stream(request_id)) < TOKENS // 2
                ):
                    return await worker_running(sut, request_id)
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
    raise AssertionError("no line of the batch was caught mid-stream")


async def test_a_batch_with_a_worker_killed_mid_line_answers_and_bills_every_line_once(
    e2e_system: SystemUnderTest,
) -> None:
    model = e2e_system.models[0].model_id
    text = "".join(
        json.dumps(
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0},
            }
        )
        + "\n"
        for i in range(LINES)
    )
    async with e2e_system.client() as client:
        files = {"file": ("in.jsonl", text.encode())}
        uploaded = await client.post("/v1/files", files=files, data={"purpose": "batch"})
        assert uploaded.status_code == 200, uploaded.text
        body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        created = await client.post("/v1/batches", json=body)
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        victim = await _victim(e2e_system, batch_id)
        kill_group(victim)
        async with killed_then_restarted(e2e_system, victim.name):
            deadline = time.monotonic() + 180
            while (batch := (await client.get(f"/v1/batches/{batch_id}")).json())["status"] != "completed":
                assert batch["status"] == "in_progress" and time.monotonic() < deadline, batch
                await asyncio.sleep(0.2)
        assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        content = await client.get(f"/v1/files/{batch['output_file_id']}/content")
    output: list[dict[str, Any]] = [json.loads(line) for line in content.text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(f"row-{i}" for i in range(LINES))
    answers = {line["response"]["request_id"]: line["response"]["body"] for line in output}
    texts = {body["choices"][0]["text"] for body in answers.values()}
    assert len(texts) == 1, texts  # greedy: the line the worker died under continued, it did not restart

    await wait_until_accounted(e2e_system.redis_url)
    request_ids = [line_request_id(batch_id, i) for i in range(LINES)]
    assert set(answers) == set(request_ids)
    rows = await ledger_rows(e2e_system.postgres_url, request_ids)
    for request_id in request_ids:
        (session,) = rows[request_id]
        assert session.row["tokens_generated"] == answers[request_id]["usage"]["completion_tokens"]
        assert session.row["price_per_token_far"] == PRICE_FAR * Decimal("0.5")
        assert_books_balance(session, session.row["tokens_generated"], PRICE_FAR * Decimal("0.5"))

"""The Batch API against the real gateway process, its lines answered by the synthetic worker: files, a batch run
to completion at the discounted price, validation failures with their error file, cancel, and buyers kept apart.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from devstack.harness.synthetic_worker import SyntheticWorker
from gateway.api_keys import KeyLimits
from gateway.batch_store import line_request_id
from protocol import keys
from protocol.ownership import RequestOwner
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, PRICE, IssueKey, auth

pytestmark = pytest.mark.usefixtures("healthy_swarm")

OTHER_WALLET = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


def chat_line(custom_id: str, text: str, **body: Any) -> str:
    request = {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request})


async def upload(client: httpx.AsyncClient, key: str, text: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/files", headers=auth(key), files={"file": ("in.jsonl", text.encode())}, data={"purpose": "batch"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def create(client: httpx.AsyncClient, key: str, file_id: str) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = await client.post("/v1/batches", headers=auth(key), json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_for(client: httpx.AsyncClient, key: str, batch_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}", headers=auth(key))).json()
        if batch["status"] in statuses:
            return dict(batch)
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.1)


async def lines_of(client: httpx.AsyncClient, key: str, file_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/files/{file_id}/content", headers=auth(key))
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


async def test_a_batch_runs_each_line_once_at_the_discounted_price(
    gateway_url: str, issue_key: IssueKey, synthetic_worker: SyntheticWorker
) -> None:
    key, key_id = await issue_key()
    text = "\n".join(chat_line(f"line-{i}", f"say {i}") for i in range(6)) + "\n"
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        uploaded = await upload(client, key, text)
        assert uploaded["purpose"] == "batch" and uploaded["bytes"] == len(text.encode())
        batch = await create(client, key, uploaded["id"])
        assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 6
        done = await wait_for(client, key, batch["id"], "completed", "failed")
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
        assert done["error_file_id"] is None
        output = await lines_of(client, key, done["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == [f"line-{i}" for i in range(6)]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in output)
    jobs = synthetic_worker.jobs
    assert len(jobs) == 6 and len({job.request_id for job in jobs}) == 6
    assert {job.price_per_token_far for job in jobs} == {PRICE * Decimal("0.5")}
    assert {job.api_key_id for job in jobs} == {key_id}
    assert all(job.answered_whole for job in jobs)  # a line that fails bills nothing: its buyer receives no token
    assert Decimal(done["prices"][MODEL_ID]["completion_price_per_token_far"]) == PRICE * Decimal("0.5")


async def test_a_bad_line_fails_the_batch_with_every_bad_line_listed(
    gateway_url: str, issue_key: IssueKey, synthetic_worker: SyntheticWorker
) -> None:
    key, _ = await issue_key()
    lines = [
        chat_line("good", "hello"),
        "{not json",
        chat_line("other-model", "hi", model="nobody/none"),
        json.dumps({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}}),
        chat_line("too-long", "x" * 5000),
        chat_line("good", "repeated"),
    ]
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        batch = await create(client, key, (await upload(client, key, "\n".join(lines)))["id"])
        assert batch["status"] == "failed"
        codes = [(e["line"], e["code"]) for e in batch["errors"]["data"]]
        assert codes == [
            (2, "invalid_json_line"),
            (3, "model_not_found"),
            (4, "invalid_url"),
            (5, "line_too_large"),
            (6, "duplicate_custom_id"),
        ]
        errors = await lines_of(client, key, batch["error_file_id"])
        assert [e["line"] for e in errors] == [2, 3, 4, 5, 6]
        wrong = await client.post(
            "/v1/batches",
            headers=auth(key),
            json={"input_file_id": batch["input_file_id"], "endpoint": "/v1/embeddings", "completion_window": "24h"},
        )
        assert wrong.status_code == 400, wrong.text
    assert synthetic_worker.jobs == []


async def test_cancel_stops_a_batch_and_lists_what_never_ran(
    gateway_url: str, issue_key: IssueKey, synthetic_worker: SyntheticWorker
) -> None:
    key, _ = await issue_key()
    text = "\n".join(chat_line(f"hold-{i}", f"hold {i}", max_tokens=64) for i in range(10))
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        batch = await create(client, key, (await upload(client, key, text))["id"])
        deadline = time.monotonic() + 10
        while len(synthetic_worker.jobs) < 4:  # GATEWAY_BATCH_MAX_IN_FLIGHT lines start, no more
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        cancelling = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth(key))
        assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"
        done = await wait_for(client, key, batch["id"], "cancelled")
        assert done["cancelled_at"] is not None
        output = await lines_of(client, key, done["output_file_id"])
        errors = await lines_of(client, key, done["error_file_id"])
        again = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth(key))
        assert again.status_code == 409
    assert len(synthetic_worker.jobs) == 4
    assert len(output) == 4  # the running lines, each cut short and billed for what it delivered
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"} and len(errors) == 6
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"hold-{i}" for i in range(10))


async def test_another_buyer_sees_none_of_it(
    gateway_url: str, issue_key: IssueKey, healthy_swarm: SwarmSnapshot
) -> None:
    key, _ = await issue_key()
    other, _ = await issue_key(wallet=OTHER_WALLET)
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        file_id = (await upload(client, key, chat_line("a", "hold on") + "\n"))["id"]
        batch = await create(client, key, file_id)
        for method, path in (
            ("GET", f"/v1/files/{file_id}"),
            ("GET", f"/v1/files/{file_id}/content"),
            ("DELETE", f"/v1/files/{file_id}"),
            ("GET", f"/v1/batches/{batch['id']}"),
            ("POST", f"/v1/batches/{batch['id']}/cancel"),
        ):
            response = await client.request(method, path, headers=auth(other))
            assert response.status_code == 404, (method, path, response.text)
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        assert (await client.post("/v1/batches", headers=auth(other), json=body)).status_code == 404
        assert (await client.get("/v1/files", headers=auth(other))).json()["data"] == []
        assert (await client.get("/v1/batches", headers=auth(other))).json()["data"] == []
        mine = (await client.get("/v1/batches", headers=auth(key))).json()["data"]
        assert [b["id"] for b in mine] == [batch["id"]]
        cancelled = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth(key))
        assert cancelled.status_code == 200
        deleted = await client.delete(f"/v1/files/{file_id}", headers=auth(key))
        assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
        assert (await client.get(f"/v1/files/{file_id}", headers=auth(key))).status_code == 404


async def test_a_runner_that_died_mid_dispatch_is_succeeded_without_a_line_lost_or_run_twice(
    gateway_url: str, issue_key: IssueKey, synthetic_worker: SyntheticWorker, redis: aioredis.Redis
) -> None:
    """The state a runner leaves when it dies: line 0 recorded pending with its owner key taken but no job
    enqueued, line 1 recorded pending with nothing else done. The next runner enqueues both, once each."""
    key, _ = await issue_key()
    await redis.set(keys.BATCH_RUNNER_LOCK, "a runner that died", px=30_000)  # the gateway's runner waits it out
    text = "\n".join(chat_line(f"line-{i}", f"say {i}") for i in range(3))
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        batch = await create(client, key, (await upload(client, key, text))["id"])
        batch_id = batch["id"]
        long_ago = time.time() - 60
        owner = RequestOwner("someone", MODEL_ID).encode()
        await redis.set(keys.request_owner(line_request_id(batch_id, 0)), owner)
        await redis.hset(keys.batch(batch_id), mapping={"cursor": 2, "pending": json.dumps({0: long_ago, 1: long_ago})})  # type: ignore[misc]
        await redis.delete(keys.BATCH_RUNNER_LOCK)
        done = await wait_for(client, key, batch_id, "completed")
        output = await lines_of(client, key, done["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == ["line-0", "line-1", "line-2"]
    ran = sorted(job.request_id for job in synthetic_worker.jobs)
    assert ran == sorted(line_request_id(batch_id, i) for i in range(3))


async def test_the_openai_package_runs_a_batch_unchanged(
    gateway_url: str, issue_key: IssueKey, synthetic_worker: SyntheticWorker
) -> None:
    key, _ = await issue_key()
    client = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key)
    text = "\n".join(chat_line(f"q{i}", f"say {i}") for i in range(2))
    uploaded = await client.files.create(file=("in.jsonl", text.encode()), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 20
    while batch.status != "completed":
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.1)
        batch = await client.batches.retrieve(batch.id)
    assert batch.request_counts is not None and batch.request_counts.completed == 2
    assert batch.output_file_id is not None
    content = await client.files.content(batch.output_file_id)
    answers = [json.loads(line) for line in content.text.splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["q0", "q1"]
    assert [b.id for b in (await client.batches.list()).data] == [batch.id]
    assert (await client.files.delete(uploaded.id)).deleted
    await client.close()


async def test_a_list_limit_that_is_not_a_plain_number_is_a_400(gateway_url: str, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        for limit in ("%C2%B2", "9" * 5000, "0", "x"):  # a superscript two, 5,000 digits, zero, a letter
            response = await client.get(f"/v1/batches?limit={limit}", headers=auth(key))
            assert response.status_code == 400, (limit, response.text)
            assert "limit must be an integer" in response.json()["error"]["message"]


async def test_ids_naming_other_keys_of_the_store_are_404(gateway_url: str, issue_key: IssueKey) -> None:
    key, key_id = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        file_id = (await upload(client, key, chat_line("a", "hold on") + "\n"))["id"]
        for batch_id in ("runner", f"of:{key_id}", f"file:{file_id}", "active"):
            response = await client.get(f"/v1/batches/{batch_id}", headers=auth(key))
            assert response.status_code == 404, (batch_id, response.text)
        assert (await client.post("/v1/batches/runner/cancel", headers=auth(key))).status_code == 404
        assert (await client.get("/v1/files/files-of:x", headers=auth(key))).status_code == 404


async def test_uploads_are_bounded_in_size_without_a_length_in_number_and_in_rate(
    gateway_url: str, issue_key: IssueKey
) -> None:
    key, _ = await issue_key(limits=KeyLimits(rate_limit_per_minute=5))
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'.encode()

    async def unannounced() -> AsyncIterator[bytes]:  # chunked: no Content-Length for the gateway to refuse up front
        yield head
        for _ in range(160):  # 10 MiB, over GATEWAY_BATCH_MAX_FILE_BYTES (8 MiB)
            yield b" " * 65536

    content_type = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        too_big = await client.post("/v1/files", headers=auth(key) | content_type, content=unannounced())
        # refused while the body was read, not once a form parser had spooled all of it to disk
        assert too_big.status_code == 413 and "exceeds the limit" in too_big.text, too_big.text
        for _ in range(3):  # GATEWAY_BATCH_MAX_FILES of the test gateway
            await upload(client, key, chat_line("a", "hi") + "\n")
        fourth = await client.post(
            "/v1/files", headers=auth(key), files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "batch"}
        )
        assert fourth.status_code == 429 and fourth.json()["error"]["code"] == "quota_exceeded"
        assert "retry-after" not in fourth.headers and "GATEWAY_BATCH_MAX_FILES" in fourth.text
        fifth = await client.post(  # the five uploads above used the key's five a minute
            "/v1/files", headers=auth(key), files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "batch"}
        )
        assert fifth.status_code == 429

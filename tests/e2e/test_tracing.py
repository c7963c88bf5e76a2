"""One request through the real local system is one trace: gateway, queue wait, the worker's steps, the ledger.

The processes are separate OS processes, so an in-memory exporter cannot see their spans: the system runs with
`FAR_MESH_TRACING=file:DIR` (tests.fixtures.system.traced_env) and each process appends its finished spans as
JSON lines under DIR; the test reads them back and checks the trace's shape and its parent links.
"""

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from telemetry.json_lines import read_spans
from tests.fixtures.system import SystemUnderTest, collect, spans_directory, token_events, wait_until_accounted

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

EXPECTED = {
    "gateway.request",
    "gateway.admission",
    "gateway.enqueue",
    "gateway.relay",
    "queue.wait",
    "worker.run",
    "worker.open_session",
    "worker.prefill",
    "worker.decode",
    "worker.finish",
    "ledger.write",
}


async def trace_of(directory: Path, request_id: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Every span of the trace whose gateway root names `request_id`, once all the expected ones are written."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = read_spans(directory)
        roots = [
            s for s in spans if s["name"] == "gateway.request" and s["attributes"].get("far.request_id") == request_id
        ]
        found = [s for s in spans if roots and s["trace_id"] == roots[0]["trace_id"]]
        if EXPECTED <= {s["name"] for s in found} or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_one_request_is_one_trace_covering_gateway_queue_wait_worker_steps_and_ledger_write(
    e2e_system: SystemUnderTest,
) -> None:
    request_id = f"e2e-trace-{uuid.uuid4().hex[:12]}"
    body = {"prompt": "Trace this request", "max_tokens": 6, "temperature": 0, "request_id": request_id}
    async with e2e_system.client() as client:
        events = await collect(client, body)
    tokens = token_events(events)
    assert events[-1]["status"] == "completed"
    await wait_until_accounted(e2e_system.redis_url)

    spans = await trace_of(spans_directory(e2e_system), request_id)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert EXPECTED <= set(by_name), f"missing {sorted(EXPECTED - set(by_name))}"
    tagged = [s for s in read_spans(spans_directory(e2e_system)) if s["attributes"].get("far.request_id") == request_id]
    assert {s["trace_id"] for s in tagged} == {spans[0]["trace_id"]}, "the request's spans are in one trace"

    def one(name: str) -> dict[str, Any]:
        [span] = by_name[name]
        return span

    root, run = one("gateway.request"), one("worker.run")
    assert root["parent_id"] is None and root["service"] == "far-mesh-gateway"
    assert one("gateway.admission")["parent_id"] == root["span_id"]
    assert one("gateway.enqueue")["parent_id"] == one("gateway.admission")["span_id"]
    assert one("gateway.relay")["parent_id"] == root["span_id"]
    waited = one("queue.wait")
    assert waited["parent_id"] == root["span_id"] and waited["service"] == "far-mesh-worker"
    assert waited["start_ns"] <= waited["end_ns"] <= run["start_ns"]
    assert run["parent_id"] == root["span_id"] and run["attributes"]["far.tokens"] == len(tokens)
    for step in ("worker.open_session", "worker.prefill", "worker.decode", "worker.finish"):
        assert all(s["parent_id"] == run["span_id"] for s in by_name[step]), step
    decoded = sum(s["attributes"]["far.tokens"] for s in by_name["worker.decode"])
    assert decoded + len(by_name["worker.prefill"]) >= len(tokens)  # one span per session, never one per token
    ledger = one("ledger.write")
    assert ledger["parent_id"] == run["span_id"] and ledger["service"] == "far-mesh-accounting"
    assert ledger["attributes"]["far.session_written"] is True
    assert ledger["start_ns"] <= ledger["end_ns"]
    assert "Trace this request" not in str(spans), "a prompt never goes into a span"

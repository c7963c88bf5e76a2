"""/metrics counts requests by route template and status, and reports streams and relay latency."""

import httpx
from prometheus_client import generate_latest

from gateway.metrics import GatewayMetrics
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import IssueKey, SyntheticWorker, read_events


async def test_metrics_count_routes_statuses_and_relayed_tokens(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        await client.get("/inference/req_nobody/stream", headers={"Authorization": f"Bearer {key}"})
        async with client.stream(
            "POST",
            "/inference/generate",
            json={"prompt": "hi", "max_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            await read_events(response)
        text = (await client.get("/metrics")).text
    assert 'far_gateway_requests_total{route="/inference/{request_id}/stream",status="404"}' in text
    assert 'far_gateway_requests_total{route="/inference/generate",status="200"}' in text
    assert "far_gateway_active_streams" in text
    count = next(line for line in text.splitlines() if line.startswith("far_gateway_relay_latency_seconds_count"))
    assert float(count.split()[-1]) >= 3


def test_the_relay_latency_histogram_counts_each_delay_in_its_bucket_and_every_wider_one() -> None:
    metrics = GatewayMetrics()
    metrics.relay_latency.observe_many([0.0004, 0.0015, 0.0015, 3.0])
    metrics.relay_latency.observe_many([])

    text = generate_latest(metrics.registry).decode()
    assert 'far_gateway_relay_latency_seconds_bucket{le="0.0005"} 1.0' in text
    assert 'far_gateway_relay_latency_seconds_bucket{le="0.002"} 3.0' in text
    assert 'far_gateway_relay_latency_seconds_bucket{le="2.5"} 3.0' in text
    assert 'far_gateway_relay_latency_seconds_bucket{le="+Inf"} 4.0' in text
    assert "far_gateway_relay_latency_seconds_count 4.0" in text
    assert "far_gateway_relay_latency_seconds_sum 3.0034" in text

"""GET /health, /mesh/status, /models in the seed's shapes, from the workers' snapshots and nothing else."""

import time
from datetime import UTC, datetime, timedelta

import httpx
import redis.asyncio as aioredis

from devstack.harness.gateway import OTHER_MODEL_FACTS
from protocol import keys
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, OTHER_MODEL_ID, IssueKey, SseReader, SyntheticWorker, snapshot


async def test_health_answers_the_seeds_body(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/health")
    assert response.json() == {"status": "healthy", "service": "far-mesh-coordinator", "version": "0.1.0"}


async def test_mesh_status_reports_the_snapshot_and_the_streams_in_flight(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        idle = (await client.get("/mesh/status")).json()
        body = {"prompt": "hold the line", "max_tokens": 8}
        async with client.stream(
            "POST", "/inference/generate", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            await SseReader(response).events(limit=1)
            busy = (await client.get("/mesh/status")).json()
    assert idle == {
        "model_id": MODEL_ID,
        "active_nodes": 2,
        "active_sessions": 0,
        "price_per_token_far": "0.0001",
        "prompt_price_per_token_far": "0",
        "completion_price_per_token_far": "0.0001",
        "price_multiplier": "1",
        "status": "connected",
        "healthy": True,
        "snapshot_taken_at": healthy_swarm.taken_at.isoformat(),
    }
    assert busy["active_sessions"] == 1


async def test_without_a_fresh_snapshot_status_says_disconnected_and_invents_no_numbers(
    gateway_url: str, redis: aioredis.Redis
) -> None:
    stale = snapshot(taken_at=datetime.now(UTC) - timedelta(minutes=2))
    await redis.hset(keys.SWARM_SNAPSHOTS, MODEL_ID, stale.model_dump_json())  # type: ignore[misc]
    await redis.hset(keys.SWARM_SNAPSHOTS, "garbage", "{not json")  # type: ignore[misc]
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        status = (await client.get("/mesh/status")).json()
        models = (await client.get("/models")).json()
    assert status["status"] == "disconnected" and status["active_nodes"] is None
    assert models == {
        "models": [
            {
                "model_id": MODEL_ID,
                "active_nodes": None,
                **dict.fromkeys(OTHER_MODEL_FACTS),
                "price_per_token_far": "0.0001",
                "prompt_price_per_token_far": "0",
                "completion_price_per_token_far": "0.0001",
                "price_multiplier": "1",
                "status": "unavailable",
                "nodes": [],
                "price_history": [],
            },
            {
                "model_id": OTHER_MODEL_ID,
                "active_nodes": None,
                **OTHER_MODEL_FACTS,
                "price_per_token_far": "0.0003",
                "prompt_price_per_token_far": "0.00002",
                "completion_price_per_token_far": "0.0003",
                "price_multiplier": "1",
                "status": "unavailable",
                "nodes": [],
                "price_history": [],
            },
        ]
    }


async def test_models_marks_a_model_available_only_when_every_block_is_served(
    gateway_url: str, redis: aioredis.Redis
) -> None:
    await redis.hset(
        keys.SWARM_SNAPSHOTS,
        mapping={  # type: ignore[misc]
            MODEL_ID: snapshot().model_dump_json(),
            OTHER_MODEL_ID: snapshot(OTHER_MODEL_ID, online=False).model_dump_json(),
        },
    )
    listed = {m["model_id"]: m for m in httpx.get(f"{gateway_url}/models").json()["models"]}
    assert (listed[MODEL_ID]["status"], listed[MODEL_ID]["active_nodes"]) == ("available", 2)
    assert (listed[OTHER_MODEL_ID]["status"], listed[OTHER_MODEL_ID]["active_nodes"]) == ("unavailable", 1)


async def test_models_list_each_node_with_the_reputation_and_ban_the_verifier_published(
    gateway_url: str, redis: aioredis.Redis, healthy_swarm: SwarmSnapshot
) -> None:
    await redis.hset(keys.NODE_REPUTATION, mapping={"QmA": "0.9", "QmB": "0.1"})  # type: ignore[misc]
    await redis.zadd(keys.BANNED_NODES, {"QmB": time.time() + 3600, "QmOld": time.time() - 60})
    listed = {m["model_id"]: m for m in httpx.get(f"{gateway_url}/models").json()["models"]}
    assert listed[MODEL_ID]["nodes"] == [
        {"node_id": "QmA", "start_block": 0, "end_block": 2, "state": "online", "reputation": "0.9", "banned": False},
        {"node_id": "QmB", "start_block": 2, "end_block": 4, "state": "online", "reputation": "0.1", "banned": True},
    ]

"""On a real local swarm: a session through a bfloat16 server is verified, not dropped.

Honest GPU servers compute and reply in 16 bits, and `far-mesh node`'s default `--torch-dtype auto` is bfloat16
on this machine's CPUs. The worker sends the first span float32 and every later span the previous server's reply,
so a span's inputs and outputs differ in dtype; each used to be decoded with the reply's label, the check failed
on its shape and was dropped whole, and no 16-bit server was ever verified. Here the swarm's 2..4 server runs
`--torch_dtype bfloat16` (`ServerPlan.torch_dtype`), the worker samples every session, and the verifier, in this
process as in production, must record an ok verdict for both servers, the bfloat16 one judged by the tolerance of
the dtype it announced.
"""

from collections.abc import Callable

import asyncpg
import pytest
import redis.asyncio as aioredis

from mesh.local_swarm import ServerPlan
from protocol import keys
from protocol.catalog import ModelSpec
from tests.fixtures.swarm import StartSwarm
from tests.fixtures.verifier import RunningVerifier
from tests.fixtures.workers import RunningFleet
from tests.verifier.swarm_helpers import generate, until
from verifier.tolerance import tolerance_for

pytestmark = pytest.mark.swarm


async def test_a_session_through_a_bfloat16_server_ends_in_an_ok_verdict_for_every_server(
    tiny_models: tuple[ModelSpec, ...],
    local_swarm_factory: StartSwarm,
    fleet_factory: Callable[..., RunningFleet],
    verifier_factory: Callable[..., RunningVerifier],
    redis_url: str,
    redis: aioredis.Redis,
    migrated_postgres_dsn: str,
) -> None:
    model = tiny_models[0]
    swarm = local_swarm_factory([ServerPlan(model, 0, 2), ServerPlan(model, 2, 4, torch_dtype="bfloat16")])
    float32_id, bfloat16_id = (server.peer_id for server in swarm.servers)
    announced = {
        peer.to_base58(): info.torch_dtype
        for module in swarm.module_infos(str(model.dht_prefix), 4)
        for peer, info in module.servers.items()
    }
    assert announced == {float32_id: "float32", bfloat16_id: "bfloat16"}
    await redis.delete(keys.BANNED_NODES, keys.VERIFIED_NODES)
    fleet_factory(swarm.initial_peers, [model], worker_verify_fraction=1.0)
    verifier_factory([model])
    request_id, tokens = await generate(redis_url, redis, model, migrated_postgres_dsn)
    assert tokens
    ledger = await asyncpg.connect(migrated_postgres_dsn)
    try:

        async def verdicts() -> list[asyncpg.Record]:
            rows = await ledger.fetch(
                "SELECT * FROM far_verifications WHERE request_id = $1 ORDER BY span_index",
                request_id,
            )
            return rows if len(rows) == 2 else []

        rows = await until(verdicts, "the session's verdicts", timeout_s=90)
    finally:
        await ledger.close()
    assert [(r["node_id"], r["verdict"], r.get("cause")) for r in rows] == [
        (float32_id, "ok", None),
        (bfloat16_id, "ok", None),
    ]
    assert rows[0]["tolerance"] == tolerance_for("float32", 2)
    assert rows[1]["tolerance"] == tolerance_for("bfloat16", 2)
    print(f"bfloat16 server's error {rows[1]['max_error']:.4f} against its tolerance {rows[1]['tolerance']}")

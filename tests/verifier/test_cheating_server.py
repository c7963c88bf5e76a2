"""The issue's done-when, on a real local swarm: a server with poisoned weights is caught, slashed and routed
around, and the books balance to the last 10^-18 FAR throughout.

The swarm starts with an honest server for blocks 0..2 and a cheat for 2..4 (the same model's blocks with
weights perturbed by 5%), so every route runs through the cheat. The worker samples every session
(WORKER_VERIFY_FRACTION=1), the verifier recomputes them, and accounting's own `write_batch` stores the usage
records. After VERIFIER_BAN_AFTER=2 sessions the cheat is banned; an honest 2..4 server joins, and
the next request runs on honest servers only and streams the reference tokens.
"""

import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from mesh.local_swarm import ServerPlan
from protocol import keys
from protocol.catalog import ModelSpec
from tests.fixtures.swarm import StartSwarm
from tests.fixtures.verifier import RunningVerifier
from tests.fixtures.workers import (
    RunningFleet,
    reference_continuation,
    usage_records,
)
from tests.verifier.swarm_helpers import PROMPT, TOKENS, generate, until

pytestmark = pytest.mark.swarm


def poisoned_copy(model: ModelSpec, where: Path, *, blocks: range, scale: float) -> ModelSpec:
    """The same model (config, tokenizer, DHT prefix) with the weights of `blocks` multiplied by 1 + noise."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model.weights_source, where)
    weights = load_file(str(where / "model.safetensors"))
    generator = torch.Generator().manual_seed(13)
    for name, tensor in weights.items():
        if any(f"layers.{block}." in name for block in blocks):
            weights[name] = tensor * (1 + scale * torch.randn(tensor.shape, generator=generator))
    save_file(weights, str(where / "model.safetensors"), metadata={"format": "pt"})
    return model.model_copy(update={"source": str(where)})


async def test_a_server_with_poisoned_weights_is_slashed_banned_and_routed_around(
    tiny_models: tuple[ModelSpec, ...],
    local_swarm_factory: StartSwarm,
    fleet_factory: Callable[..., RunningFleet],
    verifier_factory: Callable[..., RunningVerifier],
    redis_url: str,
    redis: aioredis.Redis,
    migrated_postgres_dsn: str,
    tmp_path: Path,
) -> None:
    model = tiny_models[0]
    poisoned = poisoned_copy(model, tmp_path / "poisoned", blocks=range(2, 4), scale=0.05)
    swarm = local_swarm_factory([ServerPlan(model, 0, 2, label="honest"), ServerPlan(poisoned, 2, 4, label="cheat")])
    honest_id, cheat_id = (server.peer_id for server in swarm.servers)
    await redis.delete(keys.BANNED_NODES, keys.VERIFIED_NODES)
    fleet_factory(swarm.initial_peers, [model], worker_verify_fraction=1.0)
    verifier_factory([model], verifier_ban_after=2, verifier_ban_s=600)
    ledger = await asyncpg.connect(migrated_postgres_dsn)
    try:
        cheated = [await generate(redis_url, redis, model, migrated_postgres_dsn) for _ in range(2)]

        async def banned() -> bool:
            return await redis.zscore(keys.BANNED_NODES, cheat_id) is not None

        await until(banned, "the cheat's ban")

        async def both_slashed() -> bool:
            outcomes = await ledger.fetch(
                "SELECT request_id, node_id, verdict, slash_outcome FROM far_verifications WHERE request_id = ANY($1)",
                [request_id for request_id, _ in cheated],
            )
            cheat_rows = [r for r in outcomes if r["node_id"] == cheat_id]
            honest_rows = [r for r in outcomes if r["node_id"] == honest_id]
            return (
                len(cheat_rows) == 2
                and all(r["verdict"] == "mismatch" and r["slash_outcome"] == "slashed" for r in cheat_rows)
                and len(honest_rows) == 2
                and all(r["verdict"] == "ok" for r in honest_rows)
            )

        await until(both_slashed, "both cheated sessions' verdicts and slashes")

        swarm.start_server(ServerPlan(model, 2, 4, label="honest-late"))
        request_id, tokens = await generate(redis_url, redis, model, migrated_postgres_dsn)
        assert tokens == reference_continuation(model, PROMPT, TOKENS)  # honest blocks only
        (record,) = await usage_records(redis, request_id)
        assert cheat_id not in {c.node_id for c in record.contributions}
        assert record.route_policy == "avoid-banned:1"

        async def verified_ok() -> bool:
            verdicts = await ledger.fetch("SELECT verdict FROM far_verifications WHERE request_id = $1", request_id)
            return len(verdicts) == 2 and all(v["verdict"] == "ok" for v in verdicts)

        await until(verified_ok, "the honest session's verdicts")

        everyone = [r for r, _ in cheated] + [request_id]
        balances = await ledger.fetch("SELECT * FROM far_session_balance WHERE request_id = ANY($1)", everyone)
        assert len(balances) == 3 and all(b["balanced"] for b in balances)
        slashed = await ledger.fetchval(
            "SELECT sum(amount_far) FROM far_slashes x JOIN far_mesh_sessions s ON s.id = x.session_id "
            "WHERE s.request_id = ANY($1) AND x.node_id = $2",
            everyone,
            cheat_id,
        )
        assert slashed > 0
        total = sum((b["payments_far"] + b["platform_remainder_far"] + b["slashed_far"] for b in balances), Decimal(0))
        assert total == sum((b["total_cost_far"] for b in balances), Decimal(0))
        unpaid_cheat = await ledger.fetchval(
            "SELECT coalesce(sum(payment_far), 0) FROM far_session_contributions WHERE node_id = $1", cheat_id
        )
        assert unpaid_cheat == 0
        reputation = await ledger.fetchrow("SELECT * FROM far_node_reputation WHERE node_id = $1", cheat_id)
        assert reputation["banned"] and reputation["verified_mismatches"] == 2
    finally:
        await ledger.close()

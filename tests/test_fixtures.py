from typing import Any

import asyncpg
import redis.asyncio as aioredis


async def test_redis_fixture_is_a_real_empty_redis(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.xadd("s", {"a": "1"})
    assert await redis.xlen("s") == 1


async def test_postgres_fixture_is_a_database_of_this_test_session(postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert (await connection.fetchval("SELECT current_database()")).startswith("far_mesh_test_")
    finally:
        await connection.close()


def test_make_test_runs_the_soaks_fixed_schedule_unless_told_another_seed() -> None:
    from tests.fixtures.soak import GATE_SEED, soak_seed

    assert soak_seed("") == GATE_SEED
    assert soak_seed("42") == 42
    assert len({soak_seed("random") for _ in range(5)}) > 1


def test_the_systems_and_the_soaks_tests_share_a_worker_the_shared_swarms_one_and_others_go_with_their_module() -> None:
    from types import SimpleNamespace

    from tests.fixtures.parallel import unit_of

    def item(path: str, *fixtures: str) -> Any:
        return SimpleNamespace(nodeid=f"{path}::test_x[a::b]", fixturenames=["request", *fixtures])

    assert unit_of(item("tests/e2e/test_faults.py", "e2e_system", "two_server_swarm")) == "system"
    assert unit_of(item("tests/soak/test_soak.py", "background_soak")) == "system"
    assert unit_of(item("tests/real_text/test_generation.py", "smollm2_swarm")) == "swarm"
    assert unit_of(item("tests/mesh/test_client.py", "two_server_swarm")) == "swarm"
    assert unit_of(item("tests/workers/test_recovery.py", "tiny_models")) == "tests/workers/test_recovery.py"

"""`far-mesh dev`: the whole system on one machine, the way `make run` starts it.

Order matters and each step says what it did: Redis and PostgreSQL (configured, local or embedded), the
ledger's migrations, the tiny models, a local swarm serving them, a development API key, and then the
Procfile's web, worker and accounting processes under one supervisor. Ctrl-C or SIGTERM stops all of it,
the swarm and any embedded server included.
"""

import asyncio
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.procfile import commands_for
from devstack.services import Service, resolve_postgres, resolve_redis
from devstack.supervisor import Supervisor

if TYPE_CHECKING:  # mesh imports torch, which `far-mesh --help` must not load
    from mesh.local_swarm import LocalSwarm
    from protocol.catalog import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_WALLET = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
"""The wallet the development key bills (an EIP-55 test vector; nobody's real money)."""
PROCESSES = ["web", "worker", "accounting"]


def run_dev(state_dir: Path, cache_dir: Path) -> int:
    with ExitStack() as cleanup:
        redis = _announce("redis", resolve_redis(state_dir))
        cleanup.callback(redis.stop)
        postgres = _announce("postgres", resolve_postgres(state_dir))
        cleanup.callback(postgres.stop)
        _migrate(postgres.url)
        swarm, models = _start_swarm(cache_dir, state_dir)
        cleanup.callback(swarm.stop)
        env = os.environ | {
            "REDIS_URL": redis.url,
            "POSTGRES_URL": postgres.url,
            "FAR_MESH_MODELS": json.dumps([m.model_dump(mode="json") for m in models]),
            "DEFAULT_MODEL_ID": models[0].model_id,
            "FAR_MESH_DHT_BOOTSTRAP": ",".join(swarm.initial_peers),
        }
        key = _development_key(postgres.url)
        supervisor = Supervisor()
        for name, argv in commands_for(REPO_ROOT / "Procfile", PROCESSES).items():
            supervisor.start(name, _this_python(argv), env)
        print(f"dev: gateway on http://127.0.0.1:8100 models={','.join(m.model_id for m in models)}", flush=True)
        print(f"dev: development API key (wallet {DEV_WALLET}): {key}", flush=True)
        return supervisor.wait()
    return 1  # pragma: no cover - ExitStack does not swallow exceptions


def _announce(what: str, service: Service) -> Service:
    print(f"dev: {what} {service.origin}", flush=True)
    return service


def _migrate(dsn: str) -> None:
    from schema.migrate import apply_migrations

    applied = asyncio.run(apply_migrations(dsn))
    print(f"dev: migrations applied={len(applied)}", flush=True)


def _start_swarm(cache_dir: Path, state_dir: Path) -> tuple["LocalSwarm", tuple["ModelSpec", ...]]:
    from mesh.local_swarm import LocalSwarm, split_plans
    from mesh.tiny_models import ensure_tiny_models

    models = ensure_tiny_models(cache_dir)
    plans = split_plans(models[0], parts=2) + [plan for model in models[1:] for plan in split_plans(model, parts=1)]
    print(f"dev: starting a local swarm of {len(plans)} servers for {len(models)} models", flush=True)
    swarm = LocalSwarm(plans, work_dir=state_dir / "swarm").start()
    print(f"dev: swarm ready initial_peers={' '.join(swarm.initial_peers)}", flush=True)
    return swarm, models


def _development_key(dsn: str) -> str:
    import asyncpg

    from gateway.api_keys import create_key

    async def issue() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            return (await create_key(connection, DEV_WALLET, label="far-mesh dev")).secret_key
        finally:
            await connection.close()

    return asyncio.run(issue())


def _this_python(argv: list[str]) -> list[str]:
    """Run `far-mesh ...` lines with this interpreter, so `make run` works without activating the venv."""
    return [sys.executable, "-m", "cli", *argv[1:]] if argv and argv[0] == "far-mesh" else argv

"""`far-mesh worker`: run the worker fleet process (configured from the environment, see workers/settings.py)."""

import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a generate worker: consumes the served models' queues and streams tokens from the swarm",
        description="Environment: FAR_MESH_DHT_BOOTSTRAP (required), REDIS_URL, FAR_MESH_MODELS, "
        "FAR_MESH_WORKER_MODELS, FAR_MESH_WORKER_MAX_JOBS, FAR_MESH_WORKER_METRICS_PORT; see workers/settings.py.",
    )
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    import asyncio

    from workers.fleet import run_fleet
    from workers.settings import WorkerSettings

    settings = WorkerSettings.from_env()
    settings.configure_logging()
    asyncio.run(run_fleet(settings))
    return 0

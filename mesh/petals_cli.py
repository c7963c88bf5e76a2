"""`python -m mesh.petals_cli {run_server,run_dht} ARGS...`: petals' own command lines, behind `mesh.compat`.

Petals servers and DHT bootstraps run as separate processes. Started as `python -m petals.cli.run_server` they
would import petals before hivemind's missing names are restored and fail; this entry point imports
`mesh.compat` first, then hands the remaining arguments to petals' unmodified `main()`. The local swarm's fork
server (`mesh.swarm_forks`) runs the same `main` in each process it forks, its imports already done.

With `FAR_MESH_AWAIT_PORT=host:port` set, the process imports everything (the slow part of its start) and then
waits, up to AWAIT_PORT_TIMEOUT_S, until something listens there before petals runs: the local swarm starts its
servers together with the DHT bootstrap they join, instead of one after the other. Started by a supervisor (the
local swarm's fork server, `far-mesh node`), the process and everything it starts die with that supervisor
(`mesh.process_lifetime`).

With `FAR_MESH_LOOPBACK_SERVER=1` (the local swarm's servers and DHT bootstrap, which listen and dial on loopback
only), a server skips the two probes petals and hivemind run before it joins, each starting a p2pd daemon of its
own (seconds on two busy cores): whether other peers can dial it (on loopback they can, the answer the probe
always gives there) and whether another peer already uses its identity file (the swarm makes one file per server,
and restarts a server only once its old process group is dead). Nor does a server or the bootstrap serve the first
probe to other peers, which costs each a p2pd daemon of its own too: no peer of a loopback swarm asks for it (a
`far-mesh node` that joins one and asks is told nothing, and runs as a full peer, as it would have anyway).
"""

import functools
import importlib
import os
import sys
import time
from typing import Any

COMMANDS = ("run_server", "run_dht")
AWAIT_PORT_VARIABLE = "FAR_MESH_AWAIT_PORT"
AWAIT_PORT_TIMEOUT_S = 120.0
LOOPBACK_SERVER_VARIABLE = "FAR_MESH_LOOPBACK_SERVER"


def command_line(name: str, args: list[str]) -> list[str]:
    """The command that runs petals' CLI `name` with `args` under this interpreter (so in the same environment)."""
    return [sys.executable, "-m", "mesh.petals_cli", name, *args]


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m mesh.petals_cli {{{','.join(COMMANDS)}}} ARGS...")
    from mesh.process_lifetime import die_with_supervisor

    die_with_supervisor()
    import mesh.compat  # noqa: F401 - restores hivemind's names before petals' CLI module is imported

    command = importlib.import_module(f"petals.cli.{argv[0]}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and hasattr(command, "validate_version"):
        # Offline (the local swarm), asking PyPI for petals' latest version only logs a failed request.
        setattr(command, "validate_version", lambda: None)  # noqa: B010 - a module attribute mypy cannot see
    if os.environ.get(LOOPBACK_SERVER_VARIABLE) == "1":
        skip_loopback_probes(command)
    if awaited := os.environ.get(AWAIT_PORT_VARIABLE):
        host, _, port = awaited.rpartition(":")
        await_port(host, int(port))
    sys.argv = [f"petals.cli.{argv[0]}", *argv[1:]]
    command.main()


def skip_loopback_probes(command: Any) -> None:
    """On loopback, neither run the probes nor serve them to other peers (see the module's docstring)."""
    from mesh.compat import petals

    # The service answers other peers' reachability probes, through a p2pd of its own; no loopback peer asks.
    no_service = classmethod(lambda *_, **__: None)
    setattr(petals.server.reachability.ReachabilityProtocol, "attach_to_dht", no_service)  # noqa: B010
    if hasattr(command, "Server"):  # Petals' Server passes unknown keywords on to hivemind's DHT, then P2P.create
        server = functools.partial(command.Server, reachable_via_relay=False, check_if_identity_free=False)
        setattr(command, "Server", server)  # noqa: B010 - a module attribute mypy cannot see


def await_port(host: str, port: int, timeout_s: float = AWAIT_PORT_TIMEOUT_S) -> None:
    from mesh.ports import port_is_taken

    deadline = time.monotonic() + timeout_s
    while not port_is_taken(port, host):
        if time.monotonic() > deadline:
            sys.exit(f"nothing listens on {host}:{port} after {timeout_s:.0f} s ({AWAIT_PORT_VARIABLE})")
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1:])

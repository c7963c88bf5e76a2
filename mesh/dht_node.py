"""`far-mesh dht`: the swarm's discovery service, a hivemind DHT bootstrap node with a stable identity.

Workers and Petals nodes join a swarm through `initial_peers`, multiaddrs that end in the bootstrap's peer id
(`/dns4/far-mesh-dht/tcp/31337/p2p/Qm...`). A peer id is derived from a private key, so the bootstrap keeps one
key file (in Kubernetes, a Secret mounted read-only): restarted or rescheduled, it comes back under the same
peer id and every configured multiaddr stays valid. `far-mesh dht --identity FILE --new-identity` creates the
key; `--show-peer-id` prints the id to configure workers with.

The node itself is Petals' `run_dht` (hivemind's DHT plus the reachability protocol Petals servers use to check
they can be dialled), started through `mesh.petals_cli` and exec'd, so signals reach it directly.

This module imports nothing heavy at import time: `workers.settings` uses `refuse_placeholders` to stop a worker
at start-up that was given a template's placeholder instead of a real bootstrap address.
"""

import argparse
import os
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.petals_cli import command_line

DEFAULT_PORT = 31337
IDENTITY_VARIABLE = "FAR_MESH_DHT_IDENTITY"
HOST_VARIABLE = "FAR_MESH_DHT_HOST"
PORT_VARIABLE = "FAR_MESH_DHT_PORT"
DEFAULT_IDENTITY_NAME = "dht-identity.key"
EXIT_REFUSED = 2

_PLACEHOLDER_MARKS = ("<", ">", "{", "}", "$", "...", "CHANGE_ME")
_PEER_ID = re.compile(r"/p2p/([^/]*)")


class DhtRefused(Exception):
    """The bootstrap cannot start as configured (no identity file, a corrupt one); the message says what to do."""


def refuse_placeholders(multiaddrs: Sequence[str]) -> None:
    """ValueError naming the first multiaddr that is a template's placeholder rather than a peer's address.

    Peer ids are base58 (letters and digits only), so `SET_THE_BOOTSTRAP_PEER_ID`, `Qm...` and an unexpanded
    Kubernetes `$(FAR_MESH_DHT_PEER_ID)` can never be one; a worker given them would start, then fail to join
    the DHT for minutes instead of saying so at once.
    """
    for addr in multiaddrs:
        peer_ids = _PEER_ID.findall(addr)
        if any(mark in addr for mark in _PLACEHOLDER_MARKS) or any(not p.isalnum() for p in peer_ids):
            raise ValueError(
                f"{addr!r} is a placeholder, not a DHT peer's address: set it to the bootstrap's multiaddr "
                "(`far-mesh dht --identity FILE --show-peer-id` prints its peer id)"
            )


def dht_host_port(multiaddr: str) -> tuple[str, int]:
    """The TCP host and port of a DHT peer's multiaddr (`/ip4/127.0.0.1/tcp/31337/p2p/Qm...`)."""
    parts = multiaddr.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp":
        raise ValueError(f"{multiaddr!r} is not a TCP multiaddr such as /ip4/127.0.0.1/tcp/31337/p2p/Qm...")
    try:
        return parts[1], int(parts[3])
    except ValueError:
        raise ValueError(f"{multiaddr!r} has no TCP port number") from None


def bootstrap_listens(multiaddrs: Sequence[str], timeout_s: float = 1.0) -> bool:
    """Whether any of these DHT peers accepts a TCP connection: processes started together (a Procfile) wait
    for this rather than fail to join a bootstrap that is still starting."""
    for addr in multiaddrs:
        try:
            with socket.create_connection(dht_host_port(addr), timeout=timeout_s):
                return True
        except OSError:  # refused, unreachable, or a DNS name not resolvable yet
            continue
    return False


def peer_id_of(identity: Path) -> str:
    """The base58 peer id of the libp2p private key stored at `identity`."""
    try:
        key = identity.read_bytes()
    except OSError as exc:
        raise DhtRefused(f"cannot read --identity {identity}: {exc.strerror}") from exc
    # Derived here as libp2p does (`mesh.node_registration`), not by hivemind, whose import loads torch: seconds
    # of every `far-mesh dht` and `far-mesh node` start. tests/mesh/test_dht_node.py checks it against hivemind's.
    from mesh.node_registration import private_node_key
    from protocol.peer_keys import parse_key_protobuf

    try:
        return private_node_key(*parse_key_protobuf(key)).peer_id
    except Exception as exc:  # a truncated or foreign file: protobuf and key parsing raise many types
        raise DhtRefused(f"--identity {identity} is not a libp2p private key ({type(exc).__name__})") from exc


def create_identity(identity: Path) -> None:
    """Write a new private key to `identity` (readable by its owner only); refuses to overwrite one.

    The key is the one hivemind's `P2P.generate_identity` writes (a 2048-bit RSA key, PKCS#1 DER, in a libp2p
    `PrivateKey` protobuf), made without importing hivemind (torch)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from protocol.peer_keys import KeyType, key_protobuf

    if identity.exists():
        raise DhtRefused(f"--identity {identity} exists; a bootstrap keeps its key (delete it to change peer id)")
    identity.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    descriptor = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_protobuf(KeyType.RSA, der))
    identity.chmod(0o600)


@dataclass(frozen=True)
class DhtConfig:
    """Where the bootstrap listens and what it announces; `identity` fixes its peer id."""

    identity: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    announce_hosts: tuple[str, ...] = ()
    """Addresses others dial (a DNS name or a public IP); empty: hivemind announces the interfaces it binds."""
    initial_peers: tuple[str, ...] = ()
    """Other bootstraps of the same swarm, for a redundant pair; empty starts a new swarm."""

    def listen_maddr(self) -> str:
        return f"/{_protocol(self.host)}/{self.host}/tcp/{self.port}"

    def announce_maddrs(self) -> list[str]:
        return [f"/{_protocol(host)}/{host}/tcp/{self.port}" for host in self.announce_hosts]

    def initial_peers_for_clients(self, peer_id: str) -> list[str]:
        """What workers and nodes pass as initial peers: each announced (else listening) address with the peer id."""
        return [f"{maddr}/p2p/{peer_id}" for maddr in self.announce_maddrs() or [self.listen_maddr()]]


def _protocol(host: str) -> str:
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", host):
        return "ip4"
    return "ip6" if ":" in host else "dns4"


def dht_command(config: DhtConfig) -> list[str]:
    """Petals' `run_dht` command line for `config` (under this interpreter, behind mesh.compat)."""
    args = ["--host_maddrs", config.listen_maddr(), "--identity_path", str(config.identity)]
    if config.announce_hosts:
        args += ["--announce_maddrs", *config.announce_maddrs()]
    if config.initial_peers:
        refuse_placeholders(config.initial_peers)
        args += ["--initial_peers", *config.initial_peers]
    return command_line("run_dht", args)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    dht = subparsers.add_parser(
        "dht", help="run the swarm's DHT bootstrap node with a stable peer id (workers' and nodes' initial peer)"
    )
    # Defaults from the environment, so the Procfile's `dht` line runs as written with the `.env` that
    # `far-mesh procfile-env` writes (its identity file and loopback port); flags win over variables.
    identity = os.environ.get(IDENTITY_VARIABLE)
    dht.add_argument(
        "--identity",
        type=Path,
        default=Path(identity) if identity else None,
        help=f"private key file; fixes the peer id (default: {IDENTITY_VARIABLE}, else FAR_MESH_CACHE_DIR/"
        f"{DEFAULT_IDENTITY_NAME})",
    )
    dht.add_argument("--new-identity", action="store_true", help="create --identity first when it does not exist")
    dht.add_argument("--show-peer-id", action="store_true", help="print the identity's peer id and exit")
    dht.add_argument(
        "--host",
        default=os.environ.get(HOST_VARIABLE, "0.0.0.0"),
        help=f"address to listen on (default: {HOST_VARIABLE}, else 0.0.0.0)",
    )
    dht.add_argument(
        "--port",
        type=int,
        default=os.environ.get(PORT_VARIABLE, str(DEFAULT_PORT)),  # argparse applies `type` to it
        help=f"TCP port (default: {PORT_VARIABLE}, else {DEFAULT_PORT})",
    )
    dht.add_argument(
        "--announce-host", action="append", default=[], help="a DNS name or IP others dial it by (repeatable)"
    )
    dht.add_argument("--initial-peers", nargs="*", default=[], help="other bootstraps of the same swarm")
    dht.add_argument(
        "--expect-peer-id",
        help="refuse to start unless --identity has this peer id (the one workers were configured with)",
    )
    dht.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = DhtConfig(
        identity=args.identity or _default_identity(),
        host=args.host,
        port=args.port,
        announce_hosts=tuple(args.announce_host),
        initial_peers=tuple(args.initial_peers),
    )
    try:
        if args.new_identity and not config.identity.exists():
            create_identity(config.identity)
        peer_id = peer_id_of(config.identity)
        expected = None if args.expect_peer_id is None else args.expect_peer_id.strip()
        if expected is not None and expected != peer_id:
            raise DhtRefused(
                f"--identity {config.identity} has peer id {peer_id}, not the expected {expected!r}: workers "
                "configured with that id could never join; store the key and its own peer id together"
            )
        command = dht_command(config)
    except (DhtRefused, ValueError) as exc:
        print(f"far-mesh dht: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.show_peer_id:
        print(peer_id)
        return 0
    print(f"far-mesh dht: peer_id={peer_id}", flush=True)
    print(f"initial peers: {' '.join(config.initial_peers_for_clients(peer_id))}", flush=True)
    os.execv(command[0], command)  # the bootstrap *is* petals' run_dht from here on


def _default_identity() -> Path:
    from mesh.settings import MeshSettings

    return MeshSettings.from_env().cache_dir / DEFAULT_IDENTITY_NAME

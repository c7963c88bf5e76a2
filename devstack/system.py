"""The whole system on one machine, as an object: `far-mesh dev` runs it, and the end-to-end tests start it
exactly the same way.

Order matters and each step says what it did: Redis and PostgreSQL (configured, local or embedded), the
ledger's migrations, the tiny models, a local swarm serving them, a development API key, and then the
Procfile's web, portal, accounting, verifier and worker processes under one supervisor. `stop()` stops all of
it, the swarm and any embedded server included.
"""

import asyncio
import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Self

from devstack.procfile import commands_for
from devstack.services import Service, resolve_postgres, resolve_redis
from devstack.supervisor import Child, Supervisor
from mesh.ports import free_port_to_keep

if TYPE_CHECKING:  # mesh imports torch, which `far-mesh --help` must not load
    from devstack.chain_node import DevChain
    from mesh.local_swarm import LocalSwarm, ServerPlan
    from protocol.catalog import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_WALLET = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
"""The wallet the development key bills without a chain (an EIP-55 test vector; nobody's real money)."""
SERVICES = ("web", "portal", "accounting", "verifier")
"""The Procfile's processes every system runs besides its workers (and the chain's processes when it has one). The
verifier is one of them: without it no sampled session is ever checked, so none is ever paid
(docs/verification.md), and a cheat running under `make run` would never be caught."""
CHAIN_PROCESSES = ("payouts", "deposits", "ledger")
"""The Procfile's chain processes, run when the system has a chain: the payer, the deposit watcher that credits
buyers' deposits, and the reconciliation loop that checks the books (`far-mesh ledger serve`)."""
DEV_BUYER_DEPOSIT_FAR = Decimal(1000)
"""What `far-mesh dev` deposits for the development buyer on the local chain when its balance is lower than half
of it, so the README's first curl is admitted against a real prepaid balance."""
DEV_FUNDING_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SystemPlan:
    state_dir: Path
    cache_dir: Path
    gateway_port: int = 8100
    portal_port: int = 8200
    workers: int = 1
    gateways: int = 1
    """Gateway processes ("web", then "web.2", ...) on the same Redis and PostgreSQL, each on its own port (the
    first on `gateway_port`): replicas behind a load balancer, as production runs them. `make run` runs one; the
    soak runs two, so a gateway can die while the other serves the resumes."""
    extra_replicas: int = 0
    """Extra servers for the last span of the default model, so a server can die without breaking the route."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Settings for every process on top of the ones the system computes (e.g. shorter timeouts in tests)."""
    chain: bool = False
    """Pay the swarm's providers on chain: a local EVM node, the $FAR contracts, and the Procfile's payouts."""
    real_models: bool = False
    """Also serve the real models converted from installed GGUF files (SmolLM2-135M-Instruct,
    `mesh.gguf_checkpoint`), each split over two servers so a route crosses servers. The first real model is then
    the default (what `make run` answers in English with), and the tiny models are served beside it, one server
    each; without, the tiny ones alone, the first split in two (the tests' fast system). About 0.5 GB per real
    model's server on a CPU, and a few seconds more to start."""


class LocalSystem:
    def __init__(self, plan: SystemPlan) -> None:
        self.plan = plan
        self.supervisor = Supervisor()
        self._cleanup = ExitStack()
        self.redis: Service | None = None
        self.postgres: Service | None = None
        self.swarm: LocalSwarm | None = None
        self.models: tuple[ModelSpec, ...] = ()
        self.api_key = ""
        self.chain: DevChain | None = None
        self.dev_wallet = DEV_WALLET
        """The wallet the development key bills: with a chain, the local chain's buyer account (it has a key, so
        it can really deposit); without, the test vector DEV_WALLET."""
        self.gateway_ports = (plan.gateway_port, *(free_port_to_keep() for _ in range(plan.gateways - 1)))
        """Each gateway's port, in the order of `gateway_names`."""
        # One key per run, kept across restarts of the portal process so its sign-in sessions survive them.
        self.portal_secret_key = secrets.token_urlsafe(32)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.plan.gateway_port}"

    @property
    def gateway_names(self) -> tuple[str, ...]:
        """The gateways' process names: "web" (the Procfile's line), then "web.2", "web.3", ..."""
        return tuple("web" if i == 1 else f"web.{i}" for i in range(1, len(self.gateway_ports) + 1))

    @property
    def gateway_urls(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{port}" for port in self.gateway_ports)

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.plan.portal_port}"

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.supervisor.stop_all()
        self._cleanup.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def process(self, name: str) -> Child:
        """A supervised process by name: web (web.2, ...), portal, accounting, verifier, payouts, worker.1, ..."""
        return next(child for child in self.supervisor.children if child.name == name)

    def start_process(
        self, name: str, env: Mapping[str, str] | None = None, *, argv: Sequence[str] | None = None
    ) -> Child:
        """(Re)start one Procfile process (e.g. after a fault test killed it) with the system's settings, plus
        `env` for this process alone; `argv` replaces its Procfile command (a test's fault-injecting stand-in)."""
        kind = name.partition(".")[0]
        argv = list(argv) if argv is not None else commands_for(REPO_ROOT / "Procfile", [kind])[kind]
        for old in [c for c in self.supervisor.children if c.name == name]:
            _forget(old)
        self.supervisor.children = [c for c in self.supervisor.children if c.name != name]
        return self.supervisor.start(name, _this_python(argv), self._env_for(name) | dict(env or {}))

    def _start(self) -> None:
        self.redis = _announce("redis", resolve_redis(self.plan.state_dir))
        self._cleanup.callback(self.redis.stop)
        self.postgres = _announce("postgres", resolve_postgres(self.plan.state_dir))
        self._cleanup.callback(self.postgres.stop)
        _migrate(self.postgres.url)
        if self.plan.chain:
            self.chain = _start_chain(self.plan.state_dir, self.postgres.url)
            self._cleanup.callback(self.chain.node.stop)
        self.models = _tiny_models(self.plan.cache_dir)
        if self.plan.real_models:  # the real model is the default: the README's requests answer in English
            self.models = _real_models(self.plan.cache_dir) + self.models
        self.swarm = _start_swarm(self._server_plans(), self.plan.state_dir / "swarm")
        self._cleanup.callback(self.swarm.stop)
        if self.chain:  # payouts pay registered wallets only: the local providers register their servers
            _register_local_providers(self.postgres.url, self.swarm)
        funding = None
        if self.chain:
            self.dev_wallet = self.chain.buyer_wallet
            funding = _fund_development_buyer(self.chain, self.postgres.url)
        self.api_key = _development_key(self.postgres.url, self.dev_wallet)
        chain_processes = list(CHAIN_PROCESSES) if self.chain else []
        workers = [f"worker.{i}" for i in range(1, self.plan.workers + 1)]
        services = [n for s in SERVICES for n in (self.gateway_names if s == "web" else (s,))]
        for name in [*services, *chain_processes, *workers]:
            self.start_process(name)
        if funding is not None:
            _wait_for_credit(self.postgres.url, self.dev_wallet, funding)
        print(
            f"dev: gateway on {' '.join(self.gateway_urls)} models={','.join(m.model_id for m in self.models)}",
            flush=True,
        )
        print(f"dev: portal on {self.portal_url} (providers' earnings and payouts, API keys, swarm map)", flush=True)
        print(f"dev: development API key (wallet {self.dev_wallet}): {self.api_key}", flush=True)

    def _server_plans(self) -> "list[ServerPlan]":
        from mesh.local_swarm import split_plans
        from mesh.tiny_models import TINY_MODELS

        default, *others = self.models
        plans = split_plans(default, parts=2, wallets=self.chain.provider_wallets if self.chain else ())
        plans += [plans[-1]] * self.plan.extra_replicas
        tiny = {recipe.name for recipe in TINY_MODELS}
        return plans + [plan for m in others for plan in split_plans(m, parts=1 if m.model_id in tiny else 2)]

    def _env_for(self, name: str) -> dict[str, str]:
        assert self.redis and self.postgres and self.swarm
        env = os.environ | {
            "REDIS_URL": self.redis.url,
            "POSTGRES_URL": self.postgres.url,
            "FAR_MESH_MODELS": json.dumps([m.model_dump(mode="json") for m in self.models]),
            "DEFAULT_MODEL_ID": self.models[0].model_id,
            "FAR_MESH_DHT_BOOTSTRAP": ",".join(self.swarm.initial_peers),
            "GATEWAY_PORT": str(self._gateway_port(name)),
            "PYTHONUNBUFFERED": "1",
        }
        if name.startswith("worker."):  # several workers on one machine need a metrics port each
            env["WORKER_METRICS_PORT"] = str(free_port_to_keep())
        if name == "accounting":
            env["ACCOUNTING_METRICS_PORT"] = str(free_port_to_keep())
        if name == "verifier":
            env["VERIFIER_METRICS_PORT"] = str(free_port_to_keep())
        if self.chain:
            # Buyers pay on the local chain: admission holds each request against its wallet's prepaid balance.
            env["GATEWAY_REQUIRE_PREPAID_BALANCE"] = "true"
        if name == "payouts" and self.chain:
            env |= self.chain.env
        if name in ("deposits", "ledger") and self.chain:  # the node and contracts; never the treasury's key
            env |= {k: v for k, v in self.chain.env.items() if k != "PAYOUT_TREASURY_KEY_FILE"}
            env |= {"DEPOSIT_POLL_S": "1", "DEPOSIT_METRICS_PORT": str(free_port_to_keep())}
            env |= {"LEDGER_RECONCILE_INTERVAL_S": "30", "LEDGER_METRICS_PORT": str(free_port_to_keep())}
        if name == "portal":
            env |= self._portal_env()
            if self.chain:  # the balance page names the deposit contract and the token
                env |= {
                    key: self.chain.env[key]
                    for key in ("CHAIN_ID", "CHAIN_TOKEN_ADDRESS", "DEPOSIT_CONTRACT_ADDRESS")
                    if key in self.chain.env
                }
        return env | dict(self.plan.env)

    def _gateway_port(self, name: str) -> int:
        """A gateway's own port; every other process is given the first's (the address it would call)."""
        names = self.gateway_names
        return self.gateway_ports[names.index(name)] if name in names else self.plan.gateway_port

    def _portal_env(self) -> dict[str, str]:
        """Plain HTTP on loopback: the session cookie cannot be Secure, so the portal listens on 127.0.0.1 only, and
        sign-in messages name the address the summary prints."""
        assert self.swarm
        return {
            "PORTAL_HOST": "127.0.0.1",
            "PORTAL_PORT": str(self.plan.portal_port),
            "PORTAL_DOMAIN": f"127.0.0.1:{self.plan.portal_port}",
            "PORTAL_SECRET_KEY": self.portal_secret_key,
            "PORTAL_SECURE_COOKIES": "false",
            "PORTAL_INITIAL_PEERS": ",".join(self.swarm.initial_peers),
        }


def _forget(child: Child) -> None:
    """Release a dead process's output pipe before it is replaced (a live one is left to `stop()`)."""
    if child.process.poll() is None:
        return
    child.pump.join(timeout=2)
    if child.process.stdout is not None:
        child.process.stdout.close()


def _announce(what: str, service: Service) -> Service:
    print(f"dev: {what} {service.origin}", flush=True)
    return service


def _start_chain(state_dir: Path, postgres_url: str) -> "DevChain":
    from devstack.chain_node import resolve_chain, write_operator_env

    chain = resolve_chain(state_dir)
    env_file = write_operator_env(chain, postgres_url, state_dir / "payouts.env")
    print(f"dev: chain {chain.node.origin} {chain.node.url} token={chain.env['CHAIN_TOKEN_ADDRESS']}", flush=True)
    print(f"dev: providers paid on chain: {' '.join(chain.provider_wallets)}", flush=True)
    print(f"dev: for `far-mesh payouts list` and `far-mesh chain balance`: set -a; . {env_file}; set +a", flush=True)
    return chain


def _register_local_providers(postgres_url: str, swarm: "LocalSwarm") -> None:
    from devstack.chain_node import register_providers

    registered = register_providers(postgres_url, [(s.peer_id, s.plan.wallet) for s in swarm.servers])
    print(f"dev: servers registered to their providers' wallets: {len(registered)}", flush=True)


def _migrate(dsn: str) -> None:
    from schema.migrate import apply_migrations

    applied = asyncio.run(apply_migrations(dsn))
    print(f"dev: migrations applied={len(applied)}", flush=True)


def _tiny_models(cache_dir: Path) -> "tuple[ModelSpec, ...]":
    from mesh.tiny_models import ensure_tiny_models

    return ensure_tiny_models(cache_dir)


def _real_models(cache_dir: Path) -> "tuple[ModelSpec, ...]":
    from mesh.gguf_checkpoint import ensure_packaged_models

    print("dev: converting (or reusing) the real models from their GGUF files", flush=True)
    return ensure_packaged_models(cache_dir)


def _start_swarm(plans: "list[ServerPlan]", work_dir: Path) -> "LocalSwarm":
    from mesh.local_swarm import LocalSwarm

    print(f"dev: starting a local swarm of {len(plans)} servers", flush=True)
    swarm = LocalSwarm(plans, work_dir=work_dir).start()
    print(f"dev: swarm ready initial_peers={' '.join(swarm.initial_peers)}", flush=True)
    return swarm


def _development_key(dsn: str, wallet: str) -> str:
    import asyncpg

    from gateway.api_keys import create_key

    async def issue() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            return (await create_key(connection, wallet, label="far-mesh dev")).secret_key
        finally:
            await connection.close()

    return asyncio.run(issue())


def _buyer_balance(dsn: str, wallet: str) -> Decimal:
    import asyncpg

    from accounting.journal import buyer_balance

    async def read() -> Decimal:
        connection = await asyncpg.connect(dsn)
        try:
            return await buyer_balance(connection, wallet)
        finally:
            await connection.close()

    return asyncio.run(read())


def _fund_development_buyer(chain: "DevChain", dsn: str) -> Decimal | None:
    """Deposit DEV_BUYER_DEPOSIT_FAR for the development buyer through the FarDeposit contract, as a buyer would,
    when its balance in the ledger is below half of it; returns the balance the watcher's credit will bring, or
    None when it is funded already (a restart on the same chain and ledger)."""
    from devstack.chain_node import fund_buyer

    before = _buyer_balance(dsn, chain.buyer_wallet)
    if before >= DEV_BUYER_DEPOSIT_FAR / 2:
        print(f"dev: development buyer {chain.buyer_wallet} holds {before} FAR prepaid", flush=True)
        return None
    transaction = fund_buyer(chain, DEV_BUYER_DEPOSIT_FAR)
    print(f"dev: development buyer deposited {DEV_BUYER_DEPOSIT_FAR} FAR in {transaction}", flush=True)
    return before + DEV_BUYER_DEPOSIT_FAR


def _wait_for_credit(dsn: str, wallet: str, expected: Decimal) -> None:
    """Wait until the deposit watcher has credited the development deposit (DEPOSIT_CONFIRMATIONS deep),
    so the first request after the summary is admitted; a watcher that never does is named, not hidden."""
    import time

    deadline = time.monotonic() + DEV_FUNDING_TIMEOUT_S
    while (balance := _buyer_balance(dsn, wallet)) < expected:
        if time.monotonic() > deadline:
            print(f"dev: WARNING the deposit watcher has not credited {wallet} yet (balance {balance} FAR)", flush=True)
            return
        time.sleep(0.5)
    print(f"dev: development buyer {wallet} credited: {balance} FAR prepaid", flush=True)


def _this_python(argv: list[str]) -> list[str]:
    """Run `far-mesh ...` lines with this interpreter, so `make run` works without activating the venv."""
    return [sys.executable, "-m", "cli", *argv[1:]] if argv and argv[0] == "far-mesh" else argv

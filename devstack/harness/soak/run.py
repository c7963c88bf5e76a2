"""One soak run from start to stop: the system, the schedule, the buyers, then the checkers, as one report.

The system is `start_system`'s (what `make run` starts: gateway, portal, accounting, verifier, two workers, a
local swarm with the default model's last span replicated) on a private PostgreSQL and a private Redis that
keeps an append-only file, as production's must, with two gateway replicas (`gateways`) and every process
reaching Redis and PostgreSQL through a loopback proxy the network faults break. Load and faults run for
`duration_s`; then faults stop, every process must serve again, accounting must drain the usage stream, and the
checkers read the ledger. With the chain, the payer settles and is stopped before the chain is reconciled
(`payer_quiet`). The system is stopped before the last check: no process it ever ran may still be running.
"""

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from devstack.harness.soak import checks
from devstack.harness.soak.buyers import Buyers, Request
from devstack.harness.soak.faults import FaultLog, record_pids, run_schedule, watchdog
from devstack.harness.soak.payer_quiet import chain_checks, system_chain_steps
from devstack.harness.soak.schedule import ALL_KINDS, CHAIN_KINDS, Fault, make_schedule
from devstack.harness.system import SystemUnderTest, start_system, stop_system, wait_until_accounted
from protocol import keys

BUDGET_FAR = Decimal("0.05")
"""The budget-limited key's total: a handful of requests, so its 402s come within the short run."""
DRAIN_TIMEOUT_S = 180.0
PAYOUT_TIMEOUT_S = 120.0
"""How long the payer has, after the load, to settle every batch it took (its rounds are 10 s in development)."""


@dataclass
class SoakReport:
    seed: int
    duration_s: float
    schedule: list[Fault]
    chain: bool = False
    requests: list[Request] = field(default_factory=list)
    log: FaultLog = field(default_factory=FaultLog)
    results: list[checks.Check] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(c.passed for c in self.results)

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.log.by_kind().items()))
        skipped = sum(i.outcome.startswith("skipped") for i in self.log.injected)
        tokens = sum(r.delivered for r in self.requests)
        lines = [
            f"soak seed={self.seed} duration={self.duration_s:.0f}s wall={self.wall_s:.0f}s "
            f"result={'PASS' if self.passed else 'FAIL'}",
            f"faults injected={sum(self.log.by_kind().values())} ({faults}); skipped={skipped}; "
            f"not injected: {', '.join(k for k in ALL_KINDS + CHAIN_KINDS if k not in self.log.by_kind()) or '-'}",
            f"requests={len(self.requests)} tokens delivered={tokens}; "
            f"on another gateway after a failure: {sum(len(r.gateways) > 1 for r in self.requests)}",
            *(c.line() for c in self.results),
        ]
        return "\n".join(lines)


async def _budget_key(dsn: str, wallet: str) -> tuple[str, str]:
    from gateway.api_keys import KeyLimits, create_key

    connection = await asyncpg.connect(dsn)
    try:
        issued = await create_key(connection, wallet, "soak budget", KeyLimits(max_budget_far=BUDGET_FAR))
    finally:
        await connection.close()
    return issued.key.key_id, issued.secret_key


async def _dead_letters(redis_url: str) -> int:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        return int(await redis.xlen(keys.USAGE_DEAD_LETTERS))
    finally:
        await redis.aclose()


def _postgres_pid(sut: SystemUnderTest) -> int | None:
    try:
        return int((sut.postgres.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def _drive(sut: SystemUnderTest, report: SoakReport, clients: int) -> None:
    key_id, budget_secret = await _budget_key(sut.postgres_url, sut.system.dev_wallet)
    buyers = Buyers(sut.urls, sut.system.api_key, budget_secret, report.seed, sut.models[0].model_id)
    report.requests = buyers.requests
    stop_watching = asyncio.Event()
    watching = asyncio.create_task(watchdog(sut, report.log, stop_watching))
    started = time.monotonic()
    await asyncio.gather(
        buyers.run(clients, until=started + report.duration_s), run_schedule(sut, report.schedule, report.log, started)
    )
    print(f"soak: load and faults over after {time.monotonic() - started:.0f}s; settling", flush=True)
    stop_watching.set()
    await watching
    await asyncio.to_thread(sut.wait_until_ready, DRAIN_TIMEOUT_S)
    await wait_until_accounted(sut.redis_url, DRAIN_TIMEOUT_S)
    ledger = await checks.read_ledger(sut.postgres_url)
    dead = await _dead_letters(sut.redis_url)
    refused = sum(r.ending == "http:402" for r in report.requests)
    report.results = [
        checks.every_request_ended(report.requests),
        checks.tokens_delivered_once_in_order(report.requests),
        checks.delivered_within_billed(report.requests, ledger),
        checks.no_request_billed_twice(ledger),
        checks.sessions_equal_requests_that_ran(report.requests, ledger),
        checks.earnings_exact(ledger),
        checks.budget_kept(ledger, key_id, BUDGET_FAR, refused),
        checks.Check("no usage record dead-lettered", dead == 0, f"{dead} dead letters"),
        checks.faults_restored(report.log.injected, report.log.unexpected_exits),
    ]
    if report.chain:  # the payer settles, then stops, before the books are held to the chain (payer_quiet.py)
        from devstack.chain_node import SUPPLY_FAR

        reconcile = functools.partial(checks.books_reconcile, *_reconcile_settings(sut))
        steps = system_chain_steps(sut, PAYOUT_TIMEOUT_S, reconcile, SUPPLY_FAR)
        report.results.extend(await chain_checks(steps))


def _reconcile_settings(sut: SystemUnderTest) -> tuple[dict[str, str], Decimal]:
    """The reconciliation's environment (the chain's, without the treasury's key) and the treasury's opening float:
    the whole supply, less what the treasury sent the development buyer to deposit (not a payout: docs/deposits.md)."""
    from devstack.chain_node import SUPPLY_FAR
    from devstack.system import DEV_BUYER_DEPOSIT_FAR

    assert sut.system.chain is not None
    chain_env = {k: v for k, v in sut.system.chain.env.items() if k != "PAYOUT_TREASURY_KEY_FILE"}
    env = os.environ | chain_env | {"POSTGRES_URL": sut.postgres_url, "REDIS_URL": sut.redis_url}
    return env, SUPPLY_FAR - DEV_BUYER_DEPOSIT_FAR


def run_soak(
    seed: int,
    duration_s: float,
    work_dir: Path,
    *,
    clients: int = 6,
    mean_gap_s: float = 12.0,
    chain: bool = False,
    gateways: int = 2,
) -> SoakReport:
    """Start the system, soak it, stop it, check; the report holds every check's numbers (printed as it goes).
    `chain`: the system pays on its own local chain, and the payer, the deposit watcher, the reconciliation loop and
    the chain node join the faults, and the payouts and the books on chain join the checks. `gateways`: the
    replicas the buyers spread over (a gateway fault kills one of them)."""
    began = time.monotonic()
    kinds = ALL_KINDS + CHAIN_KINDS if chain else ALL_KINDS
    report = SoakReport(seed, duration_s, make_schedule(seed, duration_s, mean_gap_s=mean_gap_s, kinds=kinds), chain)
    print(
        f"soak: seed={seed} duration={duration_s:.0f}s clients={clients} gateways={gateways} "
        f"faults={len(report.schedule)}",
        flush=True,
    )
    for fault in report.schedule:
        print(f"soak: schedule {fault.describe()}", flush=True)
    sut = start_system(work_dir, durable_redis=True, chain=chain, gateways=gateways, network_proxies=True)
    try:
        record_pids(sut, report.log)
        if (pid := _postgres_pid(sut)) is not None:
            report.log.pids.add(pid)
        asyncio.run(_drive(sut, report, clients))
    finally:
        record_pids(sut, report.log)
        stop_system(sut)
    report.results.append(checks.no_process_left(report.log.pids))
    report.wall_s = time.monotonic() - began
    print(report.summary(), flush=True)
    return report

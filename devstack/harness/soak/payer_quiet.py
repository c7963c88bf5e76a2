"""Quieting the payer before the books are held to the chain: the soak's chain checks, in their order.

`far-mesh ledger reconcile` compares the journal with the chain. A payout batch mined but not yet marked paid is
money the chain moved and the journal does not show as paid yet, so a reconciliation run while the payer works
finds them apart by exactly that batch: the first 30-minute soak did (docs/soak.md), reconciling right after
"no payout batch stuck" passed, while the payer, still running, had claimed and sent the next batch. Waiting
for no batch in flight is not enough while the payer runs; it claims another a round later. So, in order:

1. the running payer has its time to settle every batch it took ("no payout batch stuck": a payer that cannot
   finish a batch is a defect of its own, and this is where it shows);
2. it is stopped (SIGTERM: stopping at any moment is safe, the next start resumes from what it committed);
3. whatever it still had in flight, a batch claimed after step 1 or one its stop cut short, is driven to paid or
   failed by the one-shot payer, `far-mesh payouts run --payer chain`, the same code a restarted payer resumes
   with, given a minimum no wallet reaches so that it claims nothing new;
4. only then, with no batch in flight and none to come, is the chain reconciled.
"""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from devstack.harness.soak.checks import SHOWN, UNSETTLED_BATCH_STATUSES, Check
from devstack.harness.system import SystemUnderTest
from mesh.process_groups import signal_group

PAYER_PROCESS = "payouts"
STOP_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ChainSteps:
    """The steps of the chain checks; `chain_checks` runs them in the one order that makes the reconciliation
    meaningful (a test stands in for each)."""

    payouts_settled: Callable[[], Awaitable[Check]]
    stop_payer: Callable[[], Awaitable[None]]
    finish_in_flight: Callable[[], Awaitable[Check]]
    reconcile: Callable[[], Awaitable[Check]]


async def chain_checks(steps: ChainSteps) -> list[Check]:
    """Settled by the running payer, the payer stopped, what it had in flight finished, then the reconciliation."""
    settled = await steps.payouts_settled()
    await steps.stop_payer()
    finished = await steps.finish_in_flight()
    return [settled, finished, await steps.reconcile()]


def system_chain_steps(
    sut: SystemUnderTest, settle_timeout_s: float, reconcile: Callable[[], Check], supply_far: Decimal
) -> ChainSteps:
    """The steps against a running system with its chain; `supply_far` is more than any wallet is ever owed."""
    from devstack.harness.soak.checks import payouts_settled

    async def settled() -> Check:
        return await payouts_settled(sut.postgres_url, settle_timeout_s)

    async def stop() -> None:
        await asyncio.to_thread(stop_payer, sut)

    async def finish() -> Check:
        return await finish_in_flight(sut, supply_far)

    async def reconciled() -> Check:
        return await asyncio.to_thread(reconcile)

    return ChainSteps(settled, stop, finish, reconciled)


def stop_payer(sut: SystemUnderTest) -> None:
    """SIGTERM the supervised payer and wait for it to exit (SIGKILL after STOP_TIMEOUT_S: safe as well)."""
    child = sut.system.process(PAYER_PROCESS)
    if child.process.poll() is not None:
        return
    signal_group(child.process.pid, signal.SIGTERM)
    try:
        child.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        signal_group(child.process.pid, signal.SIGKILL)
        child.process.wait(10)


async def unsettled_batches(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM far_payment_batches WHERE status = ANY($1::text[])",
                list(UNSETTLED_BATCH_STATUSES),
            )
        )
    finally:
        await connection.close()


async def finish_in_flight(sut: SystemUnderTest, supply_far: Decimal) -> Check:
    """Drive the stopped payer's unfinished batches to paid or failed with `far-mesh payouts run --payer chain`,
    claiming nothing new (no wallet is owed `supply_far`); passes when none is left in flight."""
    assert sut.system.chain is not None, "the chain checks need the system started with its chain"
    before = await unsettled_batches(sut.postgres_url)
    env = os.environ | dict(sut.system.chain.env) | {"POSTGRES_URL": sut.postgres_url, "REDIS_URL": sut.redis_url}
    command = [sys.executable, "-m", "cli", "payouts", "run", "--payer", "chain", "--min-far", str(supply_far)]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=FINISH_TIMEOUT_S, check=False
    )
    after = await unsettled_batches(sut.postgres_url)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return Check(
        "the payer stopped with no batch in flight",
        done.returncode == 0 and after == 0,
        f"{before} in flight when it stopped, finished by `far-mesh payouts run --payer chain` "
        f"(exit {done.returncode}); {after} left",
        lines[-SHOWN:] if done.returncode or after else [],
    )

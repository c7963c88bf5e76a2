"""The soak's checkers: each returns a `Check` with its numbers, printed whether it passed or not, so a report
says how much was checked, not only that nothing failed.

What the ledger must show is exact: a request id billed at most once, a session for every request that ran and
for nothing else, every session's cost its tokens times its prices, and every node's payment its share of that
cost by work units (blocks × positions), to 10⁻¹⁸ FAR. What a client received may trail what was billed by at
most `IN_FLIGHT_BOUND` tokens: the README's "few tokens in flight" a worker writes to a stream Redis then loses.
"""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from devstack.harness.soak.buyers import Request
from protocol.money import split_with_fee

IN_FLIGHT_BOUND = 3
"""Tokens a run may bill beyond what its client received: those in flight when a stream ended (README, "What
Redis must guarantee"); the same bound tests/e2e/test_redis_restart.py holds a lost stream to."""
SHOWN = 8
UNSETTLED_BATCH_STATUSES = ("claimed", "signed", "submitted")
"""A batch the payer has taken and not yet settled (schema/0008)."""
"""Offending items listed per failed check; the count says how many there were in all."""


@dataclass(frozen=True)
class Session:
    row: dict[str, Any]
    contributions: list[dict[str, Any]]


@dataclass
class Check:
    name: str
    passed: bool
    numbers: str
    offenders: list[str] = field(default_factory=list)

    def line(self) -> str:
        shown = "; ".join(self.offenders[:SHOWN]) + (" ..." if len(self.offenders) > SHOWN else "")
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.numbers}" + (f" [{shown}]" if shown else "")


async def read_ledger(dsn: str, prefix: str = "soak-") -> dict[str, list[Session]]:
    """Every session whose request id starts with `prefix`, with its contributions, by request id."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT * FROM far_mesh_sessions WHERE request_id LIKE $1", prefix + "%")
        contributions = await connection.fetch(
            "SELECT c.* FROM far_session_contributions c JOIN far_mesh_sessions s ON s.id = c.session_id "
            "WHERE s.request_id LIKE $1",
            prefix + "%",
        )
    finally:
        await connection.close()
    by_session: dict[Any, list[dict[str, Any]]] = {}
    for contribution in contributions:
        by_session.setdefault(contribution["session_id"], []).append(dict(contribution))
    found: dict[str, list[Session]] = {}
    for row in rows:
        found.setdefault(row["request_id"], []).append(Session(dict(row), by_session.get(row["id"], [])))
    return found


def every_request_ended(requests: Sequence[Request]) -> Check:
    """Every request ended: its final event, or an HTTP refusal. Counted by kind and ending, so a kind that only
    ever ends refused (a harness that stopped exercising it) shows in the numbers."""
    endings: dict[str, int] = {}
    for request in requests:
        endings[f"{request.kind}/{request.ending}"] = endings.get(f"{request.kind}/{request.ending}", 0) + 1
    stuck = [f"{r.request_id} ({r.kind}, {r.ending})" for r in requests if not r.ended_cleanly]
    detail = ", ".join(f"{k}={v}" for k, v in sorted(endings.items()))
    refusals: dict[str, int] = {}
    for request in requests:
        if request.ending.startswith("http:"):
            refusals[f"{request.ending} {request.detail}"] = refusals.get(f"{request.ending} {request.detail}", 0) + 1
    if refusals:
        detail += "; refused: " + ", ".join(f"{k}={v}" for k, v in sorted(refusals.items()))
    return Check("every request ended", not stuck, f"{len(requests)} requests: {detail}", stuck)


def tokens_delivered_once_in_order(requests: Sequence[Request]) -> Check:
    """SSE clients hold token indexes 0..n-1, each once, however many resumes they took."""
    followed = [r for r in requests if r.tokens]
    gaps = [
        f"{r.request_id}: {len(r.tokens)} tokens, last index {max(r.tokens)}"
        for r in followed
        if set(r.tokens) != set(range(len(r.tokens)))
    ]
    resumed = sum(r.attempts > 1 for r in requests)
    return Check(
        "tokens delivered once, in order",
        not gaps,
        f"{len(followed)} SSE streams, {sum(len(r.tokens) for r in followed)} tokens, {resumed} requests "
        "retried or resumed",
        gaps,
    )


def delivered_within_billed(requests: Sequence[Request], ledger: Mapping[str, list[Session]]) -> Check:
    """delivered ≤ billed ≤ delivered + IN_FLIGHT_BOUND for every request that ended with its final event, and
    the final event's own count equals the ledger's."""
    wrong = []
    checked = delivered = billed_total = 0
    for request in requests:
        sessions = ledger.get(request.request_id, [])
        if not request.ending.startswith(("done:", "error:")) or len(sessions) != 1:
            continue
        billed = int(sessions[0].row["tokens_generated"])
        checked += 1
        delivered += request.delivered
        billed_total += billed
        if not request.delivered <= billed <= request.delivered + IN_FLIGHT_BOUND:
            wrong.append(
                f"{request.request_id} ({request.kind}, {request.ending}): delivered {request.delivered}, "
                f"billed {billed}"
            )
        elif request.reported is not None and request.reported != billed:
            wrong.append(f"{request.request_id}: final event says {request.reported}, ledger {billed}")
    return Check(
        "delivered <= billed <= delivered + in-flight bound",
        not wrong,
        f"{checked} requests, {delivered} tokens delivered, {billed_total} billed, bound {IN_FLIGHT_BOUND}",
        wrong,
    )


def no_request_billed_twice(ledger: Mapping[str, list[Session]]) -> Check:
    twice = [f"{rid}: {len(s)} sessions" for rid, s in ledger.items() if len(s) > 1]
    return Check("no request id billed twice", not twice, f"{len(ledger)} request ids in the ledger", twice)


def sessions_equal_requests_that_ran(requests: Sequence[Request], ledger: Mapping[str, list[Session]]) -> Check:
    """A session for every request the gateway accepted (it was queued, so it ran or ended), and none for a request
    that was refused or never reached it."""
    ran = {r.request_id for r in requests if r.accepted}
    unbilled = sorted(ran - set(ledger))
    unexplained = sorted(set(ledger) - ran)
    offenders = [f"ran, no session: {rid}" for rid in unbilled] + [f"session, never ran: {rid}" for rid in unexplained]
    return Check(
        "ledger sessions = requests that ran",
        not offenders,
        f"{len(ran)} requests ran, {len(ledger)} sessions, {len(unbilled)} missing, {len(unexplained)} extra",
        offenders,
    )


def earnings_exact(ledger: Mapping[str, list[Session]]) -> Check:
    """Each session's cost is its tokens times its prices, and each node's payment its share of that cost less the
    fee by the work it was paid on (its premium-weighted `paid_work_units`, or its work units at par), to the last of
    18 decimals; every node's earnings are the sum of those."""
    wrong = []
    earnings: dict[str, Decimal] = {}
    work = 0
    sessions = [s for found in ledger.values() for s in found]
    for session in sessions:
        row = session.row
        generated = int(row["tokens_generated"])
        expected_cost = generated * row["price_per_token_far"]
        if generated:
            expected_cost += int(row["prompt_tokens"]) * row["prompt_price_per_token_far"]
        if row["total_cost_far"] != expected_cost:
            wrong.append(f"{row['request_id']}: cost {row['total_cost_far']} != {expected_cost}")
        units = {c["node_id"]: int(c["work_units"]) for c in session.contributions}
        weighed = {c["node_id"]: int(c.get("paid_work_units") or c["work_units"]) for c in session.contributions}
        payments, fee, remainder = split_with_fee(row["total_cost_far"], weighed, int(row["platform_fee_bps"]))
        paid = {c["node_id"]: c["payment_far"] for c in session.contributions}
        if paid != payments or fee != row["platform_fee_far"] or remainder != row["platform_remainder_far"]:
            wrong.append(f"{row['request_id']}: payments {paid} != {payments} (fee {fee}, remainder {remainder})")
        if generated and not units:
            wrong.append(f"{row['request_id']}: {generated} tokens and no node credited")
        for node, amount in paid.items():
            earnings[node] = earnings.get(node, Decimal(0)) + amount
        work += sum(units.values())
    total = sum(earnings.values(), Decimal(0))
    return Check(
        "node earnings = work units x price, exactly",
        not wrong,
        f"{len(sessions)} sessions, {len(earnings)} nodes, {work} work units (blocks x positions), {total} FAR earned"
        f" ({', '.join(f'...{node[-6:]}={amount}' for node, amount in sorted(earnings.items()))})",
        wrong,
    )


def budget_kept(ledger: Mapping[str, list[Session]], key_id: str, budget: Decimal, refused: int) -> Check:
    spent = sum(
        (s.row["total_cost_far"] for found in ledger.values() for s in found if s.row["api_key_id"] == key_id),
        Decimal(0),
    )
    return Check(
        "a budget-limited key never spends past its budget",
        spent <= budget,
        f"spent {spent} of {budget} FAR, {refused} requests refused with 402",
    )


def faults_restored(injected: Iterable[Any], unexpected_exits: Sequence[str]) -> Check:
    failed = [f"{i.target} at {i.fault.at_s}s: {i.outcome}" for i in injected if i.outcome.startswith("failed")]
    offenders = failed + [f"unkilled exit: {e}" for e in unexpected_exits]
    return Check(
        "every fault put back, no process died unkilled",
        not offenders,
        f"{len(failed)} restarts failed, {len(unexpected_exits)} unexpected exits",
        offenders,
    )


def no_process_left(pids: Iterable[int]) -> Check:
    alive = [str(pid) for pid in sorted(set(pids)) if _running(pid)]
    return Check(
        "no process left running after stop",
        not alive,
        f"{len(set(pids))} pids the system ran, {len(alive)} still running",
        alive,
    )


def _running(pid: int) -> bool:
    """Alive and not a zombie (a child nobody reaped yet is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def payouts_settled(dsn: str, timeout_s: float) -> Check:
    """No payout batch left claimed, signed or submitted once the payer has had `timeout_s` to finish them (a
    batch stuck there holds its providers' earnings forever); counted by status, with what the paid ones paid."""
    deadline = time.monotonic() + timeout_s
    while True:
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(
                "SELECT status, count(*) AS n, coalesce(sum(total_far), 0) AS far FROM far_payment_batches GROUP BY 1"
            )
        finally:
            await connection.close()
        by_status = {r["status"]: (int(r["n"]), r["far"]) for r in rows}
        stuck = sum(n for status, (n, _) in by_status.items() if status in UNSETTLED_BATCH_STATUSES)
        if not stuck or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    numbers = ", ".join(f"{status}={n} ({far} FAR)" for status, (n, far) in sorted(by_status.items())) or "no batch"
    offenders = [f"{stuck} batches unsettled after {timeout_s:.0f}s"] if stuck else []
    return Check("no payout batch stuck", stuck == 0, numbers, offenders)


def books_reconcile(env: Mapping[str, str], opening_far: Decimal) -> Check:
    """`far-mesh ledger reconcile --opening-far`: the journal balances, every buyer's balance is its deposits less
    its charges and withdrawals, and the treasury and every paid wallet hold on chain what the journal says, so
    every payout was paid exactly once."""
    command = [sys.executable, "-m", "cli", "ledger", "reconcile", "--opening-far", str(opening_far)]
    done = subprocess.run(command, env=dict(env), capture_output=True, text=True, timeout=300, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return Check(
        "the books reconcile on chain (payouts paid once, balances exact)",
        done.returncode == 0,
        f"`far-mesh ledger reconcile --opening-far {opening_far}` exit {done.returncode}",
        lines[-SHOWN:] if done.returncode else [],
    )

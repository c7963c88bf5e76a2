"""A payer SIGKILLed after signing, after broadcasting, or before recording the confirmation: restarted, it
resumes from the ledger and the chain, and every wallet is paid exactly once."""

import signal
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from accounting.batch_writer import write_batch
from chain.units import to_base_units
from devstack.harness.registrations import register_nodes
from tests.fixtures.chain import FarDeployment, chain_rpc
from tests.fixtures.ledger import unique_id, usage_record
from tests.payouts.helpers import payer_env, run_payer


@pytest.mark.parametrize(
    ("point", "status_after_kill", "paid_on_chain_before_restart"),
    [
        ("after-sign", "signed", False),
        ("after-broadcast", "signed", True),
        ("awaiting-confirmations", "submitted", True),
        ("before-confirm", "submitted", True),
    ],
)
async def test_a_payer_killed_at_any_step_pays_every_wallet_exactly_once_after_a_restart(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    far_deployment: FarDeployment,
    tmp_path: Path,
    point: str,
    status_after_kill: str,
    paid_on_chain_before_restart: bool,
) -> None:
    peers = [unique_id("peer") for _ in range(20)]
    await register_nodes(payouts_db, peers)
    await write_batch(
        payouts_db,
        [
            usage_record(unique_id("req"), {p: 1 + i for i, p in enumerate(peers)}, tokens_generated=99)
            for _ in range(3)
        ],
    )
    owed = {
        r["wallet"]: r["unpaid_far"]
        for r in await payouts_db.fetch("SELECT wallet, unpaid_far FROM node_earnings_summary")
    }
    key_file = tmp_path / "treasury.key"
    key_file.write_text(far_deployment.treasury.key.to_0x_hex())
    env = payer_env(far_deployment, payouts_ledger_dsn, key_file)
    if point == "awaiting-confirmations":
        env["PAYOUT_CONFIRMATIONS"] = "3"
    treasury_nonce = int(
        chain_rpc(far_deployment.url, "eth_getTransactionCount", far_deployment.treasury.address, "latest"), 16
    )

    killed = run_payer(point, env)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches") == status_after_kill
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NOT NULL") == 0
    on_chain = {w: far_deployment.far_balance(w) for w in owed}
    assert on_chain == (
        {w: to_base_units(a) for w, a in owed.items()} if paid_on_chain_before_restart else dict.fromkeys(owed, 0)
    )

    if point == "awaiting-confirmations":  # the blocks that confirm it arrive while no payer runs
        chain_rpc(far_deployment.url, "evm_mine")
        chain_rpc(far_deployment.url, "evm_mine")
    restarted = run_payer("none", env)

    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip().endswith(": paid")
    paid = {
        r["wallet"]: r["paid_far"] for r in await payouts_db.fetch("SELECT wallet, paid_far FROM node_earnings_summary")
    }
    assert paid == owed
    assert {w: far_deployment.far_balance(w) for w in owed} == {w: to_base_units(a) for w, a in owed.items()}  # once
    after = int(chain_rpc(far_deployment.url, "eth_getTransactionCount", far_deployment.treasury.address, "latest"), 16)
    assert after == treasury_nonce + 1  # one transaction sent, whatever the restarts
    assert await payouts_db.fetchval("SELECT count(*) FROM far_payout_transactions WHERE state = 'confirmed'") == 1
    assert sum(to_base_units(a) for a in owed.values()) == sum(far_deployment.far_balance(w) for w in owed)
    assert Decimal(0) not in owed.values()

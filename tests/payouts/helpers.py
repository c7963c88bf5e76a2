"""Steps the payout tests share: a chain payer's settings, earnings owed to registered nodes and what each wallet
was paid; the payer run as a process of its own (tests/payouts/payer_process.py, which the e2e tests run too); a
payer's metrics scraped."""

import os
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from accounting.batch_writer import write_batch
from devstack.harness.registrations import register_nodes
from payouts.settings import PayoutSettings
from tests.fixtures.chain import FarDeployment
from tests.fixtures.ledger import unique_id, usage_record

ROOT = Path(__file__).resolve().parents[2]
PAYER_PROCESS = ROOT / "tests" / "payouts" / "payer_process.py"


def payer_env(d: FarDeployment, dsn: str, key_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAR_MESH_")}
    env.update(
        PYTHONPATH=str(ROOT),
        POSTGRES_URL=dsn,
        CHAIN_RPC_URL=d.url,
        CHAIN_TOKEN_ADDRESS=d.deployment.token,
        CHAIN_BATCH_CONTRACT_ADDRESS=d.deployment.batch_contract,
        PAYOUT_TREASURY_KEY_FILE=str(key_file),
        PAYOUT_CONFIRMATIONS="1",
        PAYOUT_POLL_S="0.05",
        # small: a restart that took the killed attempt for a stuck one would replace it, and the nonce count fail
        PAYOUT_REPLACE_AFTER_S="0.2",
    )
    return env


def run_payer(point: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PAYER_PROCESS), point], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def payout_settings(d: FarDeployment, dsn: str, **overrides: Any) -> PayoutSettings:
    values: dict[str, Any] = {
        "postgres_url": dsn,
        "chain_rpc_url": d.url,
        "chain_token_address": d.deployment.token,
        "chain_batch_contract_address": d.deployment.batch_contract,
        "payout_treasury_key": SecretStr(d.treasury.key.to_0x_hex()),
        "payout_confirmations": 1,
        "payout_poll_s": 0.05,
        "payout_metrics_port": 0,
    }
    values.update(overrides)
    return PayoutSettings.from_env(**values)


async def earn(db: asyncpg.Connection, nodes: int, *, sessions: int = 3, price_far: str = "0.0123456789") -> list[str]:
    """Usage records that owe `nodes` distinct nodes, each registered to the wallet it announces, amounts with
    all 18 decimals in use."""
    peers = [unique_id("peer") for _ in range(nodes)]
    await register_nodes(db, peers)
    records = [
        usage_record(
            unique_id("req"),
            {p: 1 + (i * 7 + s) % 13 for i, p in enumerate(peers)},
            tokens_generated=37,
            price_far=Decimal(price_far),
        )
        for s in range(sessions)
    ]
    for start in range(0, len(records), 50):
        await write_batch(db, records[start : start + 50])
    return peers


async def paid_by_wallet(db: asyncpg.Connection) -> dict[str, Decimal]:
    """What the ledger says each wallet was paid: its registered nodes' paid rows."""
    rows = await db.fetch(
        "SELECT far_registered_wallet(node_id) AS wallet, sum(paid_far) AS paid FROM node_earnings_summary GROUP BY 1"
    )
    return {r["wallet"]: r["paid"] for r in rows}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("far_payout_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples

"""Issue #26's "Done when", end to end on the local chain: a new wallet's key is refused with 402; the wallet
deposits through the FarDeposit contract; once the deposit is deep enough its balance shows in the portal; a
generation through the real swarm is charged exactly prompt tokens x prompt price + completion tokens x completion
price, and the providers' earnings plus the fee plus the remainder are that charge; a withdrawal of the rest,
signed through the portal, lands on chain; `far-mesh ledger reconcile` passes.

Cheap in CI: it reuses the session's e2e system (swarm, workers, accounting, portal, ledger) and the session's
ganache, and adds only a gateway process that admits against prepaid balances and prices prompts (its own
catalogue prices and fee, fixed on the job at admission, which the system's workers bill), a fresh deployment of
the contracts, and one payer round.
"""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from accounting.journal import buyer_balance, charge_lines
from chain.deposits import make_deposit
from chain.node import DEV_CHAIN_ID
from chain.units import format_far, to_base_units
from devstack.harness.gateway import start_gateway, stop_gateway
from gateway.api_keys import create_key
from portal.auth import CSRF_HEADER
from tests.fixtures.chain import FarDeployment, chain_rpc
from tests.fixtures.deposits import funded_buyer, watcher_for
from tests.fixtures.portal import SigningWallet
from tests.fixtures.system import SystemUnderTest, collect, the_ledger_session, wait_until_accounted
from tests.payouts.helpers import payer_env, run_payer
from tests.portal.helpers import sign_in

pytestmark = pytest.mark.e2e

PROMPT_PRICE = Decimal("0.00011")
COMPLETION_PRICE = Decimal("0.0007")
"""Both multiples of a nano-FAR, so a charge is too: the gateway's Redis account counts whole nano-FAR (rounding
a charge up), and the withdrawal of the rest must find exactly what the journal says is left."""
FEE_BPS = 250
DEPOSIT = Decimal(5)
CONFIRMATIONS = 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepaid_gateway(e2e_system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway beside the system's, on its Redis and ledger, that admits against prepaid balances and quotes the
    default model at a prompt and a completion price with a platform fee."""
    system = e2e_system.system
    default, *others = e2e_system.models
    priced = default.model_copy(
        update={
            "prompt_price_per_token_far": PROMPT_PRICE,
            "completion_price_per_token_far": COMPLETION_PRICE,
            "price_per_token_far": None,
        }
    )
    models = [priced, *others]
    env = system._env_for("web") | {
        "GATEWAY_REQUIRE_PREPAID_BALANCE": "true",
        "FAR_MESH_PLATFORM_FEE_BPS": str(FEE_BPS),
        "FAR_MESH_MODELS": "[" + ",".join(m.model_dump_json() for m in models) + "]",
        "GATEWAY_METRICS_PORT": "0",
    }
    process, url = start_gateway(env, tmp_path_factory.mktemp("prepaid-gateway") / "gateway.log")
    yield url
    stop_gateway(process)


async def _issue_key(dsn: str, wallet: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        return (await create_key(connection, wallet, label="buyers pay")).secret_key
    finally:
        await connection.close()


async def test_a_new_wallet_deposits_generates_is_charged_exactly_withdraws_the_rest_and_the_books_reconcile(
    e2e_system: SystemUnderTest, prepaid_gateway: str, far_deployment: FarDeployment, tmp_path: Path
) -> None:
    d = far_deployment
    dsn = e2e_system.postgres_url
    buyer = funded_buyer(d, DEPOSIT)
    opening = d.far_balance(d.treasury.address)  # after the treasury funded the buyer: the reconciliation's float
    from_block = d.w3.eth.block_number
    key = await _issue_key(dsn, buyer.address)
    headers = {"Authorization": f"Bearer {key}"}
    request_id = f"buyers-pay-{uuid.uuid4().hex[:12]}"
    body = {"prompt": "Buyers pay for what they use", "max_tokens": 6, "temperature": 0, "request_id": request_id}

    # 1. No deposit yet: refused before anything runs, saying the balance and the price.
    async with httpx.AsyncClient(base_url=prepaid_gateway, headers=headers, timeout=60) as gateway:
        refused = await gateway.post("/inference/generate", json={**body, "request_id": request_id + "-refused"})
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "insufficient_balance"
    assert refused.json()["error"]["details"][0]["balance_far"] == "0.000000000"

    # 2. A deposit through the contract, credited only once CONFIRMATIONS deep.
    watcher = await watcher_for(d, confirmations=CONFIRMATIONS)
    ledger = await asyncpg.connect(dsn)
    try:
        make_deposit(d.w3, buyer, d.deployment.token, d.deployment.deposit_contract, to_base_units(DEPOSIT))
        await watcher.catch_up(ledger)
        assert await buyer_balance(ledger, buyer.address) == 0  # one block deep: not yet
        chain_rpc(d.url, "evm_mine")
        await watcher.catch_up(ledger)
        assert await buyer_balance(ledger, buyer.address) == DEPOSIT

        # 3. The portal shows it to the signed-in buyer.
        wallet = SigningWallet(bytes(buyer.key))
        async with httpx.AsyncClient(base_url=e2e_system.system.portal_url, timeout=30) as portal:
            csrf = await sign_in(portal, wallet)
            shown = (await portal.get("/api/balance")).json()
            assert (shown["balance_far"], shown["deposited_far"], shown["charged_far"]) == ("5", "5", "0")
            assert shown["available_far"] == "5" and shown["deposits"] == 1

            # 4. A generation, charged exactly at both prices; earnings + fee + remainder = the charge.
            async with httpx.AsyncClient(base_url=prepaid_gateway, headers=headers, timeout=60) as gateway:
                events = await collect(gateway, body)
            done = events[-1]
            assert done.get("done") is True, events[-1]
            await wait_until_accounted(e2e_system.redis_url)
            session = await the_ledger_session(dsn, request_id)
            row = session.row
            assert row["tokens_generated"] == 6 and row["prompt_tokens"] > 0
            assert (row["prompt_price_per_token_far"], row["price_per_token_far"]) == (PROMPT_PRICE, COMPLETION_PRICE)
            cost = row["prompt_tokens"] * PROMPT_PRICE + row["tokens_generated"] * COMPLETION_PRICE
            assert row["total_cost_far"] == cost and Decimal(str(done["total_cost_far"])) == cost
            fee = (cost * FEE_BPS / 10_000).quantize(Decimal("1e-18"), rounding="ROUND_DOWN")
            assert (row["platform_fee_bps"], row["platform_fee_far"]) == (FEE_BPS, fee)
            earnings = sum((c["payment_far"] for c in session.contributions), Decimal(0))
            assert earnings > 0 and earnings + fee + row["platform_remainder_far"] == cost
            lines = await charge_lines(ledger, row["request_id"])
            assert lines[f"buyer:{buyer.address}"] == cost and sum(lines.values()) == 0
            assert -sum(amount for account, amount in lines.items() if account.startswith("provider:")) == earnings
            rest = DEPOSIT - cost
            assert await buyer_balance(ledger, buyer.address) == rest

            # 5. The rest withdrawn by a statement the wallet signs through the portal, paid on chain by the payer.
            asked = await portal.post(
                "/api/balance/withdrawal/message", json={"amount_far": f"{rest:f}"}, headers={CSRF_HEADER: csrf}
            )
            assert asked.status_code == 200, asked.text
            text = asked.json()["message"]
            signature = Account.sign_message(encode_defunct(text=text), private_key=buyer.key).signature.to_0x_hex()
            recorded = await portal.post(
                "/api/balance/withdrawals", json={"message": text, "signature": signature}, headers={CSRF_HEADER: csrf}
            )
            assert recorded.status_code == 201 and recorded.json()["status"] == "requested", recorded.text
            assert await buyer_balance(ledger, buyer.address) == 0
        held_on_chain = d.far_balance(buyer.address)
        key_file = tmp_path / "treasury.key"
        key_file.write_text(d.treasury.key.to_0x_hex())
        paid = run_payer("none", payer_env(d, dsn, key_file))
        assert paid.returncode == 0, paid.stderr
        batch = await ledger.fetchrow(
            "SELECT b.status, b.purpose FROM far_payment_batches b JOIN far_withdrawals w ON w.batch_id = b.id "
            "WHERE w.wallet = $1",
            buyer.address,
        )
        assert (batch["purpose"], batch["status"]) == ("withdrawals", "paid")
        assert d.far_balance(buyer.address) - held_on_chain == to_base_units(rest)
        await watcher.catch_up(ledger)
    finally:
        await ledger.close()

    # 6. The books reconcile: the journal, the payables, the treasury on chain and the buyer's receipts.
    reconciled = await asyncio.to_thread(_ledger_reconcile, d, dsn, opening, from_block)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "reconciled" in reconciled.stdout.splitlines()[-1]
    assert "received exactly that" in reconciled.stdout


def _ledger_reconcile(d: FarDeployment, dsn: str, opening: int, from_block: int) -> subprocess.CompletedProcess[str]:
    """`far-mesh ledger reconcile` as an operator runs it, against this deployment, at the chain's head."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAR_MESH_")} | {
        "PYTHONPATH": str(REPO),
        "POSTGRES_URL": dsn,
        "CHAIN_RPC_URL": d.url,
        "CHAIN_ID": str(DEV_CHAIN_ID),
        "DEPOSIT_CONTRACT_ADDRESS": d.deployment.deposit_contract,
        "CHAIN_BATCH_CONTRACT_ADDRESS": d.deployment.batch_contract,
    }
    command = [sys.executable, "-m", "cli", "ledger", "reconcile", "--opening-far", format_far(opening)]
    command += ["--receipts-from-block", str(from_block), "--block", str(d.w3.eth.block_number)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)

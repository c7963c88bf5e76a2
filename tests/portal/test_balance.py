"""The balance page (#26 part 6): a signed-in buyer sees its balance, how to deposit, and its deposits and charges,
newest first, as the page and its JSON twin, read from the journal (a deposit credited and a session charged)."""

import secrets
from decimal import Decimal

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from accounting.batch_writer import write_batch
from portal.settings import PortalSettings
from protocol import keys
from tests.fixtures.ledger import unique_id, usage_record
from tests.fixtures.portal import SigningWallet
from tests.portal.helpers import CONTRACT, credit_deposit, sign_in

TOKEN = "0x" + "cD" * 20


@pytest.fixture
def portal_settings(portal_settings: PortalSettings) -> PortalSettings:
    return portal_settings.model_copy(update={"deposit_contract_address": CONTRACT, "chain_token_address": TOKEN})


async def test_a_buyer_sees_a_deposit_and_a_charge_on_the_balance_page_and_its_json(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    buyer = SigningWallet(secrets.token_bytes(32))
    tx_hash = await credit_deposit(ledger, buyer.address, 5 * 10**18)
    record = usage_record(unique_id("req"), {unique_id("node"): 1}, fee_bps=1000).model_copy(
        update={"user_wallet": buyer.address}
    )
    assert (await write_batch(ledger, [record])).sessions_written == 1
    await redis.hset(keys.balance_account(buyer.address), mapping={"held": 250_000_000})  # 0.25 FAR in flight
    charged = record.total_cost_far
    balance = Decimal(5) - charged

    assert (await portal_client.get("/api/balance")).status_code == 401
    assert (await portal_client.get("/balance")).status_code == 401
    await sign_in(portal_client, buyer)

    document = (await portal_client.get("/api/balance", params={"amount": "2.5"})).json()
    assert document["wallet"] == buyer.address
    assert Decimal(document["deposited_far"]) == 5 and Decimal(document["charged_far"]) == charged
    assert Decimal(document["balance_far"]) == balance
    assert Decimal(document["held_far"]) == Decimal("0.25")
    assert Decimal(document["available_far"]) == balance - Decimal("0.25")
    assert (document["deposits"], document["charges"]) == (1, 1)
    charge, deposit = document["history"]  # newest first
    assert charge["kind"] == "charge" and charge["request_id"] == record.request_id
    assert Decimal(charge["amount_far"]) == -charged and charge["amount_far"].startswith("-")
    assert deposit["kind"] == "deposit" and deposit["tx_hash"] == tx_hash and deposit["amount_far"] == "+5"
    assert document["next_before"] is None
    how = document["deposit"]
    assert how["configured"] and (how["contract"], how["token"], how["chain_id"]) == (CONTRACT, TOKEN, 31337)
    assert how["amount_units"] == str(25 * 10**17)
    assert "far-mesh deposits make --amount 2.5 " in how["command"] and CONTRACT in how["command"]
    assert how["wallet_steps"][0].startswith(f"approve({CONTRACT}, {25 * 10**17})")

    page = await portal_client.get("/balance", params={"amount": "2.5"})
    assert page.status_code == 200
    for shown in (tx_hash, record.request_id, CONTRACT, TOKEN, document["available_far"], "deposits make"):
        assert shown in page.text
    assert page.text.index(record.request_id) < page.text.index(tx_hash)  # newest first

    assert (await portal_client.get("/api/balance", params={"amount": "-1"})).status_code == 422
    assert (await portal_client.get("/api/balance", params={"before": "x"})).status_code == 422


async def test_the_history_is_paginated_newest_first(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    from portal import balances

    buyer = SigningWallet(secrets.token_bytes(32))
    for units in range(1, 4):
        await credit_deposit(ledger, buyer.address, units * 10**18)
    await sign_in(portal_client, buyer)
    first = (await portal_client.get("/api/balance")).json()
    assert [h["amount_far"] for h in first["history"]] == ["+3", "+2", "+1"] and first["next_before"] is None

    class NoRedis:
        async def hget(self, *_: object) -> None:
            return None

    page = await balances.buyer_balance(ledger, NoRedis(), buyer.address, limit=2)  # type: ignore[arg-type]
    assert [h["amount_far"] for h in page["history"]] == ["+3", "+2"] and page["next_before"] is not None
    rest = await balances.buyer_balance(
        ledger,
        NoRedis(),  # type: ignore[arg-type]
        buyer.address,
        before=page["next_before"],
        limit=2,
    )
    assert [h["amount_far"] for h in rest["history"]] == ["+1"] and rest["next_before"] is None
    assert (page["deposited_far"], page["held_far"], page["available_far"]) == ("6", "0", "6")

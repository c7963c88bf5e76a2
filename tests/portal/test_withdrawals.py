"""Withdrawals in the portal (#26 part 5): a signed-in buyer asks for a statement, signs it with its wallet and
sends it back; the amount leaves its balance at once (journaled, and taken in the gateway's Redis account so
admission cannot spend it too), never more than what requests in flight leave available, once per signature,
and only with the wallet's own signature."""

import secrets
from decimal import Decimal

import asyncpg
import httpx
import redis.asyncio as aioredis

from protocol import keys
from tests.fixtures.portal import SigningWallet
from tests.portal.helpers import credit_deposit, sign_in


async def statement(client: httpx.AsyncClient, csrf: str, amount: str) -> str:
    response = await client.post(
        "/api/balance/withdrawal/message", json={"amount_far": amount}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status_code == 200, response.text
    text: str = response.json()["message"]
    return text


async def test_a_signed_withdrawal_leaves_the_balance_once_and_never_takes_what_requests_in_flight_hold(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    buyer = SigningWallet(secrets.token_bytes(32))
    await credit_deposit(ledger, buyer.address, 5 * 10**18)
    await redis.hset(keys.balance_account(buyer.address), mapping={"held": 250_000_000})  # 0.25 FAR in flight
    csrf = await sign_in(portal_client, buyer)
    headers = {"X-CSRF-Token": csrf}

    too_much = await statement(portal_client, csrf, "4.8")
    refused = await portal_client.post(
        "/api/balance/withdrawals",
        json={"message": too_much, "signature": buyer.personal_sign(too_much)},
        headers=headers,
    )
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "insufficient_balance"
    assert "has 4.75 FAR available" in refused.json()["error"]["message"]

    text = await statement(portal_client, csrf, "3.5")
    assert text.splitlines()[:3] == ["Far Mesh withdrawal", f"Wallet: {buyer.address}", "Amount: 3.5 FAR"]
    stranger = SigningWallet(secrets.token_bytes(32))
    forged = await portal_client.post(
        "/api/balance/withdrawals", json={"message": text, "signature": stranger.personal_sign(text)}, headers=headers
    )
    assert forged.status_code == 401 and f"signed by {stranger.address}" in forged.json()["error"]["message"]
    no_csrf = await portal_client.post(
        "/api/balance/withdrawals", json={"message": text, "signature": buyer.personal_sign(text)}
    )
    assert no_csrf.status_code == 403

    accepted = await portal_client.post(
        "/api/balance/withdrawals", json={"message": text, "signature": buyer.personal_sign(text)}, headers=headers
    )

    assert accepted.status_code == 201, accepted.text
    assert accepted.json() | {"id": 0} == {"id": 0, "wallet": buyer.address, "amount_far": "3.5", "status": "requested"}
    replayed = await portal_client.post(
        "/api/balance/withdrawals", json={"message": text, "signature": buyer.personal_sign(text)}, headers=headers
    )
    assert replayed.status_code == 401 and "already used" in replayed.json()["error"]["message"]
    document = (await portal_client.get("/api/balance")).json()
    assert Decimal(document["balance_far"]) == Decimal("1.5") and document["withdrawn_far"] == "3.5"
    assert Decimal(document["available_far"]) == Decimal("1.25")
    [withdrawal] = document["withdrawals"]
    assert (withdrawal["amount_far"], withdrawal["status"], withdrawal["transaction"]) == ("3.5", "requested", None)
    assert document["history"][0]["kind"] == "withdrawal"
    lines = await ledger.fetch(
        "SELECT l.account, l.amount_far FROM far_withdrawals w JOIN far_journal_lines l ON l.entry_id = w.entry_id "
        "WHERE w.id = $1",
        accepted.json()["id"],
    )
    assert {r["account"]: r["amount_far"] for r in lines} == {
        f"buyer:{buyer.address}": Decimal("3.5"),
        f"withdrawing:{buyer.address}": Decimal("-3.5"),
    }
    page = await portal_client.get("/balance")
    assert 'id="withdrawals"' in page.text and "3.5 FAR" in page.text

    rest = await statement(portal_client, csrf, "1.3")  # 1.5 left, 0.25 of it held
    assert (
        await portal_client.post(
            "/api/balance/withdrawals", json={"message": rest, "signature": buyer.personal_sign(rest)}, headers=headers
        )
    ).status_code == 402


async def test_a_withdrawal_counts_as_charged_in_a_rebuilt_account_so_admission_cannot_spend_it(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    buyer = SigningWallet(secrets.token_bytes(32))
    await credit_deposit(ledger, buyer.address, 2 * 10**18)
    account = keys.balance_account(buyer.address)
    # the gateway rebuilt the account and a worker settled 0.5 FAR the journal has not got yet
    await redis.hset(account, mapping={"credited": 2_000_000_000, "charged": 500_000_000, "held": 0, "rebuilt": 1})
    csrf = await sign_in(portal_client, buyer)

    whole = await statement(portal_client, csrf, "2")
    refused = await portal_client.post(
        "/api/balance/withdrawals",
        json={"message": whole, "signature": buyer.personal_sign(whole)},
        headers={"X-CSRF-Token": csrf},
    )
    assert refused.status_code == 402 and "has 1.5 FAR available" in refused.json()["error"]["message"]
    text = await statement(portal_client, csrf, "1.5")
    accepted = await portal_client.post(
        "/api/balance/withdrawals",
        json={"message": text, "signature": buyer.personal_sign(text)},
        headers={"X-CSRF-Token": csrf},
    )

    assert accepted.status_code == 201, accepted.text
    assert int(await redis.hget(account, "charged")) == 2_000_000_000  # type: ignore[misc]

"""Inputs another party writes (addresses, numbers, bodies, signed statements) are refused with a clear 4xx, never
a crash; and what one client may do at once stays within its limits."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx

from portal.inputs import MAX_BODY_BYTES
from tests.fixtures.portal import SigningWallet
from tests.portal.helpers import sign_in

ALICE = SigningWallet.named("alice")
CHUNK = b" " * 8192


def _now_z() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def test_an_address_with_a_trailing_newline_is_a_422(portal_client: httpx.AsyncClient) -> None:
    address = ALICE.address
    for url in (f"/view?address={address.lower()}%0A", f"/w/{address}%0A/nodes", f"/api/w/{address}%0A/earnings"):
        assert (await portal_client.get(url)).status_code == 422, url
    sign_in_message = await portal_client.post("/api/siwe/message", json={"address": address.lower() + "\n"})
    assert sign_in_message.status_code == 422


async def test_numbers_in_other_scripts_or_beyond_any_bigint_are_a_422(portal_client: httpx.AsyncClient) -> None:
    earnings = f"/api/w/{ALICE.address}/earnings"
    for days in ("%C2%B2", "9" * 5000, "%D9%A3"):  # a superscript two, 5,000 digits, an Arabic-Indic three
        response = await portal_client.get(f"{earnings}?days={days}")
        assert response.status_code == 422 and response.json()["error"]["field"] == "days"
    await sign_in(portal_client, ALICE)
    assert (await portal_client.get("/api/balance?before=%C2%B2")).status_code == 422
    message = (await portal_client.post("/api/siwe/message", json={"address": ALICE.address})).json()["message"]
    other_digits = message.replace("Chain ID: 31337", "Chain ID: \u00b2")
    refused = await portal_client.post(
        "/api/siwe/verify", json={"message": other_digits, "signature": "0x" + "00" * 65}
    )
    assert refused.status_code == 401 and "Chain ID" in refused.text


async def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(portal_client: httpx.AsyncClient) -> None:
    await sign_in(portal_client, ALICE)  # the form below is refused for its size, not for want of a session
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10_000):  # 80 MB, were it all read
            sent += len(CHUNK)
            yield CHUNK

    streamed = await portal_client.post(
        "/api/siwe/message", content=endless(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "too_large"
    assert sent <= MAX_BODY_BYTES + 2 * len(CHUNK)
    declared = await portal_client.post(
        "/api/siwe/message",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(MAX_BODY_BYTES + 1)},
    )
    assert declared.status_code == 413
    form = await portal_client.post(
        "/keys",
        content=b"label=" + b"x" * MAX_BODY_BYTES,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 413


async def test_keys_created_at_once_stop_at_the_active_key_limit(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    from portal.api_keys import MAX_ACTIVE_KEYS

    wallet = SigningWallet.named("many-keys")
    token = await sign_in(portal_client, wallet)
    responses = await asyncio.gather(
        *(
            portal_client.post("/api/keys", json={"label": f"k{i}"}, headers={"x-csrf-token": token})
            for i in range(MAX_ACTIVE_KEYS + 10)
        )
    )
    assert sorted({r.status_code for r in responses}) == [201, 422]
    active = await ledger.fetchval(
        "SELECT count(*) FROM far_api_keys WHERE wallet = $1 AND revoked_at IS NULL", wallet.address
    )
    assert active == MAX_ACTIVE_KEYS == sum(r.status_code == 201 for r in responses)


async def test_a_new_keys_page_is_never_cached(portal_client: httpx.AsyncClient) -> None:
    token = await sign_in(portal_client, SigningWallet.named("cache-check"))  # its own keys: others count alice's
    created = await portal_client.post("/keys", data={"label": "shown once", "csrf_token": token})
    assert created.status_code == 201 and "fmk_" in created.text
    assert created.headers["cache-control"] == "no-store"


async def test_a_registration_whose_node_signature_is_not_ascii_is_refused(portal_client: httpx.AsyncClient) -> None:
    statement = "\n".join(
        [
            "Far Mesh node registration",
            "Node: 12D3KooWabc",
            f"Wallet: {ALICE.address}",
            "Domain: portal.test",
            "Chain ID: 31337",
            "Nonce: deadbeefdeadbeef",
            f"Issued At: {_now_z()}",
        ]
    )
    body = {"statement": statement, "signature": ALICE.personal_sign(statement), "node_signature": "\u00e9"}
    response = await portal_client.post("/api/registrations", json=body)
    assert 400 <= response.status_code < 500


async def test_a_withdrawal_of_an_absurd_amount_is_refused_as_malformed(portal_client: httpx.AsyncClient) -> None:
    token = await sign_in(portal_client, ALICE)
    asked = await portal_client.post(
        "/api/balance/withdrawal/message", json={"amount_far": "1"}, headers={"x-csrf-token": token}
    )
    huge = asked.json()["message"].replace("Amount: 1 FAR", "Amount: 1E+999999 FAR")
    response = await portal_client.post(
        "/api/balance/withdrawals",
        json={"message": huge, "signature": ALICE.personal_sign(huge)},
        headers={"x-csrf-token": token},
    )
    assert response.status_code == 401 and "malformed" in response.json()["error"]["message"]

"""The portal refuses, with a clear 4xx, every request its security rests on refusing (plain HTTP, in-process)."""

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from portal.auth import COOKIE
from tests.fixtures.portal import SigningWallet
from tests.portal.helpers import sign_in

ALICE, BOB = SigningWallet.named("alice"), SigningWallet.named("bob")


async def message_for(client: httpx.AsyncClient, wallet: SigningWallet) -> str:
    response = await client.post("/api/siwe/message", json={"address": wallet.address})
    assert response.status_code == 200
    message: str = response.json()["message"]
    return message


async def verify(client: httpx.AsyncClient, message: str, signature: str) -> httpx.Response:
    return await client.post("/api/siwe/verify", json={"message": message, "signature": signature})


async def test_a_signed_sign_in_message_sets_an_httponly_samesite_cookie(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    response = await verify(portal_client, message, ALICE.personal_sign(message))
    assert response.status_code == 200 and response.json()["wallet"] == ALICE.address
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert (await portal_client.get("/api/session")).json()["wallet"] == ALICE.address


async def test_a_replayed_sign_in_is_refused(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    signature = ALICE.personal_sign(message)
    assert (await verify(portal_client, message, signature)).status_code == 200
    replay = await verify(portal_client, message, signature)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "signature_refused"
    assert "already used" in replay.json()["error"]["message"]


async def test_an_expired_nonce_is_refused(portal_client: httpx.AsyncClient, ledger: asyncpg.Connection) -> None:
    message = await message_for(portal_client, ALICE)
    nonce = message.split("Nonce: ")[1].split("\n")[0]
    await ledger.execute(
        "UPDATE far_portal_nonces SET expires_at = now() - interval '1 second' WHERE nonce = $1", nonce
    )
    response = await verify(portal_client, message, ALICE.personal_sign(message))
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


async def test_a_message_past_its_expiration_time_is_refused(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds").replace("+00:00", "Z")
    stale = message.split("Expiration Time: ")[0] + f"Expiration Time: {past}"
    response = await verify(portal_client, stale, ALICE.personal_sign(stale))
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


async def test_a_message_for_another_domain_is_refused(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    phished = message.replace("portal.test wants you", "evil.example wants you", 1)
    response = await verify(portal_client, phished, ALICE.personal_sign(phished))
    assert response.status_code == 401 and "domain" in response.json()["error"]["message"]
    # the nonce was not used up by the refused message: the genuine one still signs in
    assert (await verify(portal_client, message, ALICE.personal_sign(message))).status_code == 200


async def test_a_message_naming_another_uri_is_refused(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    assert "\nURI: http://portal.test/\n" in message  # the portal's own origin (its test cookies are not Secure)
    for uri in ("https://evil.example/", "http://portal.test.evil.example/", "https://portal.test/"):
        moved = message.replace("URI: http://portal.test/", f"URI: {uri}")
        response = await verify(portal_client, moved, ALICE.personal_sign(moved))
        assert response.status_code == 401 and "URI" in response.json()["error"]["message"], uri
    assert (await verify(portal_client, message, ALICE.personal_sign(message))).status_code == 200


async def test_a_message_for_another_chain_is_refused(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    other_chain = message.replace("Chain ID: 31337", "Chain ID: 1")
    response = await verify(portal_client, other_chain, ALICE.personal_sign(other_chain))
    assert response.status_code == 401 and "chain id" in response.json()["error"]["message"]


async def test_a_signature_by_another_wallet_is_refused(portal_client: httpx.AsyncClient) -> None:
    message = await message_for(portal_client, ALICE)
    response = await verify(portal_client, message, BOB.personal_sign(message))
    assert response.status_code == 401 and BOB.address in response.json()["error"]["message"]


async def test_malformed_sign_in_bodies_are_422_or_415(portal_client: httpx.AsyncClient) -> None:
    assert (await portal_client.post("/api/siwe/verify", json={"message": "hello"})).status_code == 422
    assert (
        await portal_client.post("/api/siwe/verify", content=b"{", headers={"content-type": "application/json"})
    ).status_code == 422
    as_form = await portal_client.post("/api/siwe/verify", data={"message": "m", "signature": "s"})
    assert as_form.status_code == 415
    bad = await verify(portal_client, "not a sign-in message\n" * 8, "0x" + "00" * 65)
    assert bad.status_code == 401


async def test_a_form_post_without_the_csrf_token_is_refused(portal_client: httpx.AsyncClient) -> None:
    await sign_in(portal_client, ALICE)
    response = await portal_client.post("/keys", data={"label": "no token"})
    assert response.status_code == 403
    assert "CSRF" in response.text
    wrong = await portal_client.post("/keys", data={"label": "wrong token", "csrf_token": "guess"})
    assert wrong.status_code == 403
    json_without = await portal_client.post("/api/keys", json={"label": "no header"})
    assert json_without.status_code == 403 and json_without.json()["error"]["code"] == "csrf_refused"
    assert (await portal_client.get("/api/keys")).json()["keys"] == []


async def test_a_form_post_without_a_session_is_refused(portal_client: httpx.AsyncClient) -> None:
    assert (await portal_client.post("/keys", data={"label": "x", "csrf_token": "x"})).status_code == 401
    assert (await portal_client.get("/api/keys")).status_code == 401


async def test_revoking_another_wallets_key_is_refused(portal_client: httpx.AsyncClient) -> None:
    bob_token = await sign_in(portal_client, BOB)
    bobs_key = (
        await portal_client.post("/api/keys", json={"label": "bob"}, headers={"x-csrf-token": bob_token})
    ).json()
    alice_token = await sign_in(portal_client, ALICE)
    response = await portal_client.post(f"/api/keys/{bobs_key['key_id']}/revoke", headers={"x-csrf-token": alice_token})
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    as_form = await portal_client.post(f"/keys/{bobs_key['key_id']}/revoke", data={"csrf_token": alice_token})
    assert as_form.status_code == 403
    spend = await portal_client.get(f"/api/keys/{bobs_key['key_id']}/spend")
    assert spend.status_code == 403
    unknown = await portal_client.post("/api/keys/0123456789abcdef/revoke", headers={"x-csrf-token": alice_token})
    assert unknown.status_code == 404
    await sign_in(portal_client, BOB)
    assert [k["active"] for k in (await portal_client.get("/api/keys")).json()["keys"]] == [True]


async def test_a_tampered_session_cookie_is_no_session(portal_client: httpx.AsyncClient) -> None:
    await sign_in(portal_client, ALICE)
    forged = portal_client.cookies[COOKIE][:-2] + "xx"
    portal_client.cookies.set(COOKIE, forged, domain="portal.test")
    assert (await portal_client.get("/api/session")).json()["wallet"] is None


async def test_a_copied_session_cookie_is_refused_once_its_session_signs_out(
    portal_client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(portal_client, ALICE)
    copied = portal_client.cookies[COOKIE]
    async with httpx.AsyncClient(
        transport=portal_client._transport, base_url=str(portal_client.base_url), cookies={COOKIE: copied}
    ) as thief:
        assert (await thief.get("/api/session")).json()["wallet"] == ALICE.address  # the copy works, for now
        signed_out = await portal_client.post("/api/logout", headers={"X-CSRF-Token": csrf})
        assert signed_out.status_code == 200
        assert (await thief.get("/api/session")).json()["wallet"] is None
        refused = await thief.post("/api/keys", json={"label": "stolen"}, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_signed_in"
        assert (await thief.get("/keys")).status_code == 401
        assert (await thief.post("/api/logout", headers={"X-CSRF-Token": csrf})).status_code == 401
    await sign_in(portal_client, ALICE)  # the wallet itself signs in again as before
    assert (await portal_client.get("/api/session")).json()["wallet"] == ALICE.address


async def test_pages_forbid_framing_and_inline_scripts(portal_client: httpx.AsyncClient) -> None:
    response = await portal_client.get("/")
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_messages_to_sign_are_bounded_in_number(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from portal import nonces

    pending = await ledger.fetchval("SELECT count(*) FROM far_portal_nonces WHERE expires_at >= now()")
    monkeypatch.setattr(nonces, "MAX_PENDING", pending + 3)
    at_once = await asyncio.gather(
        *(portal_client.post("/api/siwe/message", json={"address": w.address}) for w in (ALICE, BOB) * 3)
    )
    assert sorted(r.status_code for r in at_once) == [200, 200, 200, 429, 429, 429]  # asked at once: still the cap
    refused = await portal_client.post("/api/siwe/message", json={"address": ALICE.address})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    assert refused.json()["error"]["code"] == "too_many_requests"

"""The portal's routes: every page at `/...` has its JSON twin at `/api/...`, built from the same document.

Reads are GET; everything that changes something is a POST that needs, for a signed-in wallet, the session's
CSRF token (form field or `X-CSRF-Token` header); JSON POSTs accept only `application/json`.
"""

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from portal import api_keys, documents, inputs, registrations, withdrawals
from portal.auth import CSRF_FIELD, CSRF_HEADER, Session, check_csrf, require_session
from portal.errors import NotSignedIn
from portal.openapi import openapi_document
from portal.sign_out import sign_out
from portal.signin import verify_sign_in
from portal.state import STATIC_DIR, PortalState
from protocol.node_proof import PROOF_PARAMETER


def _state(request: Request) -> PortalState:
    state: PortalState = request.app.state.portal
    return state


def _session(request: Request) -> Session | None:
    return _state(request).sessions.read(request)


def _page(request: Request, template: str, document: dict[str, Any], status_code: int = 200) -> Response:
    state = _state(request)
    session = _session(request)
    context = {
        "doc": document,
        "session": session,
        "csrf_token": session.csrf_token if session else "",
        "domain": state.settings.portal_domain,
        "chain_id": state.settings.portal_chain_id,
    }
    return state.templates.TemplateResponse(request, template, context, status_code=status_code)


def _viewed_wallet(request: Request) -> str:
    return inputs.wallet(request.path_params["address"], "address")


# --- pages and their twins -------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return _page(request, "home.html", {"session_wallet": (s.wallet if (s := _session(request)) else None)})


async def view_address(request: Request) -> Response:
    # a pasted address may come all lower-case (block explorers, wallets); a mixed-case typo is still refused
    wallet = inputs.any_case_wallet(request.query_params.get("address"), "address")
    return RedirectResponse(f"/w/{wallet}/nodes", status_code=303)


async def me(request: Request) -> Response:
    session = _session(request)
    return RedirectResponse(f"/w/{session.wallet}/nodes" if session else "/", status_code=303)


async def nodes_page(request: Request) -> Response:
    return _page(request, "nodes.html", await documents.wallet_nodes(_state(request), _viewed_wallet(request)))


async def nodes_json(request: Request) -> Response:
    return JSONResponse(await documents.wallet_nodes(_state(request), _viewed_wallet(request)))


async def earnings_page(request: Request) -> Response:
    document = await documents.wallet_earnings(_state(request), _viewed_wallet(request), inputs.days(request))
    return _page(request, "earnings.html", document | {"chart_svg": documents.earnings_chart(document)})


async def earnings_json(request: Request) -> Response:
    document = await documents.wallet_earnings(_state(request), _viewed_wallet(request), inputs.days(request))
    return JSONResponse(document)


async def node_earnings_json(request: Request) -> Response:
    from portal.earnings import node_earnings

    node_id = request.path_params["node_id"]
    return JSONResponse(await node_earnings(_state(request).db, node_id, days=inputs.days(request)))


async def payouts_page(request: Request) -> Response:
    return _page(request, "payouts.html", await documents.wallet_payouts(_state(request), _viewed_wallet(request)))


async def payouts_json(request: Request) -> Response:
    return JSONResponse(await documents.wallet_payouts(_state(request), _viewed_wallet(request)))


async def swarm_page(request: Request) -> Response:
    return _page(request, "swarm_list.html", await documents.swarm_models(_state(request)))


async def swarm_json(request: Request) -> Response:
    return JSONResponse(await documents.swarm_models(_state(request)))


async def swarm_model_page(request: Request) -> Response:
    document = await documents.swarm_model(_state(request), request.path_params["model_id"])
    return _page(request, "swarm.html", document | {"price_chart_svg": documents.price_chart(document)})


async def swarm_model_json(request: Request) -> Response:
    return JSONResponse(await documents.swarm_model(_state(request), request.path_params["model_id"]))


async def onboarding_page(request: Request) -> Response:
    document = await documents.onboarding(_state(request), request.query_params.get("model_id"), _session(request))
    return _page(request, "onboarding.html", document)


async def onboarding_json(request: Request) -> Response:
    document = await documents.onboarding(_state(request), request.query_params.get("model_id"), _session(request))
    return JSONResponse(document)


# --- sign-in -------------------------------------------------------------------------------------------------


async def _count_message(request: Request, address: str) -> None:
    """Each message to sign holds a nonce (sign-in, statements, withdrawals): one client may ask for only so many
    (`portal.message_limits`)."""
    state = _state(request)
    await state.message_limits.take(state.swarm, request.client.host if request.client else None, address)


async def sign_in_message(request: Request) -> Response:
    body = await inputs.json_body(request)
    # Wallets report addresses in lower case; the message spells the address the EIP-55 way.
    wallet = inputs.any_case_wallet(inputs.text(body, "address", max_chars=42), "address")
    await _count_message(request, wallet)
    return JSONResponse(await documents.sign_in_message(_state(request), wallet))


async def sign_in_verify(request: Request) -> Response:
    state = _state(request)
    body = await inputs.json_body(request)
    wallet = await verify_sign_in(
        state.db,
        message=inputs.required_text(body, "message"),
        signature=inputs.required_text(body, "signature", max_chars=200),
        domain=state.binding.domain,
        uri=state.sign_in_uri,
        chain_id=state.binding.chain_id,
        max_age=state.binding.max_age,
    )
    session = state.sessions.new(wallet)
    response = JSONResponse({"wallet": wallet, "csrf_token": session.csrf_token})
    state.sessions.write(response, session)
    return response


async def session_json(request: Request) -> Response:
    session = _session(request)
    return JSONResponse(
        {"wallet": session.wallet if session else None, "csrf_token": session.csrf_token if session else None}
    )


async def logout(request: Request) -> Response:
    state = _state(request)
    session = require_session(_session(request))
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        presented = (await inputs.form_body(request)).get(CSRF_FIELD)  # type: ignore[assignment]
    check_csrf(session, presented)
    await sign_out(state.swarm, session, session_ttl_s=state.sessions.max_age_s)
    response: Response = (
        JSONResponse({"signed_out": True})
        if request.url.path.startswith("/api/")
        else RedirectResponse("/", status_code=303)
    )
    state.sessions.clear(response)
    return response


# --- node registration ---------------------------------------------------------------------------------------


async def statement_json(request: Request) -> Response:
    body = await inputs.json_body(request)
    wallet = inputs.wallet(inputs.text(body, "wallet", max_chars=42), "wallet")
    await _count_message(request, wallet)
    document = await documents.statement(
        _state(request),
        inputs.text(body, "kind", required=False, max_chars=16) or "register",
        inputs.required_text(body, "node_id", max_chars=128),
        wallet,
        inputs.wallet(from_wallet, "from_wallet")
        if (from_wallet := inputs.text(body, "from_wallet", required=False))
        else None,
    )
    return JSONResponse(document)


async def _register(request: Request, data: Any) -> registrations.RegistrationOutcome:
    return await registrations.register(
        _state(request).db,
        _state(request).binding,
        statement=inputs.required_text(data, "statement"),
        signature=inputs.required_text(data, "signature", max_chars=200),
        node_signature=inputs.text(data, "node_signature", required=False, max_chars=2000),
        node_public_key=inputs.text(data, "node_public_key", required=False, max_chars=2000),
        owner_statement=inputs.text(data, "owner_statement", required=False),
        owner_signature=inputs.text(data, "owner_signature", required=False, max_chars=200),
    )


async def registration_json(request: Request) -> Response:
    """Anyone may submit a signed statement (the node launcher does): the signatures are the authority."""
    outcome = await _register(request, await inputs.json_body(request))
    return JSONResponse({"node_id": outcome.node_id, "wallet": outcome.wallet, "outcome": outcome.outcome})


async def register_page(request: Request) -> Response:
    """The page a node's registration link opens: the wallet signs the statement the node has already signed."""
    session = _session(request)
    document = {
        "wallet": session.wallet if session else None,
        "node_id": request.query_params.get("node_id", ""),
        "portal_url": _state(request).sign_in_uri.rstrip("/"),  # what `far-mesh register-node --portal-url` takes
    }
    encoded = request.query_params.get(PROOF_PARAMETER)
    if not encoded:
        return _page(request, "register.html", document | {"proof": None})
    proof = registrations.proof_from_link(encoded)
    return _page(request, "register.html", document | {"node_id": proof["node_id"], "proof": proof})


async def register_form(request: Request) -> Response:
    session = require_session(_session(request))
    form = await inputs.form_body(request)
    check_csrf(session, form.get(CSRF_FIELD))  # type: ignore[arg-type]
    # HTML form submission turns every line break into CRLF; the statements were signed with LF
    fields = {name: value.replace("\r\n", "\n") for name, value in form.items() if isinstance(value, str)}
    outcome = await _register(request, fields)
    return RedirectResponse(f"/w/{outcome.wallet}/nodes?registered={quote(outcome.node_id)}", status_code=303)


# --- API keys ------------------------------------------------------------------------------------------------


async def keys_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _page(request, "keys.html", {"wallet": None, "keys": []}, status_code=401)
    return _page(request, "keys.html", await documents.keys_page(_state(request), session))


async def keys_json(request: Request) -> Response:
    return JSONResponse(await documents.keys_page(_state(request), _session(request)))


async def create_key_form(request: Request) -> Response:
    session = require_session(_session(request))
    form = await inputs.form_body(request)
    check_csrf(session, form.get(CSRF_FIELD))  # type: ignore[arg-type]
    created = await api_keys.create_key(
        _state(request).db, session.wallet, inputs.text(form, "label", required=False, max_chars=200) or ""
    )
    document = await documents.keys_page(_state(request), session)
    return _page(request, "keys.html", document | {"created": created}, status_code=201)


async def create_key_json(request: Request) -> Response:
    session = require_session(_session(request))
    check_csrf(session, request.headers.get(CSRF_HEADER))
    body = await inputs.json_body(request)
    created = await api_keys.create_key(
        _state(request).db, session.wallet, inputs.text(body, "label", required=False, max_chars=200) or ""
    )
    return JSONResponse(created, status_code=201)


async def revoke_key_form(request: Request) -> Response:
    session = require_session(_session(request))
    form = await inputs.form_body(request)
    check_csrf(session, form.get(CSRF_FIELD))  # type: ignore[arg-type]
    await api_keys.revoke_key(_state(request).db, session.wallet, request.path_params["key_id"])
    return RedirectResponse("/keys", status_code=303)


async def revoke_key_json(request: Request) -> Response:
    session = require_session(_session(request))
    check_csrf(session, request.headers.get(CSRF_HEADER))
    return JSONResponse(await api_keys.revoke_key(_state(request).db, session.wallet, request.path_params["key_id"]))


async def key_spend_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        raise NotSignedIn("sign in with your wallet first")
    document = await documents.key_spend(_state(request), session, request.path_params["key_id"], inputs.days(request))
    return _page(request, "key_spend.html", document)


async def key_spend_json(request: Request) -> Response:
    document = await documents.key_spend(
        _state(request), _session(request), request.path_params["key_id"], inputs.days(request)
    )
    return JSONResponse(document)


async def balance_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _page(request, "balance.html", {"wallet": None}, status_code=401)
    document = await documents.buyer_balance(
        _state(request), session, inputs.before(request), inputs.deposit_amount(request)
    )
    return _page(request, "balance.html", document)


async def balance_json(request: Request) -> Response:
    document = await documents.buyer_balance(
        _state(request), _session(request), inputs.before(request), inputs.deposit_amount(request)
    )
    return JSONResponse(document)


# --- withdrawals: the wallet signs a statement naming the amount (portal/withdrawals.py) ---------------------


async def withdrawal_message_json(request: Request) -> Response:
    session = require_session(_session(request))
    check_csrf(session, request.headers.get(CSRF_HEADER))
    body = await inputs.json_body(request)
    amount = inputs.far_amount(inputs.required_text(body, "amount_far", max_chars=40), "amount_far")
    await _count_message(request, session.wallet)
    state = _state(request)
    return JSONResponse(await withdrawals.message(state.db, state.binding, session.wallet, amount))


async def withdrawal_json(request: Request) -> Response:
    session = require_session(_session(request))
    check_csrf(session, request.headers.get(CSRF_HEADER))
    body = await inputs.json_body(request)
    state = _state(request)
    recorded = await withdrawals.withdraw(
        state.db,
        state.swarm,
        state.binding,
        session.wallet,
        inputs.required_text(body, "message"),
        inputs.required_text(body, "signature", max_chars=200),
    )
    return JSONResponse(recorded, status_code=201)


async def withdrawal_message_form(request: Request) -> Response:
    """The balance page with a withdrawal statement to sign (a POST: it issues a nonce)."""
    session = require_session(_session(request))
    form = await inputs.form_body(request)
    check_csrf(session, form.get(CSRF_FIELD))  # type: ignore[arg-type]
    amount = inputs.far_amount(inputs.required_text(form, "amount_far", max_chars=40), "amount_far")
    await _count_message(request, session.wallet)
    state = _state(request)
    statement = await withdrawals.message(state.db, state.binding, session.wallet, amount)
    document = await documents.buyer_balance(state, session, None, inputs.deposit_amount(request))
    return _page(request, "balance.html", document | {"withdraw": statement})


async def withdrawal_form(request: Request) -> Response:
    session = require_session(_session(request))
    form = await inputs.form_body(request)
    check_csrf(session, form.get(CSRF_FIELD))  # type: ignore[arg-type]
    state = _state(request)
    recorded = await withdrawals.withdraw(
        state.db,
        state.swarm,
        state.binding,
        session.wallet,
        (inputs.required_text(form, "message")).replace("\r\n", "\n"),
        inputs.required_text(form, "signature", max_chars=200),
    )
    return RedirectResponse(f"/balance?withdrawal={recorded['id']}", status_code=303)


# --- service -------------------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    state = _state(request)
    try:
        await state.db.fetchval("SELECT 1")
        await state.swarm.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the type is reported
        return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


ROUTES: list[BaseRoute] = [
    Route("/", home),
    Route("/view", view_address),
    Route("/me", me),
    Route("/w/{address}/nodes", nodes_page),
    Route("/api/w/{address}/nodes", nodes_json),
    Route("/w/{address}/earnings", earnings_page),
    Route("/api/w/{address}/earnings", earnings_json),
    Route("/w/{address}/payouts", payouts_page),
    Route("/api/w/{address}/payouts", payouts_json),
    Route("/api/nodes/{node_id}/earnings", node_earnings_json),
    Route("/swarm", swarm_page),
    Route("/api/swarm", swarm_json),
    Route("/swarm/{model_id:path}", swarm_model_page),
    Route("/api/swarm/{model_id:path}", swarm_model_json),
    Route("/onboarding", onboarding_page),
    Route("/api/onboarding", onboarding_json),
    Route("/api/siwe/message", sign_in_message, methods=["POST"]),
    Route("/api/siwe/verify", sign_in_verify, methods=["POST"]),
    Route("/api/session", session_json),
    Route("/logout", logout, methods=["POST"]),
    Route("/api/logout", logout, methods=["POST"]),
    Route("/register", register_page),
    Route("/register", register_form, methods=["POST"]),
    Route("/api/statements", statement_json, methods=["POST"]),
    Route("/api/registrations", registration_json, methods=["POST"]),
    Route("/keys", keys_page),
    Route("/keys", create_key_form, methods=["POST"]),
    Route("/api/keys", keys_json),
    Route("/api/keys", create_key_json, methods=["POST"]),
    Route("/keys/{key_id}/revoke", revoke_key_form, methods=["POST"]),
    Route("/api/keys/{key_id}/revoke", revoke_key_json, methods=["POST"]),
    Route("/keys/{key_id}", key_spend_page),
    Route("/api/keys/{key_id}/spend", key_spend_json),
    Route("/balance", balance_page),
    Route("/api/balance", balance_json),
    Route("/balance/withdrawal/message", withdrawal_message_form, methods=["POST"]),
    Route("/balance/withdrawals", withdrawal_form, methods=["POST"]),
    Route("/api/balance/withdrawal/message", withdrawal_message_json, methods=["POST"]),
    Route("/api/balance/withdrawals", withdrawal_json, methods=["POST"]),
    Route("/health", health),
    Route("/openapi.json", openapi),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]

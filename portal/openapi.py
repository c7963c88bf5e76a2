"""The OpenAPI document of the portal's JSON routes (each page's twin, sign-in, registration, keys).

Written out rather than inferred: it states the contract the pages and the node launcher rely on, and a test
checks that every JSON route is described and every described route exists.
"""

from typing import Any

_MONEY = {"type": "string", "pattern": r"^\d+(\.\d+)?$", "description": "$FAR, a decimal string"}
_WALLET = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$", "description": "EIP-55 address"}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
}
_TOTALS = {
    "type": "object",
    "properties": {
        "earned_far": _MONEY,
        "paid_far": _MONEY,
        "in_payment_far": _MONEY,
        "unpaid_far": _MONEY,
        "tokens_contributed": {"type": "integer"},
        "sessions_served": {"type": "integer"},
    },
}
_EARNINGS = {
    "type": "object",
    "properties": {
        "totals": _TOTALS,
        "by_day": {"type": "array", "items": {"type": "object"}},
        "by_model": {"type": "array", "items": {"type": "object"}},
    },
}


def _op(
    summary: str, schema: dict[str, Any] | None = None, *, errors: tuple[int, ...] = (422,), **extra: Any
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema or {"type": "object"}}}}
    }
    for status in errors:
        responses[str(status)] = {"description": "refused", "content": {"application/json": {"schema": _ERROR}}}
    return {"summary": summary, "responses": responses, **extra}


def _path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "properties": properties, "required": required}}},
    }


_DAYS = {"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 366, "default": 30}}
_CSRF = {"name": "X-CSRF-Token", "in": "header", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    address = [_path_param("address", _WALLET)]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Far Mesh portal", "version": "0.1.0"},
        "paths": {
            "/api/w/{address}/nodes": {"get": _op("Nodes registered to (or announcing) a wallet", parameters=address)},
            "/api/w/{address}/earnings": {
                "get": _op("A wallet's earnings: totals, per day, per model", _EARNINGS, parameters=[*address, _DAYS])
            },
            "/api/w/{address}/payouts": {
                "get": _op("Unpaid, in payment, paid, and payout batches", parameters=address)
            },
            "/api/nodes/{node_id}/earnings": {
                "get": _op("One node's earnings (public)", _EARNINGS, parameters=[_path_param("node_id"), _DAYS])
            },
            "/api/swarm": {"get": _op("Every model's swarm summary")},
            "/api/swarm/{model_id}": {
                "get": _op(
                    "One model's block coverage by server", errors=(404, 422), parameters=[_path_param("model_id")]
                )
            },
            "/api/onboarding": {
                "get": _op(
                    "Under-served blocks of a model and the command that serves them",
                    parameters=[{"name": "model_id", "in": "query", "schema": {"type": "string"}}],
                )
            },
            "/api/siwe/message": {
                "post": _op(
                    "A Sign-In with Ethereum message to sign (429 past the client's allowance of messages)",
                    errors=(422, 429),
                    requestBody=_body({"address": _WALLET}, ["address"]),
                )
            },
            "/api/siwe/verify": {
                "post": _op(
                    "Sign in: sets the HttpOnly session cookie",
                    errors=(401, 422),
                    requestBody=_body(
                        {"message": {"type": "string"}, "signature": {"type": "string"}}, ["message", "signature"]
                    ),
                )
            },
            "/api/session": {"get": _op("Who is signed in, and the CSRF token for POSTs")},
            "/api/logout": {"post": _op("Sign out", errors=(401, 403), parameters=[_CSRF])},
            "/api/statements": {
                "post": _op(
                    "A registration or transfer statement to sign (429 past the client's allowance of messages)",
                    errors=(422, 429),
                    requestBody=_body(
                        {
                            "kind": {"enum": ["register", "transfer"]},
                            "node_id": {"type": "string"},
                            "wallet": _WALLET,
                            "from_wallet": _WALLET,
                        },
                        ["node_id", "wallet"],
                    ),
                )
            },
            "/api/registrations": {
                "post": _op(
                    "Register a node to a wallet (or move it, with the owner's signed consent): the wallet signs "
                    "the statement (`signature`) and so does the node's own libp2p key (`node_signature`, base64; "
                    "`node_public_key`, base64 of its protobuf, unless the peer id inlines it)",
                    errors=(401, 403, 404, 422),
                    requestBody=_body(
                        {
                            "statement": {"type": "string"},
                            "signature": {"type": "string"},
                            "node_signature": {"type": "string"},
                            "node_public_key": {"type": "string"},
                            "owner_statement": {"type": "string"},
                            "owner_signature": {"type": "string"},
                        },
                        ["statement", "signature", "node_signature"],
                    ),
                )
            },
            "/api/keys": {
                "get": _op("The signed-in wallet's API keys", errors=(401,)),
                "post": _op(
                    "Create an API key (shown once)",
                    errors=(401, 403, 422),
                    parameters=[_CSRF],
                    requestBody=_body({"label": {"type": "string", "maxLength": 200}}, []),
                ),
            },
            "/api/keys/{key_id}/revoke": {
                "post": _op(
                    "Revoke one of the signed-in wallet's keys",
                    errors=(401, 403, 404),
                    parameters=[_path_param("key_id"), _CSRF],
                )
            },
            "/api/keys/{key_id}/spend": {
                "get": _op(
                    "A key's spend per day and model", errors=(401, 403, 404), parameters=[_path_param("key_id"), _DAYS]
                )
            },
            "/api/balance": {
                "get": _op(
                    "The signed-in buyer's balance (deposited, charged, withdrawn, held, available), how to deposit, "
                    "its withdrawals, and its deposits, charges and withdrawals, newest first",
                    errors=(401, 422),
                    parameters=[
                        {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "amount", "in": "query", "schema": {"type": "string", "default": "10"}},
                    ],
                )
            },
            "/api/balance/withdrawal/message": {
                "post": _op(
                    "A withdrawal statement for the signed-in wallet to sign (personal_sign), naming the amount",
                    errors=(401, 403, 422),
                    parameters=[_CSRF],
                    requestBody=_body({"amount_far": {"type": "string", "maxLength": 40}}, ["amount_far"]),
                )
            },
            "/api/balance/withdrawals": {
                "post": _op(
                    "Withdraw to the signed-in wallet: the statement it signed and the signature; the amount leaves "
                    "the balance at once (402 when not available) and the payer sends it on chain",
                    errors=(401, 402, 403, 422),
                    parameters=[_CSRF],
                    requestBody=_body(
                        {"message": {"type": "string"}, "signature": {"type": "string", "maxLength": 200}},
                        ["message", "signature"],
                    ),
                )
            },
            "/health": {"get": _op("The portal reaches the ledger and Redis (503 otherwise)", errors=(503,))},
        },
    }

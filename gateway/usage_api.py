"""GET /v1/usage: what a buyer spent, by UTC day, model and key, read from the ledger itself.

Every key of the caller's wallet is included, so a buyer who splits work over several keys sees it all. The
rows are the ledger's (the accounting consumer writes them within a second of a request's end), so they are what
is billed; the calling key's budget is shown beside them with what open requests still hold in reservations,
and the wallet's prepaid balance (`balance`) once the journal has a line for it.
"""

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api_keys import LEDGER_UNREACHABLE, ApiKey, KeyStoreUnavailable
from gateway.auth import authenticate
from gateway.balances import held_far, ledger_balance
from gateway.errors import ApiError, InvalidRequest
from gateway.openai_errors import openai_error_response
from gateway.state import GatewayState, state_of
from protocol import budgets, keys

_BY_DAY_MODEL_KEY = """
SELECT (s.started_at AT TIME ZONE 'UTC')::date AS day, s.model_id, s.api_key_id,
       count(*) AS requests, sum(s.tokens_generated) AS tokens, sum(s.total_cost_far) AS cost_far
FROM far_mesh_sessions s JOIN far_api_keys k ON k.key_id = s.api_key_id
WHERE k.wallet = $1 AND s.started_at >= $2 AND s.started_at < $3
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(9999, 12, 1)
"""A range is clamped to these days: every session is within them, and a day a month from either end of what
`date` holds would overflow as the range's default start or its exclusive end is worked out."""


def _day(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date such as 2026-12-01", field=name) from None
    return min(max(day, FIRST_DAY), LAST_DAY)


async def usage(request: Request) -> Response:
    try:
        return await _usage(request)
    except ApiError as exc:
        return openai_error_response(exc)


async def _usage(request: Request) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    today = datetime.now(UTC).date()
    end = _day(request, "end", today)
    start = _day(request, "start", end - timedelta(days=29))
    rows = await _ledger_rows(state, key, start, end) if start <= end else []  # an empty range has no spend
    total = sum((row["cost_far"] for row in rows), Decimal(0))
    body = {
        "object": "usage",
        "wallet": key.wallet,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "total_cost_far": format(total, "f"),
        "data": [
            {
                "date": row["day"].isoformat(),
                "model": row["model_id"],
                "api_key_id": row["api_key_id"],
                "requests": row["requests"],
                "completion_tokens": int(row["tokens"]),
                "cost_far": format(row["cost_far"], "f"),
            }
            for row in rows
        ],
        "budget": await _budget(state, key),
    }
    balance = await _balance(state, key)
    if balance is not None:
        body["balance"] = balance
    return JSONResponse(body)


async def _ledger_rows(state: GatewayState, key: ApiKey, start: date, end: date) -> list[Any]:
    since = datetime.combine(start, time(), UTC)
    until = datetime.combine(end + timedelta(days=1), time(), UTC)
    try:
        return list(
            await state.budgets.pool.fetch(
                _BY_DAY_MODEL_KEY, key.wallet, since, until, timeout=state.settings.gateway_ledger_timeout_s
            )
        )
    except LEDGER_UNREACHABLE as exc:
        raise KeyStoreUnavailable(f"PostgreSQL did not answer: {type(exc).__name__}") from exc


async def _budget(state: GatewayState, key: ApiKey) -> dict[str, Any]:
    """The calling key's limits, what its open requests hold, and (with a budget) what remains."""
    limits = key.limits
    body: dict[str, Any] = {
        "api_key_id": key.key_id,
        "max_budget_far": _text(limits.max_budget_far),
        "period_budget_far": _text(limits.period_budget_far),
        "budget_period": limits.budget_period,
        "expires_at": limits.expires_at.isoformat() if limits.expires_at else None,
        "allowed_models": list(limits.allowed_models) if limits.allowed_models is not None else None,
    }
    if not limits.budgeted:
        return body
    now = datetime.now(UTC)
    account = keys.budget_account(key.key_id)
    if not await state.redis.hexists(account, "rebuilt"):  # type: ignore[misc]
        await state.budgets.rebuild(key.key_id, now)
    period_field = budgets.period_fields(now)[limits.budget_period or "day"]
    spent, held, in_period = await state.redis.hmget(account, ["spent", "held", period_field])  # type: ignore[misc]
    spent_far, held_far = budgets.from_nano(int(spent or 0)), budgets.from_nano(int(held or 0))
    body["spent_far"] = format(spent_far, "f")
    body["held_far"] = format(held_far, "f")
    if limits.max_budget_far is not None:
        body["remaining_far"] = format(max(Decimal(0), limits.max_budget_far - spent_far - held_far), "f")
    if limits.period_budget_far is not None:
        period_far = budgets.from_nano(int(in_period or 0))
        body["period_spent_far"] = format(period_far, "f")
        body["period_remaining_far"] = format(max(Decimal(0), limits.period_budget_far - period_far - held_far), "f")
    return body


async def _balance(state: GatewayState, key: ApiKey) -> dict[str, Any] | None:
    """The wallet's prepaid balance as the journal has it (deposits credited minus sessions charged), what its
    open requests hold of it, and what is available; None when the journal has nothing for the wallet."""
    credited, charged, lines = await ledger_balance(
        state.budgets.pool, key.wallet, state.settings.gateway_ledger_timeout_s
    )
    if not lines:
        return None
    held = await held_far(state.redis, key.wallet)
    return {
        "balance_far": format(credited - charged, "f"),
        "held_far": format(held, "f"),
        "available_far": format(credited - charged - held, "f"),
        "required": state.balances is not None,
    }


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else format(amount, "f")

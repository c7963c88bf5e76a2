"""`far-mesh gateway` serves the gateway; `far-mesh keys create|revoke|list|show` manages API keys and their limits.

Heavy modules (uvicorn, asyncpg, the app) are imported inside the handlers so `far-mesh --help` stays light.
"""

import argparse
import asyncio
import math
import sys
from typing import TYPE_CHECKING

from protocol.numerals import whole_number

if TYPE_CHECKING:
    from datetime import datetime
    from decimal import Decimal

    from gateway.api_keys import KeyRecord


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    gateway = subparsers.add_parser("gateway", help="serve the HTTP gateway (GATEWAY_HOST:GATEWAY_PORT)")
    gateway.set_defaults(handler=serve)

    keys = subparsers.add_parser("keys", help="create or revoke API keys (POSTGRES_URL)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a key billed to a wallet; prints the key last")
    create.add_argument("--wallet", required=True, help="EIP-55 checksummed wallet the key's requests are billed to")
    create.add_argument("--label", default="", help="a note for humans, e.g. who holds the key")
    create.add_argument("--max-budget-far", type=_far, help="most FAR the key may ever spend (default: no limit)")
    create.add_argument("--period-budget-far", type=_far, help="most FAR per --budget-period (UTC)")
    create.add_argument("--budget-period", choices=("day", "week", "month"), help="the period of --period-budget-far")
    create.add_argument("--expires", type=_when, help="when the key stops working: 2027-01-31 or 2027-01-31T12:00Z")
    create.add_argument("--models", type=_models, help="comma-separated model ids the key may use (default: all)")
    create.add_argument(
        "--rate-limit", type=_positive, help="requests per minute (default GATEWAY_RATE_LIMIT_PER_MINUTE)"
    )
    create.add_argument(
        "--max-streams", type=_positive, help="concurrent streams (default GATEWAY_MAX_CONCURRENT_STREAMS)"
    )
    create.set_defaults(handler=create_key)
    listing = actions.add_parser("list", help="list keys (ids, wallets, limits, spend; never secrets)")
    listing.add_argument("--wallet", help="only this wallet's keys")
    listing.set_defaults(handler=list_keys)
    show = actions.add_parser("show", help="one key's limits and spend")
    show.add_argument("key_id", help="the 16-hex-digit id shown by `keys create`")
    show.set_defaults(handler=show_key)
    revoke = actions.add_parser(
        "revoke", help="revoke a key by its public id (the gateway forgets it within GATEWAY_KEY_CACHE_S)"
    )
    revoke.add_argument("key_id", help="the 16-hex-digit id shown by `keys create`")
    revoke.set_defaults(handler=revoke_key)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    import telemetry
    from gateway import collector
    from gateway.app import create_app
    from gateway.direct_send import DirectSendMiddleware
    from gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env()
    settings.configure_logging()
    telemetry.configure(settings.far_mesh_tracing, "far-mesh-gateway")
    server: uvicorn.Server | None = None

    def stopping() -> bool:
        return server is not None and server.should_exit

    app = DirectSendMiddleware(create_app(settings, stopping))  # streamed bodies skip Starlette's error middleware
    collector.tune_for_streams()
    config = uvicorn.Config(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        access_log=False,  # one line per request would drown the lifecycle lines; /metrics counts requests
        # 0 cuts the streams at once (uvicorn waits for ever on None, which `int(0.5) or None` once gave it)
        timeout_graceful_shutdown=math.ceil(settings.gateway_shutdown_drain_s),
        lifespan="on",
    )
    # the Server itself (not uvicorn.run), so the start-up's wait for Redis sees a SIGTERM (should_exit)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3  # uvicorn.run's status for a start-up that failed


def _postgres_url() -> str:
    from schema.settings import LedgerSettings

    return LedgerSettings.from_env().postgres_url


async def _with_connection(url: str, action: "object") -> object:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        return await action(connection)  # type: ignore[operator]
    finally:
        await connection.close()


def _far(text: str) -> "Decimal":
    from decimal import Decimal, InvalidOperation

    from protocol.budgets import MAX_BUDGET_FAR

    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_BUDGET_FAR:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and {MAX_BUDGET_FAR} FAR")
    return amount


def _when(text: str) -> "datetime":
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time such as 2027-01-31T12:00Z") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _models(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("name at least one model id")
    return models


def _positive(text: str) -> int:
    value = whole_number(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _fail(message: str) -> int:
    print(f"far-mesh keys: {message}", file=sys.stderr)
    return 1


def create_key(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.api_keys import IssuedKey, KeyLimits
    from gateway.api_keys import create_key as store_key
    from protocol.wallet import InvalidWallet

    if (args.period_budget_far is None) != (args.budget_period is None):
        return _fail("--period-budget-far and --budget-period go together")
    limits = KeyLimits(
        max_budget_far=args.max_budget_far,
        period_budget_far=args.period_budget_far,
        budget_period=args.budget_period,
        expires_at=args.expires,
        allowed_models=args.models,
        rate_limit_per_minute=args.rate_limit,
        max_concurrent_streams=args.max_streams,
    )
    url = _postgres_url()
    try:
        issued = asyncio.run(_with_connection(url, lambda c: store_key(c, args.wallet, args.label, limits)))
    except InvalidWallet as exc:
        return _fail(f"--wallet {args.wallet}: {exc}")
    except ValueError as exc:
        return _fail(str(exc))
    except asyncpg.UndefinedTableError:
        return _fail("table far_api_keys does not exist; run `far-mesh migrate` first")
    except OSError as exc:
        return _fail(f"PostgreSQL at POSTGRES_URL did not answer ({type(exc).__name__}); is it running?")
    assert isinstance(issued, IssuedKey)
    print(f"created key_id={issued.key.key_id} wallet={issued.key.wallet}; the key is shown once, store it now:")
    print(issued.secret_key)
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.api_keys import UnknownKey
    from gateway.api_keys import revoke_key as store_revoke

    url = _postgres_url()
    try:
        revoked_at = asyncio.run(_with_connection(url, lambda c: store_revoke(c, args.key_id)))
    except UnknownKey as exc:
        return _fail(str(exc))
    except asyncpg.UndefinedTableError:
        return _fail("table far_api_keys does not exist; run `far-mesh migrate` first")
    except OSError as exc:
        return _fail(f"PostgreSQL at POSTGRES_URL did not answer ({type(exc).__name__}); is it running?")
    print(f"revoked key_id={args.key_id} at={revoked_at}")
    return 0


def _describe(record: "KeyRecord") -> str:
    key, limits = record.key, record.key.limits
    parts = [
        f"key_id={key.key_id}",
        f"wallet={key.wallet}",
        f"status={'revoked' if record.revoked_at else 'active'}",
        f"created={record.created_at.isoformat()}",
        f"spent_far={record.spent_far:f}",
    ]
    optional = {
        "max_budget_far": limits.max_budget_far,
        "period_budget_far": limits.period_budget_far,
        "budget_period": limits.budget_period,
        "expires": limits.expires_at.isoformat() if limits.expires_at else None,
        "models": ",".join(limits.allowed_models) if limits.allowed_models else None,
        "rate_limit": limits.rate_limit_per_minute,
        "max_streams": limits.max_concurrent_streams,
        "label": repr(key.label) if key.label else None,
    }
    parts += [
        f"{name}={value:f}" if hasattr(value, "is_finite") else f"{name}={value}"
        for name, value in optional.items()
        if value is not None
    ]
    return " ".join(parts)


def _listed(wallet: str | None, key_id: str | None) -> "list[KeyRecord] | int":
    import asyncpg

    from gateway.api_keys import list_keys as store_list

    try:
        records = asyncio.run(_with_connection(_postgres_url(), lambda c: store_list(c, wallet=wallet, key_id=key_id)))
    except asyncpg.UndefinedTableError:
        return _fail("table far_api_keys does not exist; run `far-mesh migrate` first")
    except asyncpg.UndefinedColumnError:
        return _fail("far_api_keys has no budget columns; run `far-mesh migrate` first")
    except OSError as exc:
        return _fail(f"PostgreSQL at POSTGRES_URL did not answer ({type(exc).__name__}); is it running?")
    assert isinstance(records, list)
    return records


def list_keys(args: argparse.Namespace) -> int:
    records = _listed(args.wallet, None)
    if isinstance(records, int):
        return records
    for record in records:
        print(_describe(record))
    return 0


def show_key(args: argparse.Namespace) -> int:
    records = _listed(None, args.key_id)
    if isinstance(records, int):
        return records
    if not records:
        return _fail(f"no API key with id {args.key_id!r}")
    print(_describe(records[0]))
    return 0

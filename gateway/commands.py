"""`far-mesh gateway` serves the gateway; `far-mesh keys create|revoke` manages API keys.

Heavy modules (uvicorn, asyncpg, the app) are imported inside the handlers so `far-mesh --help` stays light.
"""

import argparse
import asyncio
import sys


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    gateway = subparsers.add_parser("gateway", help="serve the HTTP gateway (GATEWAY_HOST:GATEWAY_PORT)")
    gateway.set_defaults(handler=serve)

    keys = subparsers.add_parser("keys", help="create or revoke API keys (POSTGRES_URL)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a key billed to a wallet; prints the key last")
    create.add_argument("--wallet", required=True, help="EIP-55 checksummed wallet the key's requests are billed to")
    create.add_argument("--label", default="", help="a note for humans, e.g. who holds the key")
    create.set_defaults(handler=create_key)
    revoke = actions.add_parser(
        "revoke", help="revoke a key by its public id (the gateway forgets it within GATEWAY_KEY_CACHE_S)"
    )
    revoke.add_argument("key_id", help="the 16-hex-digit id shown by `keys create`")
    revoke.set_defaults(handler=revoke_key)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env()
    settings.configure_logging()
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        access_log=False,  # one line per request would drown the lifecycle lines; /metrics counts requests
        timeout_graceful_shutdown=int(settings.gateway_shutdown_drain_s) or None,
        lifespan="on",
    )
    return 0


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


def _fail(message: str) -> int:
    print(f"far-mesh keys: {message}", file=sys.stderr)
    return 1


def create_key(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.api_keys import IssuedKey
    from gateway.api_keys import create_key as store_key
    from protocol.wallet import InvalidWallet

    url = _postgres_url()
    try:
        issued = asyncio.run(_with_connection(url, lambda c: store_key(c, args.wallet, args.label)))
    except InvalidWallet as exc:
        return _fail(f"--wallet {args.wallet}: {exc}")
    except ValueError as exc:
        return _fail(f"--label: {exc}")
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

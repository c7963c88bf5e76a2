"""`far-mesh migrate`: bring the ledger's schema up to date (a release step, safe to run from every pod)."""

import argparse
import asyncio
import logging

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser("migrate", help="apply the ledger's SQL migrations to POSTGRES_URL")
    parser.set_defaults(handler=migrate)


def migrate(args: argparse.Namespace) -> int:
    from schema.migrate import MigrationError, apply_migrations
    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    try:
        applied = asyncio.run(apply_migrations(settings.postgres_url))
    except MigrationError as exc:
        log.error("migrate failed: %s", exc)
        return 1
    except OSError as exc:
        log.error("migrate failed: PostgreSQL at POSTGRES_URL did not answer (%s); is it running?", exc)
        return 1
    log.info("migrate done applied=%d names=%s", len(applied), ",".join(applied) or "-")
    return 0

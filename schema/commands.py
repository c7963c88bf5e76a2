"""`far-mesh migrate`: bring the ledger's schema up to date (a release step, safe to run from every pod)."""

import argparse
import asyncio
import logging
import time

log = logging.getLogger(__name__)


WAIT_POLL_S = 2.0


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser("migrate", help="apply the ledger's SQL migrations to POSTGRES_URL")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="apply nothing: wait until the ledger has every migration this image carries (an init container's "
        "ordering: a process starts only once the tables it reads are there)",
    )
    parser.set_defaults(handler=migrate)


def migrate(args: argparse.Namespace) -> int:
    from schema.migrate import MigrationError, apply_migrations
    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    if args.wait:
        wait_for_migrations(settings.postgres_url)
        return 0
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


def wait_for_migrations(dsn: str) -> None:
    """Return once the ledger at `dsn` has every bundled migration; until then say which are missing (or why the
    ledger cannot be read: not up, schema_migrations not there or not granted yet) every WAIT_POLL_S. The DSN is
    never printed."""
    from schema.migrate import missing_migrations

    while True:
        try:
            missing = asyncio.run(missing_migrations(dsn))
        except Exception as exc:  # every reason to wait is the same wait: try again
            missing = [type(exc).__name__]
        if not missing:
            log.info("migrations in: the ledger has every migration this image carries")
            return
        log.info("waiting for migrations: %s", " ".join(missing))
        time.sleep(WAIT_POLL_S)

"""`far-mesh accounting` (the usage consumer) and `far-mesh ledger reconcile|serve` (the books); paying nodes is
`far-mesh payouts` (payouts.commands)."""

import argparse
import asyncio
import logging

from chain.commands import non_negative_far, whole_number

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    accounting = subparsers.add_parser("accounting", help="consume usage records into the ledger (POSTGRES_URL)")
    accounting.add_argument(
        "--migrate",
        action="store_true",
        help="apply the ledger's migrations first, as `far-mesh migrate` does (the Procfile's line: honcho runs no "
        "release step)",
    )
    accounting.set_defaults(handler=run_accounting)

    ledger = subparsers.add_parser("ledger", help="check the ledger's books (POSTGRES_URL)")
    ledger_actions = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    reconcile = ledger_actions.add_parser(
        "reconcile",
        help="prove every journal entry and the journal balance, and (with --opening-far) that the treasury's $FAR "
        "on chain is its opening float + deposits credited - payouts paid and each paid wallet received its payouts; "
        "exits 1 naming what does not balance",
    )
    reconcile.add_argument(
        "--opening-far",
        type=non_negative_far,
        metavar="FAR",
        help="the treasury's $FAR before any deposit or payout (default LEDGER_OPENING_FAR); with it the "
        "chain is read (CHAIN_*, DEPOSIT_CONTRACT_ADDRESS: the treasury and token are the deposit "
        "contract's)",
    )
    reconcile.add_argument(
        "--block", type=whole_number, help="reconcile at this block (default: the deposit watcher's newest checkpoint)"
    )
    reconcile.add_argument(
        "--receipts-from-block",
        type=int,
        default=None,
        metavar="N",
        help="where each wallet's receipts from the treasury's payouts are read from (the batch contract's "
        "deployment block; default LEDGER_RECEIPTS_FROM_BLOCK)",
    )
    reconcile.set_defaults(handler=run_reconcile)
    serve = ledger_actions.add_parser(
        "serve",
        help="reconcile every LEDGER_RECONCILE_INTERVAL_S (the chain too when LEDGER_OPENING_FAR is "
        "set) and export the outcome on /metrics (LEDGER_METRICS_PORT) for the alert on it",
    )
    serve.set_defaults(handler=run_serve)


def run_reconcile(args: argparse.Namespace) -> int:
    from accounting.reconcile import run_reconcile as run

    return run(args)


def run_serve(args: argparse.Namespace) -> int:
    from accounting.reconcile import run_serve as run

    return run(args)


def run_accounting(args: argparse.Namespace) -> int:
    import telemetry
    from accounting.service import serve
    from accounting.settings import AccountingSettings

    settings = AccountingSettings.from_env()
    settings.configure_logging()
    if args.migrate and (status := asyncio.run(_migrate_once_postgres_answers(settings.postgres_url))) != 0:
        return status
    telemetry.configure(settings.far_mesh_tracing, "far-mesh-accounting")
    asyncio.run(serve(settings))
    return 0


async def _migrate_once_postgres_answers(dsn: str) -> int:
    """Apply the ledger's migrations, waiting while PostgreSQL is away; 0, or 1 when they cannot be applied.

    Started with PostgreSQL (a Procfile, a compose file) or restarted while it restarts (the chaos soak), the
    accounting line waits rather than exit, which would stop every process honcho runs beside it: a refused
    connection, a server starting up or shutting down, too many connections, a connection lost mid-statement are
    waited out; a migration that fails, a missing database or a wrong password are not, and exit 1 saying so."""
    import asyncpg

    from protocol.backoff import Backoff
    from schema.migrate import MigrationError, apply_migrations
    from schema.transient import LEDGER_AWAY

    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            applied = await apply_migrations(dsn)
        except LEDGER_AWAY as exc:
            log.warning(
                "accounting waiting for PostgreSQL at POSTGRES_URL (%s); retrying in %.1fs",
                type(exc).__name__,
                backoff.delay_s,
            )
            await backoff.sleep()
            continue
        except (MigrationError, asyncpg.PostgresError) as exc:
            log.error("migrate failed: %s", exc)
            return 1
        log.info("migrate done applied=%d names=%s", len(applied), ",".join(applied) or "-")
        return 0

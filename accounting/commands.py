"""`far-mesh accounting` (the usage consumer) and `far-mesh payouts run|list|resolve` (paying nodes)."""

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    accounting = subparsers.add_parser("accounting", help="consume usage records into the ledger (POSTGRES_URL)")
    accounting.set_defaults(handler=run_accounting)

    payouts = subparsers.add_parser("payouts", help="pay nodes the $FAR they earned")
    actions = payouts.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="batch unpaid contributions per wallet and hand them to the payer")
    run.add_argument("--min-far", type=_far_amount, default=Decimal(0), help="smallest total a wallet is paid")
    run.add_argument("--out-dir", type=Path, required=True, help="where the file payer writes the batch file")
    run.set_defaults(handler=run_payouts)

    listing = actions.add_parser("list", help="show payment batches, newest first")
    listing.add_argument("--status", choices=("pending", "paid", "failed"), help="only batches in this state")
    listing.set_defaults(handler=list_payouts)

    resolve = actions.add_parser(
        "resolve", help="settle a pending batch by hand (one a crash left between claim and confirmation)"
    )
    resolve.add_argument("batch_id", type=int, metavar="BATCH_ID")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--paid", type=_reference, metavar="TX_REF", help="the money moved: mark the rows paid under this reference"
    )
    outcome.add_argument("--failed", action="store_true", help="the money did not move: release the rows")
    resolve.add_argument("--reason", default="resolved by an operator", help="recorded with --failed")
    resolve.set_defaults(handler=resolve_payout)


def _reference(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("give the transfer's reference (a transaction hash, a file name)")
    return text.strip()


def _far_amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal amount such as 1.5") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative amount")
    return value


def run_accounting(args: argparse.Namespace) -> int:
    from accounting.service import serve
    from accounting.settings import AccountingSettings

    settings = AccountingSettings.from_env()
    settings.configure_logging()
    asyncio.run(serve(settings))
    return 0


def run_payouts(args: argparse.Namespace) -> int:
    from accounting.payer import FilePayer
    from accounting.payouts import BatchNotPending, PaymentFailed, run_payout
    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    try:
        batch = asyncio.run(run_payout(settings.postgres_url, FilePayer(args.out_dir), min_far=args.min_far))
    except PaymentFailed as exc:
        log.error("payout failed, rows left unpaid: %s", exc)
        return 1
    except BatchNotPending as exc:  # an operator resolved it while the payer was still at work
        log.error("payout batch settled elsewhere meanwhile; compare the payer's records with it: %s", exc)
        return 1
    if batch is None:
        log.info("payout: no wallet is owed at least %s FAR", args.min_far)
    return 0


def list_payouts(args: argparse.Namespace) -> int:
    from accounting.payouts import list_batches

    batches = asyncio.run(_with_ledger(lambda connection: list_batches(connection, status=args.status)))
    print("id\tstatus\tpayer\tcreated_at\twallets\trows\ttotal_far\treference")
    for b in batches:
        note = b.transaction_ref or b.failure_reason or "-"
        print(
            f"{b.id}\t{b.status}\t{b.payer}\t{b.created_at.isoformat(timespec='seconds')}\t{b.wallet_count}\t"
            f"{b.row_count}\t{b.total_far}\t{note}"
        )
    return 0


def resolve_payout(args: argparse.Namespace) -> int:
    from accounting.payouts import BatchNotPending, mark_failed, mark_paid

    async def settle(connection: "asyncpg.Connection") -> None:
        if args.paid is not None:
            await mark_paid(connection, args.batch_id, args.paid)
        else:
            await mark_failed(connection, args.batch_id, args.reason)

    try:
        asyncio.run(_with_ledger(settle))
    except BatchNotPending as exc:
        log.error("resolve refused: %s", exc)
        return 1
    log.info("payout batch resolved id=%d status=%s", args.batch_id, "paid" if args.paid is not None else "failed")
    return 0


async def _with_ledger(use: "Callable[[asyncpg.Connection], Awaitable[T]]") -> T:
    import asyncpg

    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    connection = await asyncpg.connect(settings.postgres_url)
    try:
        return await use(connection)
    finally:
        await connection.close()

"""`far-mesh accounting` (the usage consumer) and `far-mesh payouts run` (pay nodes what they are owed)."""

import argparse
import asyncio
import logging
from decimal import Decimal, InvalidOperation
from pathlib import Path

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
    from accounting.payouts import PaymentFailed, run_payout
    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    try:
        batch = asyncio.run(run_payout(settings.postgres_url, FilePayer(args.out_dir), min_far=args.min_far))
    except PaymentFailed as exc:
        log.error("payout failed, rows left unpaid: %s", exc)
        return 1
    if batch is None:
        log.info("payout: no wallet is owed at least %s FAR", args.min_far)
    return 0

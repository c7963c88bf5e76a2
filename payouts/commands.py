"""`far-mesh payouts run|serve|list|resolve`: paying nodes (and buyers' withdrawals) the $FAR they are owed.

The handlers import their heavy modules lazily, so `far-mesh --help` loads neither asyncpg nor web3.
"""

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from chain.commands import idle_until_stopped, non_negative_far, whole_number

if TYPE_CHECKING:
    from payouts.settings import PayoutSettings

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    payouts = subparsers.add_parser("payouts", help="pay nodes the $FAR they earned")
    actions = payouts.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run", help="claim one batch of unpaid contributions and pay it (settling older ones first)"
    )
    run.add_argument(
        "--payer",
        choices=("file", "chain"),
        default="file",
        help="chain: pay on chain now (CHAIN_*, PAYOUT_TREASURY_*); file: export for manual signing",
    )
    run.add_argument(
        "--min-far",
        type=non_negative_far,
        default=None,
        help="smallest total a wallet is paid (default PAYOUT_MIN_FAR, as `serve`: 1)",
    )
    run.add_argument(
        "--max-wallets",
        type=whole_number,
        default=None,
        help="most wallets in the batch (default PAYOUT_MAX_WALLETS, as `serve`: 200)",
    )
    run.add_argument("--out-dir", type=Path, help="where the file payer writes the batch file (--payer file)")
    run.set_defaults(handler=run_payouts)

    serve = actions.add_parser(
        "serve", help="pay on chain continuously: every PAYOUT_INTERVAL_S, with metrics on its port"
    )
    serve.set_defaults(handler=serve_payouts)

    listing = actions.add_parser("list", help="show payment batches, newest first")
    listing.add_argument("--status", choices=BATCH_STATUSES, help="only batches in this state")
    listing.set_defaults(handler=list_payouts)

    resolve = actions.add_parser(
        "resolve", help="finish a batch by hand: one paid from its exported file, or one that never moved money"
    )
    resolve.add_argument("batch_id", type=int, metavar="BATCH_ID")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--tx",
        type=_tx_hash,
        metavar="0xHASH",
        help="the transaction that paid it: checked on chain (recipients, amounts, confirmations) before rows are paid",
    )
    outcome.add_argument("--failed", action="store_true", help="the money did not move: release the rows")
    resolve.add_argument("--reason", default="resolved by an operator", help="recorded with --failed")
    resolve.add_argument(
        "--sender",
        type=_wallet,
        help="with --tx: the address that must have paid; default: the sender the ledger recorded for the batch, "
        "else the treasury's (from PAYOUT_TREASURY_KEY_FILE / _KEY)",
    )
    resolve.set_defaults(handler=resolve_payout)


BATCH_STATUSES = ("claimed", "signed", "submitted", "paid", "failed")


def _tx_hash(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 66 or not value.startswith("0x") or any(c not in "0123456789abcdef" for c in value[2:]):
        raise argparse.ArgumentTypeError(f"{text!r} is not a transaction hash (0x and 64 hexadecimal digits)")
    return value


def _wallet(text: str) -> str:
    from protocol.wallet import InvalidWallet, validate_wallet

    try:
        return validate_wallet(text.strip())
    except InvalidWallet as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def run_payouts(args: argparse.Namespace) -> int:
    if args.payer == "chain":
        return _run_chain_payouts(args)
    from payouts.batches import PaymentFailed, run_payout
    from payouts.payable import PayoutHold
    from payouts.payer import FilePayer
    from payouts.settings import PayoutSettings

    if args.out_dir is None:
        log.error("payouts run --payer file needs --out-dir (where the batch file for manual signing goes)")
        return 2
    settings = PayoutSettings.from_env()  # the ledger, the batch policy, what verification holds back (no chain)
    settings.configure_logging()
    policy = settings.batch_policy(min_far=args.min_far, max_wallets=args.max_wallets)
    try:
        batch = asyncio.run(
            run_payout(
                settings.postgres_url,
                FilePayer(args.out_dir),
                min_far=policy.min_far,
                max_wallets=policy.max_wallets,
                hold=PayoutHold.from_settings(settings),
            )
        )
    except PaymentFailed as exc:
        log.error("payout failed, rows left unpaid: %s", exc)
        return 1
    if batch is None:
        log.info("payout: no wallet is owed at least %s FAR", policy.min_far)
    else:
        log.info(
            "payout batch %d exported: sign and send it, then `far-mesh payouts resolve %d --tx 0x...`",
            batch.id,
            batch.id,
        )
    return 0


def _payout_settings() -> "PayoutSettings":
    from payouts.settings import PayoutSettings
    from protocol.settings import SettingsError

    settings = PayoutSettings.from_env()
    settings.configure_logging()
    for name in ("chain_token_address", "chain_batch_contract_address"):
        if getattr(settings, name) is None:
            raise SettingsError(f"{name.upper()}: required by the chain payer (see `far-mesh chain deploy`)")
    try:
        settings.treasury_key()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _run_chain_payouts(args: argparse.Namespace) -> int:
    from chain.errors import ChainError
    from payouts.payer import ChainPayer, PayerBusy

    settings = _payout_settings()
    policy = settings.batch_policy(min_far=args.min_far, max_wallets=args.max_wallets)
    settings = settings.model_copy(update={"payout_min_far": policy.min_far, "payout_max_wallets": policy.max_wallets})

    async def run() -> int:
        import asyncpg

        payer = await ChainPayer.connect(settings)
        connection = await asyncpg.connect(settings.postgres_url)
        try:
            settled = await payer.run_once(connection, min_far=policy.min_far)
        finally:
            await connection.close()
        for outcome in settled:
            print(f"batch {outcome.batch_id}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
        if not settled:
            log.info("payout: no wallet is owed at least %s FAR", policy.min_far)
        return 1 if any(s.status == "failed" for s in settled) else 0

    try:
        return asyncio.run(run())
    except (ChainError, PayerBusy) as exc:
        log.error("payout stopped: %s", exc)
        return 1


CHAIN_VARIABLES = (
    "chain_token_address",
    "chain_batch_contract_address",
    "payout_treasury_key_file",
    "payout_treasury_key",
)
"""Unset together, there is no chain to pay on (a local Procfile run): `payouts serve` says so and idles."""


def serve_payouts(args: argparse.Namespace) -> int:
    from chain.errors import ChainError
    from payouts.payer import serve_chain_payouts as serve
    from payouts.settings import PayoutSettings

    unconfigured = PayoutSettings.from_env()
    if all(getattr(unconfigured, name) is None for name in CHAIN_VARIABLES):
        unconfigured.configure_logging()
        return _idle_without_chain()
    settings = _payout_settings()  # set in part: a missing one stops it with its name
    try:
        asyncio.run(serve(settings))
    except ChainError as exc:
        log.error("payouts serve stopped: %s", exc)
        return 1
    return 0


def _idle_without_chain() -> int:
    """Pay nothing until SIGTERM, having said why: under a Procfile runner an exit would stop every process."""
    log.warning(
        "payouts serve: no chain configured (%s unset): paying nothing, providers' earnings stay in the ledger; "
        "`far-mesh chain deploy` prints the settings to set",
        ", ".join(name.upper() for name in CHAIN_VARIABLES),
    )
    idle_until_stopped()
    log.info("payouts serve stopped")
    return 0


def list_payouts(args: argparse.Namespace) -> int:
    from payouts.batches import list_batches
    from payouts.resolve import with_ledger

    batches = asyncio.run(with_ledger(lambda connection: list_batches(connection, status=args.status)))
    print("id\tstatus\tpayer\tcreated_at\twallets\trows\ttotal_far\tnonce\tgas_used\treference")
    for b in batches:
        note = b.transaction_ref or b.failure_reason or b.export_ref or "-"
        nonce = "-" if b.nonce is None else b.nonce
        gas = "-" if b.gas_used is None else b.gas_used
        print(
            f"{b.id}\t{b.status}\t{b.payer}\t{b.created_at.isoformat(timespec='seconds')}\t{b.wallet_count}\t"
            f"{b.row_count}\t{b.total_far}\t{nonce}\t{gas}\t{note}"
        )
    return 0


def resolve_payout(args: argparse.Namespace) -> int:
    from chain.errors import ChainError
    from payouts.batches import BatchNotPending, PaymentFailed
    from payouts.resolve import release, resolve_with_transaction, with_ledger

    try:
        if args.tx is not None:
            asyncio.run(resolve_with_transaction(args.batch_id, args.tx, args.sender))
        else:
            asyncio.run(with_ledger(lambda connection: release(connection, args.batch_id, args.reason)))
    except (BatchNotPending, PaymentFailed, ChainError) as exc:
        log.error("resolve refused: %s", exc)
        return 1
    log.info("payout batch resolved id=%d status=%s", args.batch_id, "paid" if args.tx is not None else "failed")
    return 0

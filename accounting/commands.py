"""`far-mesh accounting` (the usage consumer) and `far-mesh payouts run|serve|list|resolve` (paying nodes)."""

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import asyncpg

    from chain.settings import PayoutSettings

T = TypeVar("T")

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
        type=_far_amount,
        metavar="FAR",
        help="the treasury's $FAR before any deposit or payout (default FAR_MESH_RECONCILE_OPENING_FAR); with it the "
        "chain is read (FAR_MESH_CHAIN_*, FAR_MESH_DEPOSIT_CONTRACT_ADDRESS: the treasury and token are the deposit "
        "contract's)",
    )
    reconcile.add_argument(
        "--block", type=_positive, help="reconcile at this block (default: the deposit watcher's newest checkpoint)"
    )
    reconcile.add_argument(
        "--receipts-from-block",
        type=int,
        default=None,
        metavar="N",
        help="where each wallet's receipts from the treasury's payouts are read from (the batch contract's "
        "deployment block; default FAR_MESH_RECONCILE_RECEIPTS_FROM_BLOCK)",
    )
    reconcile.set_defaults(handler=run_reconcile)
    serve = ledger_actions.add_parser(
        "serve",
        help="reconcile every FAR_MESH_RECONCILE_INTERVAL_S (the chain too when FAR_MESH_RECONCILE_OPENING_FAR is "
        "set) and export the outcome on /metrics (FAR_MESH_RECONCILE_METRICS_PORT) for the alert on it",
    )
    serve.set_defaults(handler=run_serve)

    payouts = subparsers.add_parser("payouts", help="pay nodes the $FAR they earned")
    actions = payouts.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run", help="claim one batch of unpaid contributions and pay it (settling older ones first)"
    )
    run.add_argument(
        "--payer",
        choices=("file", "chain"),
        default="file",
        help="chain: pay on chain now (FAR_MESH_CHAIN_*, FAR_MESH_TREASURY_*); file: export for manual signing",
    )
    run.add_argument("--min-far", type=_far_amount, default=Decimal(0), help="smallest total a wallet is paid")
    run.add_argument("--max-wallets", type=_positive, default=None, help="most wallets in the batch")
    run.add_argument("--out-dir", type=Path, help="where the file payer writes the batch file (--payer file)")
    run.set_defaults(handler=run_payouts)

    serve = actions.add_parser(
        "serve", help="pay on chain continuously: every FAR_MESH_PAYOUT_INTERVAL_S, with metrics on its port"
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
        "else the treasury's (from FAR_MESH_TREASURY_KEY_FILE / _KEY)",
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _far_amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal amount such as 1.5") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative amount")
    return value


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
    if args.migrate:
        from schema.commands import migrate

        asyncio.run(_wait_for_postgres(settings.postgres_url))
        if (status := migrate(args)) != 0:
            return status
    telemetry.configure(settings.far_mesh_tracing, "far-mesh-accounting")
    asyncio.run(serve(settings))
    return 0


async def _wait_for_postgres(dsn: str) -> None:
    """Return once PostgreSQL accepts a connection: started with it (a Procfile, a compose file), the accounting
    line waits to migrate rather than exit, which would stop every process honcho runs beside it."""
    import asyncpg

    from protocol.backoff import Backoff

    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            connection = await asyncpg.connect(dsn, timeout=5)
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:  # refused, or still starting up
            log.warning(
                "accounting waiting for PostgreSQL at POSTGRES_URL (%s); retrying in %.1fs",
                type(exc).__name__,
                backoff.delay_s,
            )
            await backoff.sleep()
            continue
        except asyncpg.PostgresError:  # it answers, with a problem (no such database...) the migration reports
            return
        await connection.close()
        return


def run_payouts(args: argparse.Namespace) -> int:
    if args.payer == "chain":
        return _run_chain_payouts(args)
    from accounting.payable import PayoutHold
    from accounting.payer import FilePayer
    from accounting.payouts import PaymentFailed, run_payout
    from chain.settings import PayoutSettings

    if args.out_dir is None:
        log.error("payouts run --payer file needs --out-dir (where the batch file for manual signing goes)")
        return 2
    settings = PayoutSettings.from_env()  # the ledger, and what verification holds back (chain settings unused)
    settings.configure_logging()
    try:
        batch = asyncio.run(
            run_payout(
                settings.postgres_url,
                FilePayer(args.out_dir),
                min_far=args.min_far,
                max_wallets=args.max_wallets,
                hold=PayoutHold.from_settings(settings),
            )
        )
    except PaymentFailed as exc:
        log.error("payout failed, rows left unpaid: %s", exc)
        return 1
    if batch is None:
        log.info("payout: no wallet is owed at least %s FAR", args.min_far)
    else:
        log.info(
            "payout batch %d exported: sign and send it, then `far-mesh payouts resolve %d --tx 0x...`",
            batch.id,
            batch.id,
        )
    return 0


def _payout_settings() -> "PayoutSettings":
    from chain.settings import PayoutSettings
    from protocol.settings import SettingsError

    settings = PayoutSettings.from_env()
    settings.configure_logging()
    for name in ("far_mesh_token_address", "far_mesh_batch_contract_address"):
        if getattr(settings, name) is None:
            raise SettingsError(f"{name.upper()}: required by the chain payer (see `far-mesh chain deploy`)")
    try:
        settings.treasury_key()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _run_chain_payouts(args: argparse.Namespace) -> int:
    from accounting.payer import ChainPayer, PayerBusy
    from chain.errors import ChainError

    settings = _payout_settings()
    max_wallets = args.max_wallets or settings.far_mesh_payout_max_wallets
    settings = settings.model_copy(update={"far_mesh_payout_max_wallets": max_wallets})

    async def run() -> int:
        import asyncpg

        payer = await ChainPayer.connect(settings)
        connection = await asyncpg.connect(settings.postgres_url)
        try:
            settled = await payer.run_once(connection, min_far=args.min_far)
        finally:
            await connection.close()
        for outcome in settled:
            print(f"batch {outcome.batch_id}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
        if not settled:
            log.info("payout: no wallet is owed at least %s FAR", args.min_far)
        return 1 if any(s.status == "failed" for s in settled) else 0

    try:
        return asyncio.run(run())
    except (ChainError, PayerBusy) as exc:
        log.error("payout stopped: %s", exc)
        return 1


CHAIN_VARIABLES = (
    "far_mesh_token_address",
    "far_mesh_batch_contract_address",
    "far_mesh_treasury_key_file",
    "far_mesh_treasury_key",
)
"""Unset together, there is no chain to pay on (a local Procfile run): `payouts serve` says so and idles."""


def serve_payouts(args: argparse.Namespace) -> int:
    from accounting.payer import serve_chain_payouts as serve
    from chain.errors import ChainError
    from chain.settings import PayoutSettings

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


def idle_until_stopped() -> None:
    """Block until SIGTERM or SIGINT. A chain process with no chain configured waits here instead of exiting,
    because a Procfile runner (honcho) stops every process as soon as one of them ends."""
    import signal

    async def idle() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

    asyncio.run(idle())


def list_payouts(args: argparse.Namespace) -> int:
    from accounting.payouts import list_batches

    batches = asyncio.run(_with_ledger(lambda connection: list_batches(connection, status=args.status)))
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
    from accounting.payouts import BatchNotPending, PaymentFailed
    from chain.errors import ChainError

    try:
        if args.tx is not None:
            asyncio.run(_resolve_with_transaction(args.batch_id, args.tx, args.sender))
        else:
            asyncio.run(_with_ledger(lambda connection: _release(connection, args.batch_id, args.reason)))
    except (BatchNotPending, PaymentFailed, ChainError) as exc:
        log.error("resolve refused: %s", exc)
        return 1
    log.info("payout batch resolved id=%d status=%s", args.batch_id, "paid" if args.tx is not None else "failed")
    return 0


async def _release(connection: "asyncpg.Connection", batch_id: int, reason: str) -> None:
    from accounting.payouts import BatchNotPending, has_live_transactions, mark_failed

    if await has_live_transactions(connection, batch_id):
        raise BatchNotPending(
            f"payment batch {batch_id} has a signed transaction that may still be mined: the chain payer settles "
            "it from the chain (`far-mesh payouts run --payer chain`)"
        )
    await mark_failed(connection, batch_id, reason, allowed=("claimed", "submitted"))


async def _resolve_with_transaction(batch_id: int, tx_hash: str, sender: str | None) -> None:
    """Mark a batch paid only once `tx_hash` is confirmed on chain paying exactly its wallets their amounts."""
    import asyncpg

    from accounting.payer import verify_transaction
    from accounting.payouts import (
        BatchNotPending,
        PaymentFailed,
        batch_state,
        has_live_transactions,
        load_batch,
        mark_paid,
    )
    from chain.client import ChainClient
    from chain.settings import PayoutSettings
    from protocol.settings import SettingsError

    settings = PayoutSettings.from_env()
    settings.configure_logging()
    if settings.far_mesh_token_address is None:
        raise SettingsError("FAR_MESH_TOKEN_ADDRESS: required to check a transaction's $FAR transfers")
    connection = await asyncpg.connect(settings.postgres_url)
    try:
        state = await batch_state(connection, batch_id)
        if state.status not in ("claimed", "submitted") or await has_live_transactions(connection, batch_id):
            raise BatchNotPending(
                f"payment batch {batch_id} is {state.status}"
                + (" with the chain payer's own transaction in flight" if state.status == "submitted" else "")
                + ": only an exported (or stranded) batch is resolved by hand"
            )
        expected = _expected_sender(batch_id, recorded=state.sender, given=sender, settings=settings)
        batch = await load_batch(connection, batch_id)
        client = ChainClient(settings.far_mesh_chain_rpc_url, timeout_s=settings.far_mesh_chain_rpc_timeout_s)
        await client.check(settings.far_mesh_chain_id, {"FAR_MESH_TOKEN_ADDRESS": settings.far_mesh_token_address})
        mined = await verify_transaction(
            client,
            batch,
            tx_hash,
            token=settings.far_mesh_token_address,
            sender=expected,
            confirmations=settings.far_mesh_payout_confirmations,
        )
        try:
            await mark_paid(connection, batch_id, mined.tx_hash, mined)
        except asyncpg.UniqueViolationError:
            raise PaymentFailed(f"transaction {tx_hash} already settled another batch") from None
    finally:
        await connection.close()


def _expected_sender(batch_id: int, *, recorded: str | None, given: str | None, settings: "PayoutSettings") -> str:
    """Who must have paid a batch resolved by hand: never "anyone", or a transfer of the same amounts to the same
    wallets from someone else's account (a coincidence, or a payment the treasury never made) would mark the
    batch paid. `--sender` when given, which must agree with the sender the ledger recorded (the chain payer
    signed from it); else that recorded sender; else the treasury, derived from its configured key."""
    from eth_account import Account

    from accounting.payouts import PaymentFailed
    from protocol.settings import SettingsError
    from protocol.wallet import to_checksum_address

    if given is not None and recorded is not None and to_checksum_address(given) != to_checksum_address(recorded):
        raise PaymentFailed(f"payment batch {batch_id} was signed from {recorded}, not from --sender {given}")
    if given is not None or recorded is not None:
        return to_checksum_address(given or recorded)
    try:
        key = settings.treasury_key()
    except ValueError:
        raise SettingsError(
            f"--sender: payment batch {batch_id} records no sender; name the address that paid it, or set "
            "FAR_MESH_TREASURY_KEY_FILE or FAR_MESH_TREASURY_KEY so the treasury's is derived"
        ) from None
    return str(Account.from_key(key.get_secret_value()).address)


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

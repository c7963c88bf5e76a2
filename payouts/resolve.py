"""Settling a batch by hand (`far-mesh payouts resolve`): marking an exported batch paid once its transaction is
confirmed on chain paying exactly its wallets, or releasing one whose money never moved."""

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import asyncpg

    from payouts.settings import PayoutSettings

T = TypeVar("T")

log = logging.getLogger(__name__)


async def release(connection: "asyncpg.Connection", batch_id: int, reason: str) -> None:
    from payouts.batches import BatchNotPending, has_live_transactions, mark_failed

    if await has_live_transactions(connection, batch_id):
        raise BatchNotPending(
            f"payment batch {batch_id} has a signed transaction that may still be mined: the chain payer settles "
            "it from the chain (`far-mesh payouts run --payer chain`)"
        )
    await mark_failed(connection, batch_id, reason, allowed=("claimed", "submitted"))


async def resolve_with_transaction(batch_id: int, tx_hash: str, sender: str | None) -> None:
    """Mark a batch paid only once `tx_hash` is confirmed on chain paying exactly its wallets their amounts."""
    import asyncpg

    from chain.client import ChainClient
    from chain.identity import ChainIdentity
    from payouts.batches import (
        BatchNotPending,
        PaymentFailed,
        batch_state,
        has_live_transactions,
        load_batch,
        mark_paid,
        record_paid_on,
    )
    from payouts.payer import verify_transaction
    from payouts.settings import PayoutSettings
    from protocol.settings import SettingsError

    settings = PayoutSettings.from_env()
    settings.configure_logging()
    if settings.chain_token_address is None:
        raise SettingsError("CHAIN_TOKEN_ADDRESS: required to check a transaction's $FAR transfers")
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
        client = ChainClient(settings.chain_rpc_url, timeout_s=settings.chain_rpc_timeout_s)
        await client.check(settings.chain_id, {"CHAIN_TOKEN_ADDRESS": settings.chain_token_address})
        mined = await verify_transaction(
            client,
            batch,
            tx_hash,
            token=settings.chain_token_address,
            sender=expected,
            confirmations=settings.payout_confirmations,
        )
        chain = ChainIdentity(settings.chain_id, await client.genesis_hash(), str(settings.chain_token_address))
        try:
            async with connection.transaction():
                await record_paid_on(connection, batch_id, chain, expected)
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

    from payouts.batches import PaymentFailed
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
            "PAYOUT_TREASURY_KEY_FILE or PAYOUT_TREASURY_KEY so the treasury's is derived"
        ) from None
    return str(Account.from_key(key.get_secret_value()).address)


async def with_ledger(use: "Callable[[asyncpg.Connection], Awaitable[T]]") -> T:
    import asyncpg

    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    connection = await asyncpg.connect(settings.postgres_url)
    try:
        return await use(connection)
    finally:
        await connection.close()

"""A buyer withdraws unspent prepaid balance to its wallet by signing a withdrawal statement (#26 part 5).

The signed-in wallet asks for a statement naming itself, the amount, this portal's domain and chain id, a server
nonce and the time (`message`), signs it with `personal_sign` as it signed in, and sends it back (`withdraw`).
A session cookie alone moves no money: the wallet's own signature over the amount is the authority, and the
nonce is used up in the transaction that records the withdrawal, so a signature withdraws once.

Recording it, in one ledger transaction: the nonce is consumed; the amount is taken from what is available in the
gateway's Redis account of the wallet (`protocol.balances.WITHDRAW`: the journal's credits minus its charges and
any settles it has not got yet, minus the holds of requests in flight), so admission can never spend it too and a
withdrawal never takes what a running request was promised; then `far_request_withdrawal` (schema/0024) checks
the journal's balance under a per-wallet lock and journals it (`buyer:<wallet>` debited, `withdrawing:<wallet>`
credited). If the ledger refuses after Redis took the amount, Redis is given it back. The chain payer pays it
later (`payouts.withdrawals`), exactly once, in a batch of its own.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis

from portal import nonces
from portal.earnings import far_text
from portal.errors import PortalError, SignatureRefused
from portal.inputs import MAX_AMOUNT_FAR
from portal.registrations import CLOCK_SKEW, Binding
from portal.signing import InvalidSignature, normalize_signature, recover_signer
from protocol import balances, budgets, keys
from protocol.wallet import InvalidWallet, validate_wallet

log = logging.getLogger(__name__)

TITLE: Final = "Far Mesh withdrawal"
FIELDS: Final = ("Wallet", "Amount", "Domain", "Chain ID", "Nonce", "Issued At")
NONCE_TTL: Final = timedelta(minutes=10)

_JOURNAL_FIGURES = """
SELECT coalesce(-sum(amount_far) FILTER (WHERE amount_far < 0), 0) AS credited,
       coalesce(sum(amount_far) FILTER (WHERE amount_far > 0), 0) AS charged
  FROM far_journal_lines WHERE account = $1
"""
_HISTORY = """
SELECT w.id, w.amount_far, w.requested_at, w.paid_at, w.batch_id, b.status AS batch_status,
       b.transaction_ref
  FROM far_withdrawals w LEFT JOIN far_payment_batches b ON b.id = w.batch_id
 WHERE w.wallet = $1
 ORDER BY w.id DESC LIMIT 50
"""


class InsufficientBalance(PortalError):
    """The withdrawal asks for more than the wallet's balance has available (requests in flight hold the rest)."""

    status = 402
    code = "insufficient_balance"


@dataclass(frozen=True)
class WithdrawalStatement:
    wallet: str
    amount_far: Decimal
    domain: str
    chain_id: int
    nonce: str
    issued_at: datetime

    def text(self) -> str:
        values = {
            "Wallet": self.wallet,
            "Amount": f"{far_text(self.amount_far)} FAR",
            "Domain": self.domain,
            "Chain ID": str(self.chain_id),
            "Nonce": self.nonce,
            "Issued At": self.issued_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        return "\n".join([TITLE, *(f"{name}: {values[name]}" for name in FIELDS)])


def parse(text: str) -> WithdrawalStatement:
    """The statement `text` says, or 401 saying why it is not one this portal writes."""
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) != len(FIELDS) + 1 or lines[0] != TITLE:
        raise SignatureRefused(f"expected a '{TITLE}' statement of {len(FIELDS)} fields", field="message")
    values: dict[str, str] = {}
    for name, line in zip(FIELDS, lines[1:], strict=True):
        if not line.startswith(f"{name}: "):
            raise SignatureRefused(f"expected the line '{name}: ...', got {line[:80]!r}", field="message")
        values[name] = line[len(name) + 2 :]
    try:
        wallet = validate_wallet(values["Wallet"])
        amount = Decimal(values["Amount"].removesuffix(" FAR"))
        issued_at = datetime.fromisoformat(values["Issued At"].replace("Z", "+00:00"))
        chain_id = int(values["Chain ID"])
    except (InvalidWallet, ArithmeticError, ValueError) as exc:
        raise SignatureRefused(f"not a withdrawal statement this portal writes: {exc}", field="message") from None
    if (
        not amount.is_finite()
        or not 0 < amount <= MAX_AMOUNT_FAR
        or -int(amount.as_tuple().exponent) > 18
        or issued_at.tzinfo is None
    ):
        raise SignatureRefused("the statement's amount or time is malformed", field="message")
    return WithdrawalStatement(wallet, amount, values["Domain"], chain_id, values["Nonce"], issued_at)


async def message(pool: asyncpg.Pool, binding: Binding, wallet: str, amount_far: Decimal) -> dict[str, str]:
    """A fresh statement for `wallet` to sign, withdrawing `amount_far`."""
    nonce = await nonces.issue(pool, "withdraw", NONCE_TTL)
    statement = WithdrawalStatement(
        wallet, amount_far, binding.domain, binding.chain_id, nonce, datetime.now(UTC).replace(microsecond=0)
    )
    return {"message": statement.text(), "amount_far": far_text(amount_far), "wallet": wallet}


def verified(text: str, signature: str, binding: Binding, signed_in: str) -> tuple[WithdrawalStatement, str]:
    """The statement and its normalised signature, if it is this portal's, current, names the signed-in wallet and
    that wallet signed it; else 401."""
    statement = parse(text)
    if statement.domain != binding.domain or statement.chain_id != binding.chain_id:
        raise SignatureRefused("the statement is for another portal or chain", field="message")
    now = datetime.now(UTC)
    if not now - min(binding.max_age, NONCE_TTL) <= statement.issued_at <= now + CLOCK_SKEW:
        raise SignatureRefused("the statement has expired; ask for a new one", field="message")
    if statement.wallet != signed_in:
        raise SignatureRefused(f"the statement withdraws for {statement.wallet}, not {signed_in}", field="message")
    try:
        normalized = normalize_signature(signature)
        signer = recover_signer(text, normalized)
    except InvalidSignature as exc:
        raise SignatureRefused(str(exc), field="signature") from None
    if signer != statement.wallet:
        raise SignatureRefused(f"signed by {signer}, not {statement.wallet}", field="signature")
    return statement, normalized


async def withdraw(
    pool: asyncpg.Pool, redis: aioredis.Redis, binding: Binding, signed_in: str, text: str, signature: str
) -> dict[str, Any]:
    """Record the signed withdrawal (the module docstring's steps); 402 when the balance does not have it."""
    statement, normalized = verified(text, signature, binding, signed_in)
    wallet, amount = statement.wallet, statement.amount_far
    account_keys = balances.account_keys(wallet)
    withdraw_script = redis.register_script(balances.WITHDRAW)
    undo_script = redis.register_script(balances.UNDO_WITHDRAW)
    nano = budgets.to_nano(amount)
    redis_took = False
    try:
        async with pool.acquire() as connection, connection.transaction():
            try:
                await nonces.consume(connection, statement.nonce, "withdraw")
            except nonces.NonceRejected as exc:
                raise SignatureRefused(str(exc), field="message") from None
            await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('far_withdraw:' || $1, 0))", wallet)
            figures = await connection.fetchrow(_JOURNAL_FIGURES, f"buyer:{wallet}")
            assert figures is not None
            taken = await withdraw_script(
                keys=account_keys,
                args=[
                    int(datetime.now(UTC).timestamp() * 1000),
                    nano,
                    balances.to_nano_down(figures["credited"]),
                    budgets.to_nano(figures["charged"]),
                    budgets.ACCOUNT_TTL_S,
                ],
            )
            if int(taken[0]) != 1:
                available = budgets.from_nano(max(0, int(taken[1])))
                raise InsufficientBalance(
                    f"withdrawing {far_text(amount)} FAR needs that much available, but {wallet} has "
                    f"{far_text(available)} FAR available (requests in flight hold the rest)",
                    field="message",
                )
            redis_took = True
            withdrawal_id = await connection.fetchval(
                "SELECT far_request_withdrawal($1, $2, $3, $4, $5)", wallet, amount, statement.nonce, text, normalized
            )
    except asyncpg.CheckViolationError as exc:  # the journal's balance, under the wallet's lock, has less
        if redis_took:
            await undo_script(keys=[keys.balance_account(wallet)], args=[nano])
        raise InsufficientBalance(str(exc).split("\n")[0], field="message") from None
    except BaseException:
        if redis_took:  # the ledger did not record it: give Redis the amount back
            await undo_script(keys=[keys.balance_account(wallet)], args=[nano])
        raise
    log.info("withdrawal requested id=%d wallet=%s far=%s", withdrawal_id, wallet, amount)
    return {"id": withdrawal_id, "wallet": wallet, "amount_far": far_text(amount), "status": "requested"}


async def history(db: asyncpg.Pool | asyncpg.Connection, wallet: str) -> list[dict[str, Any]]:
    """The wallet's withdrawals, newest first: requested, being paid (a batch in flight), or paid (its transaction)."""
    out = []
    for row in await db.fetch(_HISTORY, wallet):
        status = "paid" if row["paid_at"] is not None else ("paying" if row["batch_id"] is not None else "requested")
        out.append(
            {
                "id": row["id"],
                "amount_far": far_text(row["amount_far"]),
                "requested_at": row["requested_at"].isoformat(),
                "status": status,
                "paid_at": row["paid_at"].isoformat() if row["paid_at"] else None,
                "transaction": row["transaction_ref"] if row["paid_at"] else None,
            }
        )
    return out

"""`far-mesh deposits watch|make|balance`: buyers' $FAR deposits on chain and the balances they credit.

`watch` runs the deposit watcher (accounting.deposits); `make` deposits from a key, approving the deposit
contract first (for the local chain, and for trying a deployment out); `balance` reads a buyer's prepaid
balance from the journal. Keys come from files or ganache's public test wallet, never from the command line.
"""

import argparse
import asyncio
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

from chain.commands import positive_far

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    deposits = subparsers.add_parser("deposits", help="buyers' $FAR deposits on chain and their prepaid balances")
    actions = deposits.add_subparsers(dest="deposits_command", required=True, metavar="ACTION")

    watch = actions.add_parser(
        "watch", help="credit deposits DEPOSIT_CONFIRMATIONS deep to buyers' balances, until Ctrl-C"
    )
    watch.add_argument("--once", action="store_true", help="catch up with the chain once, then exit")
    watch.set_defaults(handler=run_watch)

    make = actions.add_parser("make", help="approve the deposit contract and deposit $FAR from a key")
    make.add_argument("--amount", type=positive_far, required=True, help="$FAR to deposit, e.g. 12.5")
    source = make.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-file", type=Path, help="file holding the depositing wallet's private key (hex)")
    source.add_argument(
        "--dev-account", type=int, metavar="INDEX", help="ganache's deterministic account INDEX (local chain only)"
    )
    make.set_defaults(handler=run_make)

    balance = actions.add_parser("balance", help="a buyer's prepaid balance, from the ledger's journal")
    balance.add_argument("wallets", nargs="+", metavar="WALLET")
    balance.set_defaults(handler=show_balances)


def run_watch(args: argparse.Namespace) -> int:
    from accounting.chain_settings import DepositSettings
    from accounting.deposits import DepositsNotConfigured, DepositWatcher, watch_deposits
    from protocol.settings import SettingsError

    settings = DepositSettings.from_env()
    settings.configure_logging()
    if settings.deposit_contract_address is None and not args.once:
        return _idle_without_contract()

    async def once() -> None:
        import asyncpg

        watcher = await DepositWatcher.connect(settings)
        connection = await asyncpg.connect(settings.postgres_url, timeout=10)
        try:
            results = await watcher.catch_up(connection)
        finally:
            await connection.close()
        scanned = results[-1].last_block if results else "nothing new"
        log.info("deposits scanned to block %s", scanned)

    try:
        asyncio.run(once() if args.once else watch_deposits(settings))
    except DepositsNotConfigured as exc:
        raise SettingsError(str(exc)) from None
    return 0


def _idle_without_contract() -> int:
    """Credit nothing until SIGTERM, having said why. The Procfile runs the watcher beside everything else, also
    where no chain is configured (a plain `honcho start`): exiting there would make honcho stop every process."""
    from chain.commands import idle_until_stopped

    log.warning(
        "deposits watch: no deposit contract configured (DEPOSIT_CONTRACT_ADDRESS unset): crediting "
        "nothing; `far-mesh chain deploy` prints the settings to set"
    )
    idle_until_stopped()
    log.info("deposits watch stopped")
    return 0


def _account(args: argparse.Namespace) -> Any:
    from eth_account import Account

    from chain.node import dev_account
    from protocol.settings import SettingsError

    if args.dev_account is not None:
        return dev_account(args.dev_account)
    try:
        return Account.from_key(args.key_file.read_text(encoding="ascii").strip())
    except OSError as exc:
        raise SettingsError(f"--key-file: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise SettingsError("--key-file: not a private key (64 hexadecimal digits)") from None


def run_make(args: argparse.Namespace) -> int:
    from web3 import Web3

    from chain.artifacts import load_artifact
    from chain.commands import _web3
    from chain.deposits import make_deposit
    from chain.node import DEV_CHAIN_ID
    from chain.settings import DepositChainSettings
    from chain.units import format_far, to_base_units
    from protocol.settings import SettingsError

    settings = DepositChainSettings.from_env()
    settings.configure_logging()
    contract = settings.deposit_contract_address
    if contract is None:
        raise SettingsError("DEPOSIT_CONTRACT_ADDRESS is not set (`far-mesh chain deploy` prints it)")
    if args.dev_account is not None and settings.chain_id != DEV_CHAIN_ID:
        raise SettingsError(f"--dev-account is for the local chain (CHAIN_ID={DEV_CHAIN_ID}) only")
    buyer = _account(args)
    w3 = _web3(settings)
    token = w3.eth.contract(address=contract, abi=load_artifact("FarDeposit").abi).functions.token().call()
    units = to_base_units(args.amount)
    held = w3.eth.contract(address=token, abi=load_artifact("FarToken").abi).functions.balanceOf(buyer.address).call()
    if held < units:
        log.error("%s holds %s FAR, less than the %s FAR to deposit", buyer.address, format_far(held), args.amount)
        return 1
    receipt = make_deposit(w3, buyer, token, contract, units)
    print(
        f"{buyer.address} deposited {args.amount} FAR in {Web3.to_hex(receipt['transactionHash'])} "
        f"(block {receipt['blockNumber']}); credited once DEPOSIT_CONFIRMATIONS deep"
    )
    return 0


def show_balances(args: argparse.Namespace) -> int:
    import asyncpg

    from accounting.journal import buyer_balance
    from protocol.wallet import InvalidWallet, validate_wallet
    from schema.settings import LedgerSettings

    settings = LedgerSettings.from_env()
    settings.configure_logging()
    try:
        wallets = [validate_wallet(w) for w in args.wallets]
    except InvalidWallet as exc:
        log.error("%s", exc)
        return 2

    async def read() -> list[Decimal]:
        connection = await asyncpg.connect(settings.postgres_url, timeout=10)
        try:
            return [await buyer_balance(connection, w) for w in wallets]
        finally:
            await connection.close()

    print("wallet\tbalance_far")
    for wallet, amount in zip(wallets, asyncio.run(read()), strict=True):
        text = format(amount, "f")  # exact: normalize() would round to the context's 28 digits
        print(f"{wallet}\t{text.rstrip('0').rstrip('.') if '.' in text else text}")
    return 0

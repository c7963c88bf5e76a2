"""`far-mesh chain compile|node|deploy|balance|approve`: the chain room's commands.

`node` runs a local ganache for development (what `far-mesh dev` starts on its own); `deploy` puts the
$FAR token and the batch contract on a chain and prints the settings that name them; `balance` reads what
wallets hold. Keys are read from files or the environment, never from the command line (where `ps` shows
them), and never printed.
"""

import argparse
import asyncio
import logging
import signal
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    chain = subparsers.add_parser("chain", help="the $FAR contracts and the EVM node payouts use")
    actions = chain.add_subparsers(dest="chain_command", required=True, metavar="ACTION")

    compile_ = actions.add_parser("compile", help="recompile chain/contracts with solc-js into chain/artifacts")
    compile_.set_defaults(handler=compile_contracts)

    node = actions.add_parser("node", help="run a local ganache on 127.0.0.1 (chain id 31337) until Ctrl-C")
    node.add_argument("--port", type=int, default=8545)
    node.add_argument("--block-time", type=float, default=1.0, help="seconds per block; 0: a block per transaction")
    node.add_argument("--log", type=Path, default=Path(".cache/devstack/ganache.log"))
    node.set_defaults(handler=run_node)

    deploy = actions.add_parser(
        "deploy", help="deploy the token and batch contract; print CHAIN_TOKEN_ADDRESS and friends"
    )
    deploy.add_argument(
        "--supply-far", type=positive_far, default=Decimal(1_000_000_000), help="$FAR minted to the treasury"
    )
    deploy.add_argument(
        "--dev",
        action="store_true",
        help="on a development chain: ganache's deterministic accounts deploy (0) and hold the treasury (1)",
    )
    deploy.set_defaults(handler=deploy_contracts)

    balance = actions.add_parser("balance", help="the $FAR (and gas token) each wallet holds")
    balance.add_argument("wallets", nargs="+", metavar="WALLET")
    balance.set_defaults(handler=show_balances)

    approve = actions.add_parser("approve", help="let the batch contract spend the treasury's $FAR (once)")
    approve.set_defaults(handler=approve_batch_contract)


def positive_far(text: str) -> Decimal:
    """An argparse type: a positive, finite amount of $FAR (every command that moves money takes one)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal amount") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive amount")
    return value


def whole_number(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a block, a count of wallets)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_far(text: str) -> Decimal:
    """An argparse type: an amount of $FAR that may be zero (a threshold, an opening balance)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal amount such as 1.5") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative amount")
    return value


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


def compile_contracts(args: argparse.Namespace) -> int:
    from chain.artifacts import compile_sources, write_artifacts

    for path in write_artifacts(compile_sources()):
        print(path)
    return 0


def run_node(args: argparse.Namespace) -> int:
    from chain.node import LocalChain

    node = LocalChain(args.port, args.log, block_time_s=args.block_time)
    node.start()
    print(f"ganache on {node.url} (chain id {node.chain_id}); log: {args.log}", flush=True)
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        node.stop()
    return 0


def _settings() -> Any:
    from chain.settings import ChainSettings

    settings = ChainSettings.from_env()
    settings.configure_logging()
    return settings


def _treasury(settings: Any) -> Any:
    from eth_account import Account

    from protocol.settings import SettingsError

    try:
        return Account.from_key(settings.treasury_key().get_secret_value())
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _web3(settings: Any) -> Any:
    from web3 import Web3

    from chain.client import redacted

    w3 = Web3(Web3.HTTPProvider(settings.chain_rpc_url, request_kwargs={"timeout": 30}))
    try:
        chain_id = w3.eth.chain_id
    except OSError as exc:
        log.error("no JSON-RPC node answers at %s: %s", redacted(settings.chain_rpc_url), type(exc).__name__)
        sys.exit(1)
    if chain_id != settings.chain_id:
        log.error("the node serves chain id %d, CHAIN_ID is %d", chain_id, settings.chain_id)
        sys.exit(1)
    return w3


def deploy_contracts(args: argparse.Namespace) -> int:
    from chain.deploy import deploy
    from chain.node import dev_account

    settings = _settings()
    w3 = _web3(settings)
    if args.dev:
        deployer, treasury = dev_account(0), dev_account(1)
    else:
        deployer = treasury = _treasury(settings)
    deployment = deploy(w3, deployer, treasury, supply_far=args.supply_far)
    for name, value in deployment.env().items():
        print(f"{name}={value}")
    print(f"# treasury {deployment.treasury} holds {args.supply_far} FAR and approved the batch contract")
    return 0


def show_balances(args: argparse.Namespace) -> int:
    from web3 import Web3

    from chain.artifacts import load_artifact
    from chain.units import format_far
    from protocol.wallet import InvalidWallet, validate_wallet

    settings = _settings()
    if settings.chain_token_address is None:
        log.error("CHAIN_TOKEN_ADDRESS is not set")
        return 2
    w3 = _web3(settings)
    token = w3.eth.contract(address=settings.chain_token_address, abi=load_artifact("FarToken").abi)
    print("wallet\tfar\tgas")
    for wallet in args.wallets:
        try:
            address = validate_wallet(wallet)
        except InvalidWallet as exc:
            log.error("%s: %s", wallet, exc)
            return 2
        far = token.functions.balanceOf(address).call()
        print(f"{address}\t{format_far(far)}\t{format_far(w3.eth.get_balance(Web3.to_checksum_address(address)))}")
    return 0


def approve_batch_contract(args: argparse.Namespace) -> int:
    from chain.deploy import approve

    settings = _settings()
    if settings.chain_token_address is None or settings.chain_batch_contract_address is None:
        log.error("CHAIN_TOKEN_ADDRESS and CHAIN_BATCH_CONTRACT_ADDRESS must be set")
        return 2
    approve(_web3(settings), _treasury(settings), settings.chain_token_address, settings.chain_batch_contract_address)
    log.info("treasury approved the batch contract")
    return 0

"""The chain of `far-mesh dev`: a local EVM node found or started, the $FAR contracts on it, and the payer's
settings, so that `make run` pays the local swarm's providers on chain like production would.

CHAIN_RPC_URL is honoured when set; otherwise a node answering on 127.0.0.1:8545 with chain id 31337
is used, and a ganache (a block a second) is started under the state directory when none does. That ganache
keeps its chain in `ganache-db/`, so the next `far-mesh dev` reloads it: the batches the ledger paid, or has in
flight, on it are still there, and the treasury's nonces go on from where they were. (Delete `ganache-db/` for
a fresh chain: the ledger, which records each batch's chain by its genesis hash, then pays on the new chain,
and the batches of the old one never collide with it.) The contracts (token, batch and deposit contracts) are
deployed once per chain and remembered in `chain.json` by the chain's genesis hash; the treasury is ganache's
deterministic account 1, whose public test key is written to `treasury.key` for the payer. Development only.

Payouts pay a node's *registered* wallet only (docs/portal.md). The providers' wallets are deterministic
accounts whose keys are public test keys, so `register_providers` registers the local swarm's servers to the
wallets they announce with statements those wallets really signed, as the portal would after a browser
wallet's `personal_sign`; without it their earnings are held.
"""

import asyncio
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.services import Service
from mesh.ports import free_port, free_port_to_keep

if TYPE_CHECKING:
    from web3 import Web3

LOCAL_NODE = "http://127.0.0.1:8545"
PROVIDER_ACCOUNTS = (10, 11, 12)
"""Deterministic accounts the local swarm's servers announce as their wallets (so the README can name them)."""
BUYER_ACCOUNT = 2
"""The deterministic account the development API key bills: a buyer with a key, so it can deposit for real."""
SUPPLY_FAR = Decimal(1_000_000)


@dataclass(frozen=True)
class DevChain:
    node: Service
    env: dict[str, str]
    """The payer's settings: node, contracts, treasury key file, and quick rounds for development."""
    provider_wallets: tuple[str, ...]
    buyer_wallet: str
    """The development buyer (BUYER_ACCOUNT), whose prepaid balance `far-mesh dev` funds by a real deposit."""


def resolve_chain(state_dir: Path) -> DevChain:
    from web3 import Web3

    from chain.node import DEV_CHAIN_ID, LocalChain, answers, dev_account

    configured = os.environ.get("CHAIN_RPC_URL")
    if configured:
        node = Service(configured, "configured")
    elif answers(LOCAL_NODE) == DEV_CHAIN_ID:
        node = Service(LOCAL_NODE, "local")
    else:
        ganache = LocalChain(free_port(), state_dir / "ganache.log", block_time_s=1, db_path=state_dir / "ganache-db")
        ganache.start()
        node = Service(ganache.url, "embedded", ganache.stop)
    try:
        w3 = Web3(Web3.HTTPProvider(node.url))
        token, batch, deposit = _deployed(w3, state_dir / "chain.json")
        key_file = state_dir / "treasury.key"
        key_file.write_text("0x" + dev_account(1).key.hex())
        key_file.chmod(0o600)
    except BaseException:
        node.stop()
        raise
    env = {
        "CHAIN_RPC_URL": node.url,
        "CHAIN_ID": str(DEV_CHAIN_ID),
        "CHAIN_TOKEN_ADDRESS": token,
        "CHAIN_BATCH_CONTRACT_ADDRESS": batch,
        "DEPOSIT_CONTRACT_ADDRESS": deposit,
        "DEPOSIT_CONFIRMATIONS": "2",
        "PAYOUT_TREASURY_KEY_FILE": str(key_file),
        "PAYOUT_INTERVAL_S": "10",
        "PAYOUT_MIN_FAR": "0.000001",
        "PAYOUT_CONFIRMATIONS": "2",
        "PAYOUT_METRICS_PORT": str(free_port_to_keep()),
    }
    return DevChain(
        node, env, tuple(dev_account(i).address for i in PROVIDER_ACCOUNTS), dev_account(BUYER_ACCOUNT).address
    )


def fund_buyer(chain: DevChain, amount_far: Decimal) -> str:
    """The development buyer deposits `amount_far` through the FarDeposit contract (approve, then deposit), the
    treasury first sending it the $FAR, since the whole supply is minted to the treasury; returns the deposit's
    transaction hash. The deposit watcher credits it once it is DEPOSIT_CONFIRMATIONS deep. The $FAR goes
    back where it came from, but the transfer out is not a payout the ledger knows: `ledger reconcile
    --opening-far` on this chain counts it as the treasury's transfer out (development only)."""
    from web3 import Web3

    from chain.deploy import transfer
    from chain.deposits import make_deposit
    from chain.node import dev_account
    from chain.units import to_base_units

    w3 = Web3(Web3.HTTPProvider(chain.node.url))
    units = to_base_units(amount_far)
    token = chain.env["CHAIN_TOKEN_ADDRESS"]
    buyer = dev_account(BUYER_ACCOUNT)
    transfer(w3, dev_account(1), token, buyer.address, units)
    receipt = make_deposit(w3, buyer, token, chain.env["DEPOSIT_CONTRACT_ADDRESS"], units)
    return Web3.to_hex(receipt["transactionHash"])


def _deployed(w3: "Web3", record: Path) -> tuple[str, str, str]:
    """The contracts this chain already has (from `record`, by the chain's genesis hash: the embedded node's
    port changes from run to run, its chain does not), or freshly deployed ones; a chain recorded before
    deposits existed gets its deposit contract added."""
    from chain.deploy import deploy, deploy_deposit
    from chain.node import dev_account

    genesis = w3.eth.get_block(0)["hash"].to_0x_hex().lower()
    if record.exists():
        known = json.loads(record.read_text())
        if known.get("genesis") == genesis and all(
            len(w3.eth.get_code(known[k])) > 0 for k in ("token", "batch_contract")
        ):
            if not known.get("deposit_contract") or len(w3.eth.get_code(known["deposit_contract"])) == 0:
                known["deposit_contract"] = deploy_deposit(w3, dev_account(0), known["token"], dev_account(1).address)
                record.write_text(json.dumps(known))
            return known["token"], known["batch_contract"], known["deposit_contract"]
    deployment = deploy(w3, dev_account(0), dev_account(1), supply_far=SUPPLY_FAR)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(
        json.dumps(
            {
                "genesis": genesis,
                "token": deployment.token,
                "batch_contract": deployment.batch_contract,
                "deposit_contract": deployment.deposit_contract,
            }
        )
    )
    return deployment.token, deployment.batch_contract, deployment.deposit_contract


def register_providers(postgres_url: str, servers: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Register each (peer id, announced wallet) whose wallet is a provider account to that wallet, signed by
    its key (a repeated start finds them 'unchanged'); returns {peer id: wallet} of those registered."""
    return asyncio.run(_register_providers(postgres_url, list(servers)))


async def _register_providers(postgres_url: str, servers: list[tuple[str, str | None]]) -> dict[str, str]:
    import asyncpg
    from eth_account.messages import encode_defunct

    from chain.node import DEV_CHAIN_ID, dev_account
    from portal.registrations import Binding, new_statement

    accounts = {str(account.address): account for account in (dev_account(i) for i in PROVIDER_ACCOUNTS)}
    binding = Binding(domain="localhost", chain_id=DEV_CHAIN_ID, max_age=timedelta(minutes=5))
    registered: dict[str, str] = {}
    connection = await asyncpg.connect(postgres_url)
    try:
        for peer_id, wallet in servers:
            account = accounts.get(wallet or "")
            if account is None:
                continue
            statement = new_statement(
                "register", binding, node_id=peer_id, wallet=account.address, nonce=secrets.token_hex(8)
            ).text()
            signature = account.sign_message(encode_defunct(text=statement)).signature.hex()
            await connection.fetchval(
                "SELECT far_register_node($1, $2, $3, $4)",
                peer_id,
                account.address,
                statement,
                "0x" + signature.removeprefix("0x"),
            )
            registered[peer_id] = account.address
    finally:
        await connection.close()
    return registered


def write_operator_env(chain: DevChain, postgres_url: str, path: Path) -> Path:
    """The settings an operator's shell needs to look at payouts (`payouts list`, `chain balance`): the
    ledger, the node and the contracts; not the treasury key."""
    keys = (
        "CHAIN_RPC_URL",
        "CHAIN_ID",
        "CHAIN_TOKEN_ADDRESS",
        "CHAIN_BATCH_CONTRACT_ADDRESS",
        "DEPOSIT_CONTRACT_ADDRESS",
    )
    lines = [f"POSTGRES_URL={postgres_url}", *(f"{key}={chain.env[key]}" for key in keys)]
    path.write_text("\n".join(lines) + "\n")
    return path

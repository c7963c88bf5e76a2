"""The chain of `far-mesh dev`: a local EVM node found or started, the $FAR contracts on it, and the payer's
settings, so that `make run` pays the local swarm's providers on chain like production would.

FAR_MESH_CHAIN_RPC_URL is honoured when set; otherwise a node answering on 127.0.0.1:8545 with chain id 31337
is used, and a ganache (a block a second) is started under the state directory when none does. The
contracts are deployed once per node and remembered in `chain.json`; the treasury is ganache's deterministic
account 1, whose public test key is written to `treasury.key` for the payer. Development only.
"""

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.ports import free_port
from devstack.services import Service

if TYPE_CHECKING:
    from web3 import Web3

LOCAL_NODE = "http://127.0.0.1:8545"
PROVIDER_ACCOUNTS = (10, 11, 12)
"""Deterministic accounts the local swarm's servers announce as their wallets (so the README can name them)."""
SUPPLY_FAR = Decimal(1_000_000)


@dataclass(frozen=True)
class DevChain:
    node: Service
    env: dict[str, str]
    """The payer's settings: node, contracts, treasury key file, and quick rounds for development."""
    provider_wallets: tuple[str, ...]


def resolve_chain(state_dir: Path) -> DevChain:
    from web3 import Web3

    from chain.node import DEV_CHAIN_ID, LocalChain, answers, dev_account

    configured = os.environ.get("FAR_MESH_CHAIN_RPC_URL")
    if configured:
        node = Service(configured, "configured")
    elif answers(LOCAL_NODE) == DEV_CHAIN_ID:
        node = Service(LOCAL_NODE, "local")
    else:
        ganache = LocalChain(free_port(), state_dir / "ganache.log", block_time_s=1)
        ganache.start()
        node = Service(ganache.url, "embedded", ganache.stop)
    try:
        w3 = Web3(Web3.HTTPProvider(node.url))
        token, batch = _deployed(w3, state_dir / "chain.json", node.url)
        key_file = state_dir / "treasury.key"
        key_file.write_text("0x" + dev_account(1).key.hex())
        key_file.chmod(0o600)
    except BaseException:
        node.stop()
        raise
    env = {
        "FAR_MESH_CHAIN_RPC_URL": node.url,
        "FAR_MESH_CHAIN_ID": str(DEV_CHAIN_ID),
        "FAR_MESH_TOKEN_ADDRESS": token,
        "FAR_MESH_BATCH_CONTRACT_ADDRESS": batch,
        "FAR_MESH_TREASURY_KEY_FILE": str(key_file),
        "FAR_MESH_PAYOUT_INTERVAL_S": "10",
        "FAR_MESH_PAYOUT_MIN_FAR": "0.000001",
        "FAR_MESH_PAYOUT_CONFIRMATIONS": "2",
        "FAR_MESH_PAYOUT_METRICS_PORT": str(free_port()),
    }
    return DevChain(node, env, tuple(dev_account(i).address for i in PROVIDER_ACCOUNTS))


def _deployed(w3: "Web3", record: Path, url: str) -> tuple[str, str]:
    """The contracts this node already has (from `record`), or freshly deployed ones."""
    from chain.deploy import deploy
    from chain.node import dev_account

    if record.exists():
        known = json.loads(record.read_text())
        if known.get("url") == url and all(len(w3.eth.get_code(known[k])) > 0 for k in ("token", "batch_contract")):
            return known["token"], known["batch_contract"]
    deployment = deploy(w3, dev_account(0), dev_account(1), supply_far=SUPPLY_FAR)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"url": url, "token": deployment.token, "batch_contract": deployment.batch_contract}))
    return deployment.token, deployment.batch_contract


def write_operator_env(chain: DevChain, postgres_url: str, path: Path) -> Path:
    """The settings an operator's shell needs to look at payouts (`payouts list`, `chain balance`): the
    ledger, the node and the contracts; not the treasury key."""
    keys = ("FAR_MESH_CHAIN_RPC_URL", "FAR_MESH_CHAIN_ID", "FAR_MESH_TOKEN_ADDRESS", "FAR_MESH_BATCH_CONTRACT_ADDRESS")
    lines = [f"POSTGRES_URL={postgres_url}", *(f"{key}={chain.env[key]}" for key in keys)]
    path.write_text("\n".join(lines) + "\n")
    return path

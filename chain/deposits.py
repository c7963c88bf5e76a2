"""Deposits on chain: the `Deposited(wallet, amount)` events of the FarDeposit contract, read back from logs,
and making one (approve, then deposit) with a local key.

Nothing here touches the ledger: `accounting.deposits` decides when a log is deep enough to credit, and
credits it once (docs/deposits.md).
"""

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.types import TxReceipt

from chain.artifacts import load_artifact
from chain.deploy import send

DEPOSITED_TOPIC = Web3.keccak(text="Deposited(address,uint256)").to_0x_hex()


class NotADeposit(ValueError):
    """A log that is not a FarDeposit `Deposited` event (another event, or a malformed one)."""


@dataclass(frozen=True)
class DepositLog:
    """One `Deposited` event where the node saw it: the block (number and hash) may change in a reorganisation,
    the transaction hash and log index identify it on the chain it is on."""

    tx_hash: str
    """`0x` and 64 lowercase hex digits."""
    log_index: int
    block_number: int
    block_hash: str
    """`0x` and 64 lowercase hex digits."""
    wallet: str
    """The depositor, checksummed: the buyer whose balance is credited."""
    units: int
    """Token base units (18 decimals)."""


def parse_deposit_log(entry: dict[str, Any]) -> DepositLog:
    """A `Deposited` event from one eth_getLogs entry; NotADeposit for anything else."""
    topics = [HexBytes(t).to_0x_hex() for t in entry.get("topics", ())]
    data = HexBytes(entry.get("data", b""))
    if len(topics) != 2 or topics[0] != DEPOSITED_TOPIC or len(data) != 32:
        raise NotADeposit(f"log {entry.get('logIndex')} of {entry.get('transactionHash')!r} is not a Deposited event")
    return DepositLog(
        tx_hash=HexBytes(entry["transactionHash"]).to_0x_hex().lower(),
        log_index=int(entry["logIndex"]),
        block_number=int(entry["blockNumber"]),
        block_hash=HexBytes(entry["blockHash"]).to_0x_hex().lower(),
        wallet=Web3.to_checksum_address(HexBytes(topics[1])[-20:]),
        units=int.from_bytes(data, "big"),
    )


def make_deposit(w3: Web3, buyer: LocalAccount, token: str, deposit_contract: str, units: int) -> TxReceipt:
    """Approve the deposit contract for exactly `units` of the buyer's $FAR, then deposit them (two
    transactions, each waited for); returns the deposit's receipt. RuntimeError if either reverts."""
    token_contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=load_artifact("FarToken").abi)
    spender = Web3.to_checksum_address(deposit_contract)
    send(w3, buyer, {"to": token_contract.address, "data": token_contract.encode_abi("approve", [spender, units])})
    contract = w3.eth.contract(address=spender, abi=load_artifact("FarDeposit").abi)
    return send(w3, buyer, {"to": spender, "data": contract.encode_abi("deposit", [units])})

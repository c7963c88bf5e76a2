"""Batch transfers on chain: the `payBatch` call that pays a batch's wallets, its signing, and reading back
from a receipt which $FAR moved where (to confirm our own transactions and verify an operator's).

A batch is paid by exactly one transaction of exactly one nonce; signing is local (eth-account), the key
never leaves the process and is never printed.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3

from chain.artifacts import load_artifact
from chain.client import Receipt
from chain.fees import Fees

TRANSFER_TOPIC = Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex()


@dataclass(frozen=True)
class Payment:
    """One wallet paid by a batch: the amount in token base units (an integer, 18 decimals)."""

    wallet: str
    units: int


@dataclass(frozen=True)
class SignedTransfer:
    tx_hash: str
    raw_tx: str
    nonce: int
    gas_limit: int
    fees: Fees


@dataclass(frozen=True)
class Transfer:
    sender: str
    recipient: str
    units: int


class TransferMismatch(ValueError):
    """A transaction does not move exactly the batch's payments."""


def pay_batch_data(token: str, payments: Sequence[Payment]) -> str:
    """The calldata of `FarBatchTransfer.payBatch(token, recipients, amounts)`."""
    contract = Web3().eth.contract(abi=load_artifact("FarBatchTransfer").abi)
    recipients = [Web3.to_checksum_address(p.wallet) for p in payments]
    data: str = contract.encode_abi(
        "payBatch", [Web3.to_checksum_address(token), recipients, [p.units for p in payments]]
    )
    return data


def sign_transfer(
    treasury: LocalAccount, *, chain_id: int, nonce: int, to: str, data: str, gas_limit: int, fees: Fees
) -> SignedTransfer:
    """An EIP-1559 transaction, signed locally."""
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": Web3.to_checksum_address(to),
        "value": 0,
        "data": data,
        "gas": gas_limit,
        "maxFeePerGas": fees.max_fee_per_gas,
        "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
    }
    signed = treasury.sign_transaction(tx)
    return SignedTransfer(
        tx_hash=signed.hash.to_0x_hex(),
        raw_tx=HexBytes(signed.raw_transaction).to_0x_hex(),
        nonce=nonce,
        gas_limit=gas_limit,
        fees=fees,
    )


def _address(topic: Any) -> str:
    return Web3.to_checksum_address(HexBytes(topic)[-20:])


def parse_transfer_log(entry: dict[str, Any]) -> Transfer:
    """One ERC-20 `Transfer(from, to, value)` log (as `eth_getLogs` or a receipt gives it)."""
    topics = entry["topics"]
    return Transfer(_address(topics[1]), _address(topics[2]), int.from_bytes(HexBytes(entry["data"]), "big"))


def transfers_in(receipt: Receipt, token: str) -> list[Transfer]:
    """Every ERC-20 Transfer event `token` emitted in the transaction."""
    token_address = Web3.to_checksum_address(token)
    moved = []
    for entry in receipt.logs:
        topics = [HexBytes(t).to_0x_hex() for t in entry["topics"]]
        if Web3.to_checksum_address(entry["address"]) != token_address or not topics or topics[0] != TRANSFER_TOPIC:
            continue
        moved.append(Transfer(_address(topics[1]), _address(topics[2]), int.from_bytes(HexBytes(entry["data"]), "big")))
    return moved


def check_transfers(receipt: Receipt, token: str, sender: str | None, payments: Sequence[Payment]) -> str:
    """Raise TransferMismatch unless the transaction moved exactly `payments` of `token`, all from one sender
    (`sender` when given); returns that sender."""
    moved = transfers_in(receipt, token)
    senders = {t.sender for t in moved}
    if len(senders) != 1:
        raise TransferMismatch(f"transaction {receipt.tx_hash} moves $FAR from {len(senders)} senders, not one")
    [actual_sender] = senders
    if sender is not None and actual_sender != Web3.to_checksum_address(sender):
        raise TransferMismatch(f"transaction {receipt.tx_hash} pays from {actual_sender}, not the treasury {sender}")
    got: Counter[tuple[str, int]] = Counter((t.recipient, t.units) for t in moved)
    want: Counter[tuple[str, int]] = Counter((str(Web3.to_checksum_address(p.wallet)), p.units) for p in payments)
    if got != want:
        missing, extra = want - got, got - want
        raise TransferMismatch(
            f"transaction {receipt.tx_hash} does not pay the batch: {sum(missing.values())} payments missing "
            f"(e.g. {next(iter(missing), None)}), {sum(extra.values())} unexpected (e.g. {next(iter(extra), None)})"
        )
    return actual_sender

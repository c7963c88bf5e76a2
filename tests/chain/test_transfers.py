"""Reading a receipt back: which $FAR moved where, and whether that is exactly what a batch pays."""

import asyncio

import pytest
from web3 import Web3

from chain.client import ChainClient, Receipt
from chain.deploy import send
from chain.transfers import Payment, TransferMismatch, check_transfers, pay_batch_data, transfers_in
from tests.fixtures.chain import FarDeployment

WALLETS = [Web3.to_checksum_address(f"0x{0xA11CE:08x}{i:032x}") for i in range(3)]


def paid_receipt(d: FarDeployment, payments: list[Payment]) -> Receipt:
    tx = send(
        d.w3, d.treasury, {"to": d.deployment.batch_contract, "data": pay_batch_data(d.deployment.token, payments)}
    )
    receipt = asyncio.run(ChainClient(d.url).receipt(tx["transactionHash"].to_0x_hex()))
    assert receipt is not None
    return receipt


def test_a_batch_receipt_shows_one_transfer_per_wallet_from_the_treasury(far_deployment: FarDeployment) -> None:
    payments = [Payment(w, 10**18 * (i + 1) + 7) for i, w in enumerate(WALLETS)]
    receipt = paid_receipt(far_deployment, payments)
    moved = transfers_in(receipt, far_deployment.deployment.token)
    assert [(t.sender, t.recipient, t.units) for t in moved] == [
        (far_deployment.treasury.address, p.wallet, p.units) for p in payments
    ]
    assert check_transfers(receipt, far_deployment.deployment.token, far_deployment.treasury.address, payments) == (
        far_deployment.treasury.address
    )
    assert check_transfers(receipt, far_deployment.deployment.token, None, list(reversed(payments)))  # order-free


def test_a_receipt_that_pays_otherwise_does_not_match(far_deployment: FarDeployment) -> None:
    payments = [Payment(w, 5) for w in WALLETS]
    receipt = paid_receipt(far_deployment, payments)
    token = far_deployment.deployment.token
    with pytest.raises(TransferMismatch, match="1 payments missing"):
        check_transfers(receipt, token, None, [*payments[:2], Payment(WALLETS[2], 6)])
    with pytest.raises(TransferMismatch, match="1 unexpected"):
        check_transfers(receipt, token, None, payments[:2])
    with pytest.raises(TransferMismatch, match="not the treasury"):
        check_transfers(receipt, token, WALLETS[0], payments)
    with pytest.raises(TransferMismatch, match="from 0 senders"):  # another token's transfers are not $FAR
        check_transfers(receipt, far_deployment.deployment.batch_contract, None, payments)

"""FarDeposit on a real node: a deposit moves the buyer's $FAR to the treasury and names the buyer, or reverts."""

from decimal import Decimal

import pytest
from web3.exceptions import ContractLogicError

from chain.artifacts import load_artifact
from chain.client import Receipt
from chain.deploy import send
from chain.deposits import NotADeposit, make_deposit, parse_deposit_log
from chain.transfers import transfers_in
from chain.units import to_base_units
from tests.fixtures.chain import TREASURY_FAR, FarDeployment
from tests.fixtures.deposits import funded_buyer


def test_a_deposit_moves_the_amount_to_the_treasury_and_its_event_names_the_buyer(
    far_deployment: FarDeployment,
) -> None:
    d = far_deployment
    buyer = funded_buyer(d, Decimal(10))
    receipt = make_deposit(
        d.w3, buyer, d.deployment.token, d.deployment.deposit_contract, to_base_units(Decimal("2.5"))
    )

    assert d.far_balance(buyer.address) == to_base_units(Decimal("7.5"))
    assert d.far_balance(d.treasury.address) == to_base_units(TREASURY_FAR - Decimal("7.5"))
    deposit_logs = [e for e in receipt["logs"] if e["address"] == d.deployment.deposit_contract]
    [deposit] = [parse_deposit_log(dict(e)) for e in deposit_logs]
    assert (deposit.wallet, deposit.units) == (buyer.address, to_base_units(Decimal("2.5")))
    assert deposit.block_number == receipt["blockNumber"] and deposit.tx_hash == receipt["transactionHash"].to_0x_hex()
    as_receipt = Receipt(
        deposit.tx_hash, 1, deposit.block_number, deposit.block_hash, 0, 0, tuple(dict(e) for e in receipt["logs"])
    )
    [moved] = transfers_in(as_receipt, d.deployment.token)
    assert (moved.sender, moved.recipient, moved.units) == (buyer.address, d.treasury.address, deposit.units)


def test_a_deposit_beyond_the_allowance_or_of_nothing_reverts(far_deployment: FarDeployment) -> None:
    d = far_deployment
    buyer = funded_buyer(d, Decimal(10))
    contract = d.w3.eth.contract(abi=load_artifact("FarDeposit").abi)
    for units in (1, 0):  # nothing approved; zero
        with pytest.raises(ContractLogicError):
            send(
                d.w3,
                buyer,
                {"to": d.deployment.deposit_contract, "data": contract.encode_abi("deposit", [units]), "gas": 200_000},
            )
    assert d.far_balance(buyer.address) == to_base_units(Decimal(10))


def test_a_log_that_is_not_a_deposit_is_refused() -> None:
    transfer_like = {"topics": ["0x" + "11" * 32, "0x" + "00" * 32], "data": "0x" + "00" * 32}
    with pytest.raises(NotADeposit):
        parse_deposit_log(transfer_like)

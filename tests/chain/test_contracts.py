"""The contracts on a real node: the token's ERC-20 behaviour and the batch contract's cost per paid wallet."""

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from chain.artifacts import load_artifact
from chain.deploy import deploy, send, transfer
from chain.node import LocalChain, dev_account
from chain.transfers import Payment, pay_batch_data
from chain.units import to_base_units
from tests.fixtures.chain import TREASURY_FAR, FarDeployment


def fresh_wallets(count: int, salt: int) -> list[str]:
    return [Web3.to_checksum_address(f"0x{salt:08x}{i:032x}") for i in range(count)]


def test_the_token_has_18_decimals_and_mints_the_supply_to_the_treasury(far_deployment: FarDeployment) -> None:
    token = far_deployment.w3.eth.contract(address=far_deployment.deployment.token, abi=load_artifact("FarToken").abi)
    assert token.functions.decimals().call() == 18
    assert token.functions.symbol().call() == "FAR"
    assert token.functions.totalSupply().call() == to_base_units(TREASURY_FAR)
    assert far_deployment.far_balance(far_deployment.treasury.address) == to_base_units(TREASURY_FAR)


def test_a_batch_pays_every_wallet_its_amount_in_one_transaction(far_deployment: FarDeployment) -> None:
    d = far_deployment
    payments = [Payment(w, 10**18 + i) for i, w in enumerate(fresh_wallets(30, 1))]
    data = pay_batch_data(d.deployment.token, payments)
    receipt = send(d.w3, d.treasury, {"to": d.deployment.batch_contract, "data": data})
    assert receipt["status"] == 1
    assert [d.far_balance(p.wallet) for p in payments] == [p.units for p in payments]


def test_a_batch_cannot_spend_for_a_caller_who_approved_nothing(local_chain: LocalChain) -> None:
    w3 = Web3(Web3.HTTPProvider(local_chain.url))
    d = deploy(w3, dev_account(0), dev_account(2), supply_far=TREASURY_FAR)
    data = pay_batch_data(d.token, [Payment(fresh_wallets(1, 2)[0], 1)])
    with pytest.raises(ContractLogicError):  # dev_account(3) holds no FAR and approved nothing
        send(w3, dev_account(3), {"to": d.batch_contract, "data": data, "gas": 200_000})


def test_a_mismatched_batch_reverts_whole(far_deployment: FarDeployment) -> None:
    d = far_deployment
    contract = d.w3.eth.contract(abi=load_artifact("FarBatchTransfer").abi)
    data = contract.encode_abi("payBatch", [d.deployment.token, fresh_wallets(2, 3), [1]])
    with pytest.raises(ContractLogicError):
        d.w3.eth.estimate_gas({"from": d.treasury.address, "to": d.deployment.batch_contract, "data": data})


def test_a_paid_wallet_costs_at_most_0_6_of_a_plain_transfer(far_deployment: FarDeployment) -> None:
    d = far_deployment
    single = transfer(d.w3, d.treasury, d.deployment.token, fresh_wallets(1, 4)[0], 10**18)["gasUsed"]
    payments = [Payment(w, 10**18) for w in fresh_wallets(100, 5)]
    batch = send(
        d.w3, d.treasury, {"to": d.deployment.batch_contract, "data": pay_batch_data(d.deployment.token, payments)}
    )
    per_wallet = batch["gasUsed"] / len(payments)
    assert per_wallet <= 0.6 * single, (per_wallet, single)

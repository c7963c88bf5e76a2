"""Deploying $FAR: the token (whole supply minted to the treasury), the batch-transfer contract, the treasury's
one-time approval of the batch contract, and the deposit contract buyers pay into (docs/deposits.md). Used by
`far-mesh chain deploy`, `far-mesh dev`, tests and the benchmark; on a real network, run it once and put the
printed addresses in the payer's and the deposit watcher's settings.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxReceipt

from chain.artifacts import load_artifact
from chain.units import to_base_units

MAX_UINT256 = 2**256 - 1


@dataclass(frozen=True)
class Deployment:
    token: str
    batch_contract: str
    treasury: str
    deposit_contract: str

    def env(self) -> dict[str, str]:
        """The payer's and the deposit watcher's settings that name these contracts."""
        return {
            "CHAIN_TOKEN_ADDRESS": self.token,
            "CHAIN_BATCH_CONTRACT_ADDRESS": self.batch_contract,
            "DEPOSIT_CONTRACT_ADDRESS": self.deposit_contract,
        }


def send(w3: Web3, account: LocalAccount, tx: dict[str, Any], *, timeout_s: float = 60) -> TxReceipt:
    """Sign `tx` locally as `account`, send it, wait for its receipt; RuntimeError if it reverted."""
    tx = {
        "from": account.address,
        "chainId": w3.eth.chain_id,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        **tx,
    }
    tx.setdefault("gas", int(w3.eth.estimate_gas(tx) * 1.2))  # type: ignore[arg-type]
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tx.setdefault("maxPriorityFeePerGas", 10**9)
    tx.setdefault("maxFeePerGas", 2 * base_fee + tx["maxPriorityFeePerGas"])
    signed = account.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=timeout_s
    )
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {signed.hash.to_0x_hex()} reverted")
    return receipt


def _create(w3: Web3, deployer: LocalAccount, name: str, *args: Any) -> str:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = send(w3, deployer, {"data": factory.constructor(*args).data_in_transaction})
    address = receipt["contractAddress"]
    assert address is not None
    return Web3.to_checksum_address(address)


def deploy(w3: Web3, deployer: LocalAccount, treasury: LocalAccount, *, supply_far: Decimal) -> Deployment:
    """Deploy the contracts, mint `supply_far` to the treasury and approve the batch contract for it; deposits
    go to the same treasury."""
    token = _create(w3, deployer, "FarToken", treasury.address, to_base_units(supply_far))
    batch = _create(w3, deployer, "FarBatchTransfer")
    approve(w3, treasury, token, batch)
    deposit = deploy_deposit(w3, deployer, token, treasury.address)
    return Deployment(token=token, batch_contract=batch, treasury=treasury.address, deposit_contract=deposit)


def deploy_deposit(w3: Web3, deployer: LocalAccount, token: str, treasury: str) -> str:
    """The FarDeposit contract that moves buyers' $FAR of `token` to `treasury` (alone: for a chain whose token
    was deployed before deposits existed)."""
    return _create(w3, deployer, "FarDeposit", Web3.to_checksum_address(token), Web3.to_checksum_address(treasury))


def approve(w3: Web3, treasury: LocalAccount, token: str, spender: str, units: int = MAX_UINT256) -> None:
    """Let `spender` move the treasury's $FAR (the batch contract: an unlimited allowance is never decremented)."""
    contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=load_artifact("FarToken").abi)
    send(
        w3,
        treasury,
        {"to": contract.address, "data": contract.encode_abi("approve", [Web3.to_checksum_address(spender), units])},
    )


def transfer(w3: Web3, sender: LocalAccount, token: str, to: str, units: int) -> TxReceipt:
    """One plain ERC-20 transfer (funding a treasury; the benchmark's baseline)."""
    contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=load_artifact("FarToken").abi)
    return send(
        w3,
        sender,
        {"to": contract.address, "data": contract.encode_abi("transfer", [Web3.to_checksum_address(to), units])},
    )

"""The payer's view of the node: what it refuses before signing anything, and the errors that say why."""

import pytest

from chain.client import ChainClient, redacted
from chain.errors import ChainUnreachable, ContractNotDeployed, WrongChain
from chain.node import DEV_CHAIN_ID, LocalChain
from mesh.ports import free_port
from tests.fixtures.chain import FarDeployment


async def test_a_node_that_does_not_answer_is_unreachable_and_named_without_its_path() -> None:
    client = ChainClient(f"http://127.0.0.1:{free_port()}/secret-api-key", timeout_s=2)
    with pytest.raises(ChainUnreachable, match=r"no JSON-RPC node answers at http://127\.0\.0\.1:\d+ ") as caught:
        await client.block_number()
    assert "secret-api-key" not in str(caught.value)


def test_an_rpc_url_is_shown_by_host_and_port_only() -> None:
    assert redacted("https://user:pw@mainnet.example.org/v3/KEY?x=1") == "https://mainnet.example.org"


async def test_a_node_on_another_chain_is_refused(far_deployment: FarDeployment) -> None:
    with pytest.raises(WrongChain, match="serves chain id 31337, CHAIN_ID is 1"):
        await ChainClient(far_deployment.url).check(1, {})


async def test_an_address_without_code_is_not_a_deployed_contract(far_deployment: FarDeployment) -> None:
    client = ChainClient(far_deployment.url)
    await client.check(DEV_CHAIN_ID, {"CHAIN_TOKEN_ADDRESS": far_deployment.deployment.token})
    with pytest.raises(ContractNotDeployed, match="CHAIN_BATCH_CONTRACT_ADDRESS: no contract at 0x"):
        await client.check(DEV_CHAIN_ID, {"CHAIN_BATCH_CONTRACT_ADDRESS": far_deployment.treasury.address})


async def test_balances_and_nonces_come_from_the_chain(far_deployment: FarDeployment, local_chain: LocalChain) -> None:
    client = ChainClient(local_chain.url)
    treasury = far_deployment.treasury.address
    assert await client.far_balance(far_deployment.deployment.token, treasury) == 10**6 * 10**18
    assert await client.gas_balance(treasury) > 0
    assert await client.nonce(treasury) == 1  # its approval of the batch contract
    assert await client.receipt("0x" + "ab" * 32) is None

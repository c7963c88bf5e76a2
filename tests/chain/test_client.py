"""The payer's view of the node: what it refuses before signing anything, and the errors that say why."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest

from chain.client import ChainClient, redacted
from chain.errors import ChainNodeFailed, ChainUnreachable, ContractNotDeployed, WrongChain
from chain.node import DEV_CHAIN_ID, LocalChain
from mesh.ports import free_port
from tests.fixtures.chain import FarDeployment
from tests.fixtures.loopback_http import loopback_http


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


@contextmanager
def _node_answering_every_call_with(error: dict[str, object]) -> Iterator[str]:
    """A JSON-RPC endpoint on loopback whose every answer is `error`: what a ganache shutting down says."""

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    with loopback_http(Failing) as url:
        yield f"{url}/secret-api-key"


async def test_a_read_the_node_answers_with_an_error_is_waited_out_as_an_unreachable_node() -> None:
    # The deposit watcher exited on this answer while the soak restarted ganache; the payer would have halted.
    stack = "Error: Cannot process request, Ganache is disconnected.\n    at RequestCoordinator.queue " + "x" * 500
    error = {"code": -32603, "message": "Cannot process request, Ganache is disconnected.", "data": {"stack": stack}}
    with _node_answering_every_call_with(error) as url:
        client = ChainClient(url, timeout_s=2)
        with pytest.raises(ChainNodeFailed) as caught:
            await client.logs("0x" + "11" * 20, "0x" + "22" * 32, 0, 10)
    assert isinstance(caught.value, ChainUnreachable)
    assert str(caught.value) == (
        f"the JSON-RPC node at {url.removesuffix('/secret-api-key')} failed eth_getLogs: "
        "Cannot process request, Ganache is disconnected."
    )


class _RateLimited(BaseHTTPRequestHandler):
    """A hosted node past its quota: HTTP 429 to every call."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(429)
        self.send_header("Content-Length", "17")
        self.end_headers()
        self.wfile.write(b"Too Many Requests")

    def log_message(self, *_: object) -> None:
        pass


async def test_an_http_error_from_the_node_is_unreachable_and_never_shows_the_url_with_its_key() -> None:
    with loopback_http(_RateLimited) as url:
        client = ChainClient(f"{url}/v3/secret-api-key", timeout_s=2)
        with pytest.raises(ChainUnreachable) as caught:
            await client.block_number()
        with pytest.raises(ChainUnreachable) as reading_a_contract:
            await client.deposit_treasury("0x" + "22" * 20, 1)
    assert str(caught.value) == f"no JSON-RPC node answers at {url} (eth_blockNumber): HTTP 429"
    assert "secret-api-key" not in str(reading_a_contract.value)

"""The JSON-RPC node, as the payer needs it: checked once (reachable, right chain, contracts deployed), then
asked for nonces, balances, fees and receipts, and handed signed transactions.

web3.py's synchronous HTTP provider runs in a worker thread (`asyncio.to_thread`), one call at a time; a
payout makes a handful of calls per block, so the simplest client is the right one. Every transport failure
becomes `ChainUnreachable` naming the node by host only (an RPC URL may carry an API key), and a read the node
answered with an error `ChainNodeFailed`, which callers wait out the same way.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import BlockNotFound, ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import FilterParams, TxParams

from chain.artifacts import load_artifact
from chain.errors import ChainNodeFailed, ChainUnreachable, ContractNotDeployed, WrongChain

log = logging.getLogger(__name__)
T = TypeVar("T")


def redacted(url: str) -> str:
    """scheme://host:port of an RPC URL: its path or query may hold a provider's API key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    status: int
    block_number: int
    block_hash: str
    gas_used: int
    effective_gas_price: int
    logs: tuple[dict[str, Any], ...]


class RejectedTransaction(RuntimeError):
    """The node refused a signed transaction (already known, nonce too low, underpriced...); the chain decides."""


class EstimateReverted(RuntimeError):
    """The transaction would revert: the node's estimate says why."""


def _node_message(error: Web3RPCError, limit: int = 200) -> str:
    """The node's own message, cut short: its answer may carry a stack trace, and it is the node's claim only."""
    answer = error.rpc_response or {}
    body = answer.get("error") if isinstance(answer, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message if message is not None else error)[:limit]


class ChainClient:
    def __init__(self, rpc_url: str, *, timeout_s: float = 10.0) -> None:
        self.node = redacted(rpc_url)
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))

    async def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except requests.RequestException as exc:  # its text names the whole URL, API key and all: never shown
            status = exc.response.status_code if exc.response is not None else None
            answer = f"HTTP {status}" if status is not None else type(exc).__name__
            raise ChainUnreachable(f"no JSON-RPC node answers at {self.node} ({what}): {answer}") from None
        except Web3RPCError as exc:  # what `call` did not handle itself: a failed read (sends raise their own)
            raise ChainNodeFailed(f"the JSON-RPC node at {self.node} failed {what}: {_node_message(exc)}") from None

    async def check(self, chain_id: int, contracts: dict[str, str]) -> None:
        """Refuse a node on another chain, or one where a configured contract has no code."""
        actual = await self._call("eth_chainId", lambda: self.w3.eth.chain_id)
        if actual != chain_id:
            raise WrongChain(
                f"the node at {self.node} serves chain id {actual}, CHAIN_ID is {chain_id}: refusing to sign"
            )
        for setting, address in contracts.items():
            code = await self._call("eth_getCode", partial(self.w3.eth.get_code, Web3.to_checksum_address(address)))
            if len(code) == 0:
                raise ContractNotDeployed(
                    f"{setting}: no contract at {address} on chain {chain_id} "
                    "(deploy with `far-mesh chain deploy`, or fix the address)"
                )

    async def block_number(self) -> int:
        return await self._call("eth_blockNumber", lambda: self.w3.eth.block_number)

    async def genesis_hash(self) -> str:
        """The hash of block 0: what tells a chain from another with the same chain id (a reset development
        node, say); `0x` and lowercase hex."""
        block = await self._call("eth_getBlockByNumber", lambda: self.w3.eth.get_block(0))
        return HexBytes(block["hash"]).to_0x_hex().lower()

    async def block_hash(self, number: int) -> str | None:
        """The hash of block `number` on the chain the node follows now (`0x`, lowercase), or None when it has no
        such block (yet, or any more: a reorganisation to a shorter chain)."""

        def fetch() -> str | None:
            try:
                block = self.w3.eth.get_block(number)
            except BlockNotFound:
                return None
            return HexBytes(block["hash"]).to_0x_hex().lower()

        return await self._call("eth_getBlockByNumber", fetch)

    async def logs(
        self, address: str, topic: str, from_block: int, to_block: int, *more_topics: str
    ) -> list[dict[str, Any]]:
        """Every log `address` emitted with first topic `topic` (and the next topics `more_topics`, each 32 bytes
        of hex: an indexed argument) in blocks `from_block`..`to_block` (inclusive)."""
        params: FilterParams = {
            "address": Web3.to_checksum_address(address),
            "topics": [HexStr(topic), *(HexStr(t) for t in more_topics)],
            "fromBlock": from_block,
            "toBlock": to_block,
        }
        return await self._call("eth_getLogs", lambda: [dict(entry) for entry in self.w3.eth.get_logs(params)])

    async def base_fee(self) -> int:
        block = await self._call("eth_getBlockByNumber", lambda: self.w3.eth.get_block("latest"))
        return int(block.get("baseFeePerGas", 0))

    async def nonce(self, address: str, *, pending: bool = False) -> int:
        """Transactions mined from `address` (or mined and waiting in the node's pool, with `pending`)."""
        tag: Literal["pending", "latest"] = "pending" if pending else "latest"
        sender = Web3.to_checksum_address(address)
        return await self._call("eth_getTransactionCount", lambda: self.w3.eth.get_transaction_count(sender, tag))

    async def nonce_at(self, address: str, block: int) -> int | None:
        """Transactions mined from `address` up to and including `block`; None when the node that answered has
        not seen that block (one lagging behind a load balancer's others)."""
        sender = Web3.to_checksum_address(address)

        def fetch() -> int | None:
            try:
                return int(self.w3.eth.get_transaction_count(sender, block))
            except Web3RPCError:
                return None

        return await self._call("eth_getTransactionCount", fetch)

    async def gas_balance(self, address: str) -> int:
        """Wei of the chain's gas token held by `address`."""
        return await self._call("eth_getBalance", lambda: self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    async def far_balance(self, token: str, address: str) -> int:
        """Base units of $FAR held by `address`."""
        contract = self.token(token)
        holder = Web3.to_checksum_address(address)
        return int(await self._call("balanceOf", lambda: contract.functions.balanceOf(holder).call()))

    async def allowance(self, token: str, owner: str, spender: str) -> int:
        contract = self.token(token)
        o, s = Web3.to_checksum_address(owner), Web3.to_checksum_address(spender)
        return int(await self._call("allowance", lambda: contract.functions.allowance(o, s).call()))

    async def deposit_treasury(self, deposit_contract: str, block: int) -> tuple[str, str, int]:
        """The deposit contract's treasury and token, and the treasury's $FAR base units, at `block`."""
        deposits = self.w3.eth.contract(address=checksum(deposit_contract), abi=load_artifact("FarDeposit").abi)
        treasury = str(
            await self._call("FarDeposit.treasury", lambda: deposits.functions.treasury().call(block_identifier=block))
        )
        token = str(
            await self._call("FarDeposit.token", lambda: deposits.functions.token().call(block_identifier=block))
        )
        erc20 = self.token(token)
        balance = await self._call(
            "balanceOf", lambda: erc20.functions.balanceOf(treasury).call(block_identifier=block)
        )
        return treasury, token, int(balance)

    def token(self, address: str) -> Any:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact("FarToken").abi)

    async def estimate_gas(self, tx: TxParams) -> int:
        def estimate() -> int:
            try:
                return int(self.w3.eth.estimate_gas(tx))
            except (ContractLogicError, Web3RPCError) as exc:
                raise EstimateReverted(str(exc)) from None

        return await self._call("eth_estimateGas", estimate)

    async def send_raw(self, raw_tx: str) -> str:
        """Broadcast a signed transaction; RejectedTransaction if the node refuses it (the caller checks the chain)."""

        def send() -> str:
            try:
                return self.w3.eth.send_raw_transaction(HexBytes(raw_tx)).to_0x_hex()
            except Web3RPCError as exc:
                raise RejectedTransaction(str(exc)) from None

        return await self._call("eth_sendRawTransaction", send)

    async def receipt(self, tx_hash: str) -> Receipt | None:
        """The transaction's receipt once it is mined; None while it is not (pending, dropped, or unknown)."""

        def fetch() -> Receipt | None:
            try:
                r = self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            except TransactionNotFound:
                return None
            return Receipt(
                tx_hash=tx_hash,
                status=int(r["status"]),
                block_number=int(r["blockNumber"]),
                block_hash=HexBytes(r["blockHash"]).to_0x_hex(),
                gas_used=int(r["gasUsed"]),
                effective_gas_price=int(r.get("effectiveGasPrice", 0)),
                logs=tuple(dict(entry) for entry in r["logs"]),
            )

        return await self._call("eth_getTransactionReceipt", fetch)

    async def is_known(self, tx_hash: str) -> bool:
        """Whether the node knows the transaction at all (mined or in its pool)."""

        def fetch() -> bool:
            try:
                self.w3.eth.get_transaction(HexStr(tx_hash))
            except TransactionNotFound:
                return False
            return True

        return await self._call("eth_getTransactionByHash", fetch)

    async def transaction_to(self, tx_hash: str) -> str | None:
        """The EIP-55 address the mined or pending transaction `tx_hash` was sent to (None: a contract creation, or
        a transaction the node does not know)."""

        def fetch() -> str | None:
            try:
                tx = self.w3.eth.get_transaction(HexStr(tx_hash))
            except TransactionNotFound:
                return None
            to = tx.get("to")
            return None if to is None else Web3.to_checksum_address(to)

        return await self._call("eth_getTransactionByHash", fetch)


def address_topic(address: str) -> str:
    """An address as an indexed event argument: 32 bytes of hex, the address right-aligned."""
    return "0x" + "0" * 24 + Web3.to_checksum_address(address)[2:].lower()


def checksum(address: str) -> ChecksumAddress:
    return Web3.to_checksum_address(address)

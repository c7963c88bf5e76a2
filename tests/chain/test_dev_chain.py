"""`far-mesh dev`'s chain: found (or started), contracts deployed once per node, the payer's settings ready."""

import asyncio
import json
import stat
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from web3 import Web3

from chain.node import LocalChain, answers, dev_account
from devstack import chain_node
from mesh.ports import free_port
from payouts.settings import PayoutSettings
from tests.fixtures.ledger import unique_id, wallet_for


def test_a_configured_node_gets_the_contracts_once_and_the_payer_its_settings(
    local_chain: LocalChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAIN_RPC_URL", local_chain.url)
    first = chain_node.resolve_chain(tmp_path)
    again = chain_node.resolve_chain(tmp_path)

    assert first.node.origin == "configured" and again.env == first.env | {
        "PAYOUT_METRICS_PORT": again.env["PAYOUT_METRICS_PORT"]
    }
    settings = PayoutSettings.from_env(
        postgres_url="postgresql://u@h/db", **{k.lower(): v for k, v in first.env.items()}
    )
    assert settings.treasury_key().get_secret_value() == "0x" + dev_account(1).key.hex()
    key_file = Path(first.env["PAYOUT_TREASURY_KEY_FILE"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    w3 = Web3(Web3.HTTPProvider(local_chain.url))
    assert len(w3.eth.get_code(first.env["CHAIN_TOKEN_ADDRESS"])) > 0
    assert len(w3.eth.get_code(first.env["DEPOSIT_CONTRACT_ADDRESS"])) > 0
    assert json.loads((tmp_path / "chain.json").read_text())["token"] == first.env["CHAIN_TOKEN_ADDRESS"]
    assert first.provider_wallets == tuple(dev_account(i).address for i in chain_node.PROVIDER_ACCOUNTS)


def test_without_a_node_one_is_started_under_the_state_directory_and_stopped_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAIN_RPC_URL", raising=False)
    monkeypatch.setattr(chain_node, "LOCAL_NODE", f"http://127.0.0.1:{free_port()}")
    chain = chain_node.resolve_chain(tmp_path)
    try:
        assert chain.node.origin == "embedded" and answers(chain.node.url) == 31337
        assert (tmp_path / "ganache.log").exists()
    finally:
        chain.node.stop()
    assert answers(chain.node.url, timeout_s=0.5) is None


def test_the_local_swarms_providers_are_registered_to_their_wallets_with_signatures_that_verify(
    migrated_postgres_dsn: str,
) -> None:
    """Payouts pay registered wallets only: `far-mesh dev` registers its servers, signed by the provider keys."""
    provider = dev_account(chain_node.PROVIDER_ACCOUNTS[0]).address
    served, stranger, anonymous = unique_id("12D3KooW"), unique_id("12D3KooW"), unique_id("12D3KooW")
    servers = [(served, provider), (stranger, wallet_for("not-a-provider")), (anonymous, None)]

    assert chain_node.register_providers(migrated_postgres_dsn, servers) == {served: provider}
    assert chain_node.register_providers(migrated_postgres_dsn, servers) == {served: provider}  # a restart

    async def stored() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(migrated_postgres_dsn)
        try:
            return await connection.fetch(
                "SELECT node_id, wallet, statement, signature FROM far_node_registration_events "
                "WHERE node_id = ANY($1)",
                [served, stranger, anonymous],
            )
        finally:
            await connection.close()

    [event] = asyncio.run(stored())
    assert (event["node_id"], event["wallet"]) == (served, provider)
    signer = Account.recover_message(encode_defunct(text=event["statement"]), signature=event["signature"])
    assert signer == provider and f"Node: {served}" in event["statement"].splitlines()


def test_the_node_it_starts_keeps_its_chain_across_restarts_so_the_ledgers_nonces_stay_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run`, stop, `make run`: the same chain (genesis, contracts, the treasury's nonce), not a fresh one
    whose nonces would start again under the batches the ledger already paid."""
    monkeypatch.delenv("CHAIN_RPC_URL", raising=False)
    monkeypatch.setattr(chain_node, "LOCAL_NODE", f"http://127.0.0.1:{free_port()}")
    seen = []
    for _ in range(2):
        chain = chain_node.resolve_chain(tmp_path)
        try:
            assert chain.node.origin == "embedded"
            w3 = Web3(Web3.HTTPProvider(chain.node.url))
            treasury = dev_account(1).address
            seen.append((w3.eth.get_block(0)["hash"], chain.env["CHAIN_TOKEN_ADDRESS"], w3.eth.get_block_number()))
            if len(seen) == 1:  # the treasury pays something: its nonce must survive the restart
                sent = w3.eth.send_transaction({"from": treasury, "to": dev_account(2).address, "value": 1})
                w3.eth.wait_for_transaction_receipt(sent, timeout=10)  # mined: a block comes every second
            nonce = w3.eth.get_transaction_count(treasury)
        finally:
            chain.node.stop()
    (genesis, token, _), (genesis_again, token_again, height_again) = seen
    assert genesis_again == genesis and token_again == token
    assert height_again > 0 and nonce >= 2  # the approval and the transfer of the first run
    assert json.loads((tmp_path / "chain.json").read_text())["genesis"] == genesis.to_0x_hex()


def test_the_development_buyer_deposits_through_the_deposit_contract(
    local_chain: LocalChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` funds the development key's wallet by a real deposit, which the watcher then credits."""
    from web3.logs import DISCARD

    from chain.artifacts import load_artifact
    from chain.units import to_base_units

    monkeypatch.setenv("CHAIN_RPC_URL", local_chain.url)
    chain = chain_node.resolve_chain(tmp_path)
    assert chain.buyer_wallet == dev_account(chain_node.BUYER_ACCOUNT).address
    assert chain.buyer_wallet not in chain.provider_wallets
    w3 = Web3(Web3.HTTPProvider(local_chain.url))
    token = w3.eth.contract(address=chain.env["CHAIN_TOKEN_ADDRESS"], abi=load_artifact("FarToken").abi)
    treasury, buyer = dev_account(1).address, chain.buyer_wallet
    before = (token.functions.balanceOf(treasury).call(), token.functions.balanceOf(buyer).call())

    transaction = chain_node.fund_buyer(chain, Decimal("2.5"))

    receipt = w3.eth.get_transaction_receipt(transaction)
    deposit = w3.eth.contract(address=chain.env["DEPOSIT_CONTRACT_ADDRESS"], abi=load_artifact("FarDeposit").abi)
    [event] = deposit.events.Deposited().process_receipt(receipt, errors=DISCARD)  # the token's logs too
    assert event["args"]["amount"] == to_base_units(Decimal("2.5"))
    assert event["args"]["wallet"] == buyer
    # the treasury sent it and got it back by the deposit: neither balance moved
    assert (token.functions.balanceOf(treasury).call(), token.functions.balanceOf(buyer).call()) == before

from pathlib import Path

import pytest

from chain.node import DEV_CHAIN_ID, LocalChain, NodeNotInstalled, answers, dev_account, rpc_call
from mesh.ports import free_port
from tests.fixtures.chain import chain_rpc


def test_the_session_node_answers_json_rpc_with_the_development_chain_id(local_chain: LocalChain) -> None:
    assert answers(local_chain.url) == DEV_CHAIN_ID == 0x7A69
    balance = int(chain_rpc(local_chain.url, "eth_getBalance", dev_account(0).address, "latest"), 16)
    assert balance > 0  # the deterministic wallet is funded at genesis


def test_the_deterministic_wallet_is_ganaches(local_chain: LocalChain) -> None:
    assert dev_account(0).address == "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1"
    assert [a.lower() for a in chain_rpc(local_chain.url, "eth_accounts")][:2] == [
        dev_account(0).address.lower(),
        dev_account(1).address.lower(),
    ]


def test_a_node_started_and_stopped_frees_its_port(tmp_path: Path) -> None:
    node = LocalChain(free_port(), tmp_path / "ganache.log")
    node.start()
    url = node.url
    try:
        assert rpc_call(url, "net_version") == str(DEV_CHAIN_ID)
    finally:
        node.stop()
    assert answers(url, timeout_s=0.5) is None


def test_a_missing_ganache_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chain.node.GANACHE", tmp_path / "no-such-ganache")
    with pytest.raises(NodeNotInstalled, match="npm ci"):
        LocalChain(free_port(), tmp_path / "ganache.log").start()

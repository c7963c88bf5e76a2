"""`far-mesh dev`'s chain: found (or started), contracts deployed once per node, the payer's settings ready."""

import json
import stat
from pathlib import Path

import pytest
from web3 import Web3

from chain.node import LocalChain, answers, dev_account
from chain.settings import PayoutSettings
from devstack import chain_node
from devstack.ports import free_port


def test_a_configured_node_gets_the_contracts_once_and_the_payer_its_settings(
    local_chain: LocalChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAR_MESH_CHAIN_RPC_URL", local_chain.url)
    first = chain_node.resolve_chain(tmp_path)
    again = chain_node.resolve_chain(tmp_path)

    assert first.node.origin == "configured" and again.env == first.env | {
        "FAR_MESH_PAYOUT_METRICS_PORT": again.env["FAR_MESH_PAYOUT_METRICS_PORT"]
    }
    settings = PayoutSettings.from_env(
        postgres_url="postgresql://u@h/db", **{k.lower(): v for k, v in first.env.items()}
    )
    assert settings.treasury_key().get_secret_value() == "0x" + dev_account(1).key.hex()
    key_file = Path(first.env["FAR_MESH_TREASURY_KEY_FILE"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    w3 = Web3(Web3.HTTPProvider(local_chain.url))
    assert len(w3.eth.get_code(first.env["FAR_MESH_TOKEN_ADDRESS"])) > 0
    assert json.loads((tmp_path / "chain.json").read_text())["token"] == first.env["FAR_MESH_TOKEN_ADDRESS"]
    assert first.provider_wallets == tuple(dev_account(i).address for i in chain_node.PROVIDER_ACCOUNTS)


def test_without_a_node_one_is_started_under_the_state_directory_and_stopped_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAR_MESH_CHAIN_RPC_URL", raising=False)
    monkeypatch.setattr(chain_node, "LOCAL_NODE", f"http://127.0.0.1:{free_port()}")
    chain = chain_node.resolve_chain(tmp_path)
    try:
        assert chain.node.origin == "embedded" and answers(chain.node.url) == 31337
        assert (tmp_path / "ganache.log").exists()
    finally:
        chain.node.stop()
    assert answers(chain.node.url, timeout_s=0.5) is None

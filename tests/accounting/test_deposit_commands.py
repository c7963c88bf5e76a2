"""`far-mesh deposits make|watch|balance` against the session's ganache and ledger."""

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from cli.main import main
from tests.fixtures.chain import FarDeployment
from tests.fixtures.deposits import funded_buyer


def test_make_deposits_from_a_key_file_and_watch_once_credits_it_to_the_balance(
    far_deployment: FarDeployment,
    migrated_postgres_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = far_deployment
    buyer = funded_buyer(d, Decimal(20))
    key_file = tmp_path / "buyer.key"
    key_file.write_text("0x" + buyer.key.hex())
    for name, value in {
        "CHAIN_RPC_URL": d.url,
        "DEPOSIT_CONTRACT_ADDRESS": d.deployment.deposit_contract,
        "DEPOSIT_CONFIRMATIONS": "1",
        "DEPOSIT_START_BLOCK": str(d.w3.eth.block_number + 1),
        "DEPOSIT_METRICS_PORT": "0",
        "POSTGRES_URL": migrated_postgres_dsn,
    }.items():
        monkeypatch.setenv(name, value)

    assert main(["deposits", "make", "--amount", "12.5", "--key-file", str(key_file)]) == 0
    assert f"{buyer.address} deposited 12.5 FAR in 0x" in capsys.readouterr().out
    assert d.far_balance(buyer.address) == 75 * 10**17
    with caplog.at_level(logging.INFO, logger="accounting.deposits"):
        assert main(["deposits", "watch", "--once"]) == 0
        assert main(["deposits", "watch", "--once"]) == 0  # a second run credits nothing more
    assert sum(f"deposit credited wallet={buyer.address} far=12.5" in r.message for r in caplog.records) == 1
    assert main(["deposits", "balance", buyer.address]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"{buyer.address}\t12.5"]


def test_make_without_a_deposit_contract_is_a_configuration_error(
    local_chain: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEPOSIT_CONTRACT_ADDRESS", raising=False)
    assert main(["deposits", "make", "--amount", "1", "--dev-account", "5"]) == 2
    assert "DEPOSIT_CONTRACT_ADDRESS" in capsys.readouterr().err


def test_make_refuses_a_deposit_larger_than_what_the_wallet_holds(
    far_deployment: FarDeployment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CHAIN_RPC_URL", far_deployment.url)
    monkeypatch.setenv("DEPOSIT_CONTRACT_ADDRESS", far_deployment.deployment.deposit_contract)
    assert main(["deposits", "make", "--amount", "1", "--dev-account", "7"]) == 1  # gas, but no FAR
    assert "holds 0 FAR, less than the 1 FAR to deposit" in caplog.text

"""`far-mesh chain deploy|balance` against the test node."""

import pytest

from chain.node import LocalChain, dev_account
from cli.main import main


def test_deploy_prints_the_payers_settings_and_balance_reads_them_back(
    local_chain: LocalChain, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHAIN_RPC_URL", local_chain.url)
    assert main(["chain", "deploy", "--dev", "--supply-far", "1234.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    settings = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    assert set(settings) == {
        "CHAIN_TOKEN_ADDRESS",
        "CHAIN_BATCH_CONTRACT_ADDRESS",
        "DEPOSIT_CONTRACT_ADDRESS",
    }

    monkeypatch.setenv("CHAIN_TOKEN_ADDRESS", settings["CHAIN_TOKEN_ADDRESS"])
    treasury, nobody = dev_account(1).address, "0x000000000000000000000000000000000000dEaD"
    assert main(["chain", "balance", treasury, nobody]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(wallet, far) for wallet, far, _ in rows] == [(treasury, "1234.5"), (nobody, "0")]


def test_balance_refuses_a_mistyped_wallet(
    local_chain: LocalChain, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CHAIN_RPC_URL", local_chain.url)
    monkeypatch.setenv("CHAIN_TOKEN_ADDRESS", "0x000000000000000000000000000000000000dEaD")
    assert main(["chain", "balance", "0x000000000000000000000000000000000000dead"]) == 2
    assert "checksum mismatch" in caplog.text

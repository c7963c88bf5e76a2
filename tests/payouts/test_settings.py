"""The payer's settings: the treasury key from a file or a secret, never printed; bad values named at start."""

from pathlib import Path

import pytest
from pydantic import SecretStr

from payouts.settings import PayoutSettings
from protocol.settings import SettingsError

KEY = "0x4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d"  # ganache's public test key 0
DSN = "postgresql://u@h/db"


def test_the_key_file_wins_and_the_key_never_shows_in_the_settings(tmp_path: Path) -> None:
    key_file = tmp_path / "treasury.key"
    key_file.write_text(KEY + "\n")
    settings = PayoutSettings.from_env(
        postgres_url=DSN, payout_treasury_key_file=key_file, payout_treasury_key=SecretStr("0x" + "11" * 32)
    )
    assert settings.treasury_key().get_secret_value() == KEY
    assert KEY[2:] not in repr(settings) + str(settings) + settings.model_dump_json()


def test_a_missing_or_unreadable_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PAYOUT_TREASURY_KEY_FILE or PAYOUT_TREASURY_KEY"):
        PayoutSettings.from_env(postgres_url=DSN).treasury_key()
    with pytest.raises(ValueError, match="PAYOUT_TREASURY_KEY_FILE: cannot read it"):
        PayoutSettings.from_env(postgres_url=DSN, payout_treasury_key_file=tmp_path / "nope").treasury_key()


def test_bad_values_stop_the_payer_at_start_with_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_URL", DSN)
    monkeypatch.setenv("CHAIN_TOKEN_ADDRESS", "0x90f8bf6a479f320ead074411a4b0e7944ea8c9c1")  # not EIP-55
    monkeypatch.setenv("PAYOUT_CONFIRMATIONS", "0")
    with pytest.raises(SettingsError) as caught:
        PayoutSettings.from_env()
    assert "CHAIN_TOKEN_ADDRESS" in str(caught.value) and "PAYOUT_CONFIRMATIONS" in str(caught.value)


def test_a_tip_above_the_fee_cap_is_refused() -> None:
    with pytest.raises(SettingsError, match="PAYOUT_PRIORITY_FEE_GWEI must not exceed"):
        PayoutSettings.from_env(postgres_url=DSN, payout_max_fee_gwei=1, payout_priority_fee_gwei=2)


def test_a_fee_bump_below_what_nodes_accept_is_refused() -> None:
    with pytest.raises(SettingsError, match="PAYOUT_FEE_BUMP_PERCENT"):
        PayoutSettings.from_env(postgres_url=DSN, payout_fee_bump_percent=5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POSTGRES_URL", "postgresql://far_mesh:Xy7Pq2/Zk9Lm4@127.0.0.1:5432/far_mesh"),  # a base64 password's /
        ("POSTGRES_URL", "postgresql://far_mesh:Xy7?Zk9Lm4@127.0.0.1:5432/far_mesh"),
        ("POSTGRES_URL", "postgresql://far_mesh:1234/Zk9Lm4@127.0.0.1:5432/far_mesh"),  # digits: a "port" parses
        ("CHAIN_RPC_URL", "wss://mainnet.example.io/v3/Zk9Lm4"),
        ("CHAIN_RPC_URL", "mainnet.example.io/v3/Zk9Lm4"),
    ],
)
def test_a_url_the_driver_would_misread_stops_start_up_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("POSTGRES_URL", DSN)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        PayoutSettings.from_env()
    assert name in str(caught.value) and "Zk9Lm4" not in str(caught.value)

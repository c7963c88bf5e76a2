"""The wallet a node announces in its Petals public name reads back exactly, and a mistyped one not at all."""

import pytest

from mesh.announce import InvalidLabel, public_name_for, wallet_from_public_name
from protocol.wallet import InvalidWallet

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


@pytest.mark.parametrize("label", [None, "", "gpu-box-7", "Jürgen's 4090 far:0x", "  spaced   out  "])
def test_the_announced_wallet_round_trips_whatever_the_label(label: str | None) -> None:
    assert wallet_from_public_name(public_name_for(WALLET, label)) == WALLET


def test_the_label_comes_first_for_humans_reading_the_swarm() -> None:
    assert public_name_for(WALLET, "gpu-box-7") == f"gpu-box-7 far:{WALLET}"


def test_a_wallet_with_a_wrong_checksum_is_refused_when_announcing() -> None:
    with pytest.raises(InvalidWallet, match=WALLET):
        public_name_for(WALLET.lower())


def test_a_too_long_label_is_refused() -> None:
    with pytest.raises(InvalidLabel):
        public_name_for(WALLET, "x" * 65)


@pytest.mark.parametrize(
    "public_name",
    [None, "", "gpu-box-7", WALLET, f"far:{WALLET.lower()}", f"far:{WALLET} trailing", f"far:{WALLET}0"],
)
def test_names_announcing_no_valid_wallet_read_as_none(public_name: str | None) -> None:
    assert wallet_from_public_name(public_name) is None


def test_a_petals_server_without_our_launcher_announces_no_wallet() -> None:
    assert wallet_from_public_name("petals-server on a6000") is None

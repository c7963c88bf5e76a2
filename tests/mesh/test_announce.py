"""The wallet a node announces in its Petals public name reads back exactly, and a mistyped one not at all."""

import pytest

from mesh.announce import (
    PUBLIC_NAME_KEPT_CHARS,
    InvalidLabel,
    kept_public_name,
    public_name_for,
    wallet_from_public_name,
)
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


def test_the_longest_name_the_node_launcher_makes_is_kept_whole() -> None:
    name = public_name_for(WALLET, "a" * 64, "hw:" + "G" * 40 + "/1024/none")

    assert kept_public_name(name) == name


def test_a_cut_name_announces_the_wallet_the_whole_name_announces_and_no_other() -> None:
    # the whole name announces none, its wallet-like word not being at its end; a plain cut would end right after it
    word = " far:" + WALLET
    no_wallet = "x" * (PUBLIC_NAME_KEPT_CHARS - len(word)) + word + " trailing words" * 100
    mistyped = "x" * 1_000 + " far:" + WALLET.lower()

    for name in (no_wallet, mistyped):
        kept = kept_public_name(name)
        assert kept is not None and len(kept) <= PUBLIC_NAME_KEPT_CHARS
        assert wallet_from_public_name(name) is None and wallet_from_public_name(kept) is None

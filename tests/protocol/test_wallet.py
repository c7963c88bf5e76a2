"""EIP-55 addresses: the checksum is computed, verified, and a near miss is answered with the right spelling."""

import pytest

from protocol.wallet import InvalidWallet, is_checksum_address, to_checksum_address, validate_wallet

# Test vectors from the EIP-55 specification.
EIP55_VECTORS = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_checksum_matches_the_specification_vectors(address: str) -> None:
    assert to_checksum_address(address.lower()) == address
    assert is_checksum_address(address)


@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_one_flipped_letter_case_breaks_the_checksum(address: str) -> None:
    index = next(i for i, c in enumerate(address[2:], start=2) if c.isalpha())
    flipped = address[:index] + address[index].swapcase() + address[index + 1 :]
    assert not is_checksum_address(flipped)
    with pytest.raises(InvalidWallet, match=f"did you mean {address}"):
        validate_wallet(flipped)


@pytest.mark.parametrize(
    "text", ["", "0x", "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x" + "g" * 40, "0x" + "a" * 41]
)
def test_text_that_is_not_an_address_is_rejected(text: str) -> None:
    assert not is_checksum_address(text)
    with pytest.raises(InvalidWallet, match="40 hexadecimal digits"):
        to_checksum_address(text)

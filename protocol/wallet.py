"""Ethereum wallet addresses, validated against their EIP-55 checksum.

A wallet is where $FAR is paid: a typo must be rejected, not paid into the void. EIP-55 encodes a checksum
in the letter case of the hex digits, so a mistyped character is caught with probability ~0.9998.
"""

import re
from functools import lru_cache
from typing import Annotated

from Crypto.Hash import keccak
from pydantic import AfterValidator

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class InvalidWallet(ValueError):
    """The text is not an EIP-55 checksummed Ethereum address."""


@lru_cache(maxsize=65_536)
def to_checksum_address(address: str) -> str:
    """The EIP-55 spelling of a 0x-prefixed, 40-hex-digit address (any case)."""
    if not _ADDRESS.fullmatch(address):
        raise InvalidWallet("must be 0x followed by 40 hexadecimal digits")
    # Cached: the same few thousand node wallets recur in every usage record, and keccak costs ~20 us.
    digits = address[2:].lower()
    digest = keccak.new(digest_bits=256, data=digits.encode("ascii")).hexdigest()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(digits, digest[:40], strict=True))


def is_checksum_address(address: str) -> bool:
    """True when `address` is spelled exactly as EIP-55 prescribes."""
    try:
        return to_checksum_address(address) == address
    except InvalidWallet:
        return False


def validate_wallet(address: str) -> str:
    """Return `address` unchanged if its checksum holds; otherwise say what the right spelling would be."""
    expected = to_checksum_address(address)
    if expected != address:
        raise InvalidWallet(f"EIP-55 checksum mismatch; did you mean {expected}?")
    return address


Wallet = Annotated[str, AfterValidator(validate_wallet)]
"""A pydantic field type for an EIP-55 checksummed address."""

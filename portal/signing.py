"""Who signed a text: EIP-191 `personal_sign` recovery, the way browser wallets sign messages.

A wallet signs keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message); recovering the public
key from the signature and hashing it gives the signer's address, so no key is ever stored or sent.
"""

import re

from Crypto.Hash import keccak
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError as KeyValidationError

from protocol.wallet import to_checksum_address

_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


class InvalidSignature(ValueError):
    """The signature is malformed or recovers no key."""


def personal_message_hash(message: bytes) -> bytes:
    prefix = b"\x19Ethereum Signed Message:\n" + str(len(message)).encode("ascii")
    return keccak.new(digest_bits=256, data=prefix + message).digest()


def normalize_signature(signature: str) -> str:
    """Lower-case 0x + 130 hex digits with v in {27, 28}: one spelling per signature, as the ledger stores it."""
    if not _SIGNATURE.fullmatch(signature):
        raise InvalidSignature("a signature is 0x followed by 130 hexadecimal digits (r, s, v)")
    raw = bytes.fromhex(signature[2:])
    v = raw[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28):
        raise InvalidSignature(f"recovery byte v={raw[64]} is not 0, 1, 27 or 28")
    return "0x" + raw[:64].hex() + format(v, "02x")


def recover_signer(message: str, signature: str) -> str:
    """The EIP-55 address whose key produced `signature` over `message` (personal_sign)."""
    normalized = bytes.fromhex(normalize_signature(signature)[2:])
    try:
        recovered = Signature(normalized[:64] + bytes([normalized[64] - 27])).recover_public_key_from_msg_hash(
            personal_message_hash(message.encode("utf-8"))
        )
    except (BadSignature, KeyValidationError) as exc:
        raise InvalidSignature(f"the signature recovers no key: {exc}") from None
    return to_checksum_address(recovered.to_checksum_address())

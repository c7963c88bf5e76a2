"""libp2p peer ids and their keys: whether a signature was made by the private key behind a peer id.

A peer id is a multihash of the node's public key, protobuf-encoded as libp2p writes it (`PublicKey {KeyType
key_type = 1; bytes data = 2}`, proto2, so the type is always written): SHA-256 for large keys (RSA, what
hivemind generates: peer ids starting `Qm`), the key itself ("identity" multihash) for keys of at most 42 bytes
(Ed25519 `12D3KooW...`, secp256k1 `16Uiu2...`). So whoever shows a public key that hashes to a peer id and a
signature that key verifies has shown control of that peer's private key; a record in the DHT shows nothing
(anyone can store one under any peer id).

Signatures follow libp2p's own conventions, so any libp2p implementation's `PrivKey.Sign` makes one: RSA
PKCS#1 v1.5 with SHA-256, Ed25519 (RFC 8032), secp256k1 ECDSA over SHA-256 with a DER signature.

It lives in `protocol/` because both sides need it: the node launcher (mesh) signs, the portal verifies, and
neither may import the other. The portal's light image has no `cryptography` (only hivemind brings it), so the
verification uses `pycryptodome` and `eth-keys`, both declared dependencies of the light set; nothing here
imports our rooms.
"""

import enum
import hashlib
from dataclasses import dataclass

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import eddsa, pkcs1_15
from Crypto.Util.asn1 import DerSequence
from eth_keys.backends.native.ecdsa import ecdsa_raw_verify
from eth_keys.datatypes import PublicKey as Secp256k1PublicKey

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_SHA2_256, _IDENTITY = 0x12, 0x00
MAX_INLINE_KEY_BYTES = 42
"""libp2p inlines a public key in its peer id (identity multihash) when its protobuf is at most this long."""
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192
"""go-libp2p's bounds: smaller keys are weak, larger ones only make verification slow."""


class KeyType(enum.IntEnum):
    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


class PeerKeyRefused(ValueError):
    """The key or signature does not prove control of the peer id; the text says why."""


@dataclass(frozen=True)
class PeerPublicKey:
    key_type: KeyType
    data: bytes
    """RSA: PKIX (SubjectPublicKeyInfo) DER; Ed25519: 32 bytes; secp256k1: 33-byte compressed point."""

    def to_protobuf(self) -> bytes:
        return key_protobuf(self.key_type, self.data)

    @classmethod
    def from_protobuf(cls, encoded: bytes) -> "PeerPublicKey":
        key_type, data = parse_key_protobuf(encoded)
        return cls(key_type, data)

    def peer_id(self) -> str:
        return peer_id_of(self.to_protobuf())


def key_protobuf(key_type: KeyType, data: bytes) -> bytes:
    """A libp2p `PublicKey` or `PrivateKey` protobuf (the same two fields; what `parse_key_protobuf` reads)."""
    return _field_varint(1, int(key_type)) + _field_bytes(2, data)


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    text = ""
    while number:
        number, digit = divmod(number, 58)
        text = _ALPHABET[digit] + text
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + text


def b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        digit = _ALPHABET.find(char)
        if digit < 0:
            raise PeerKeyRefused(f"{text!r} is not base58 (a libp2p peer id such as Qm... or 12D3KooW...)")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def peer_id_of(public_key_protobuf: bytes) -> str:
    """The base58 peer id of a protobuf-encoded public key, as libp2p derives it."""
    if len(public_key_protobuf) <= MAX_INLINE_KEY_BYTES:
        digest = bytes([_IDENTITY, len(public_key_protobuf)]) + public_key_protobuf
    else:
        digest = bytes([_SHA2_256, 32]) + hashlib.sha256(public_key_protobuf).digest()
    return b58encode(digest)


def inline_public_key(peer_id: str) -> bytes | None:
    """The protobuf public key a peer id carries itself (Ed25519, secp256k1), or None when it is a hash."""
    multihash = b58decode(peer_id)
    if len(multihash) >= 2 and multihash[0] == _IDENTITY and multihash[1] == len(multihash) - 2:
        return multihash[2:]
    return None


def parse_key_protobuf(encoded: bytes) -> tuple[KeyType, bytes]:
    """(type, data) of a libp2p `PublicKey` or `PrivateKey` protobuf (the same two fields)."""
    key_type: int | None = None
    data: bytes | None = None
    position = 0
    while position < len(encoded):
        tag, position = _varint(encoded, position)
        if tag == (1 << 3) | 0:
            key_type, position = _varint(encoded, position)
        elif tag == (2 << 3) | 2:
            length, position = _varint(encoded, position)
            if position + length > len(encoded):
                raise PeerKeyRefused("the key's protobuf is truncated")
            data, position = encoded[position : position + length], position + length
        else:
            raise PeerKeyRefused(f"the key's protobuf has an unexpected field (tag {tag})")
    if key_type is None or data is None:
        raise PeerKeyRefused("the key's protobuf lacks its type or its data")
    try:
        return KeyType(key_type), data
    except ValueError:
        raise PeerKeyRefused(f"unknown libp2p key type {key_type}") from None


def verify_peer_signature(peer_id: str, message: bytes, signature: bytes, public_key: bytes | None) -> None:
    """Return if `signature` over `message` was made by the private key of `peer_id`; else PeerKeyRefused.

    `public_key` is the protobuf-encoded public key; it may be omitted for peer ids that inline their key.
    """
    inline = inline_public_key(peer_id)
    encoded = public_key if public_key is not None else inline
    if encoded is None:
        raise PeerKeyRefused(f"peer id {peer_id} is a hash of its public key: send the public key with the signature")
    if peer_id_of(encoded) != peer_id:
        raise PeerKeyRefused(f"the public key given is not the key of peer id {peer_id} (it hashes to another id)")
    key = PeerPublicKey.from_protobuf(encoded)
    verifiers = {KeyType.RSA: _verify_rsa, KeyType.ED25519: _verify_ed25519, KeyType.SECP256K1: _verify_secp256k1}
    verifier = verifiers.get(key.key_type)
    if verifier is None:
        raise PeerKeyRefused(f"{key.key_type.name} peer keys are not supported (RSA, Ed25519 and secp256k1 are)")
    if not verifier(key.data, message, signature):
        raise PeerKeyRefused(f"the signature was not made by the key of peer id {peer_id}")


def _verify_rsa(der: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError):
        raise PeerKeyRefused("the RSA public key is not DER") from None
    if not RSA_MIN_BITS <= key.size_in_bits() <= RSA_MAX_BITS:
        raise PeerKeyRefused(f"RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {key.size_in_bits()}")
    try:
        pkcs1_15.new(key).verify(SHA256.new(message), signature)
    except ValueError:
        return False
    return True


def _verify_ed25519(raw: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key = eddsa.import_public_key(raw)
    except ValueError:
        raise PeerKeyRefused("the Ed25519 public key is not 32 valid bytes") from None
    try:
        eddsa.new(key, "rfc8032").verify(message, signature)
    except ValueError:
        return False
    return True


def _verify_secp256k1(compressed: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key = Secp256k1PublicKey.from_compressed_bytes(compressed)
    except Exception:  # noqa: BLE001 - eth-keys raises several types for a point off the curve
        raise PeerKeyRefused("the secp256k1 public key is not a compressed point") from None
    try:
        sequence = DerSequence()
        sequence.decode(signature, strict=True)
        r, s = sequence[0], sequence[1]
    except (ValueError, IndexError, TypeError):
        return False
    if len(sequence) != 2 or not isinstance(r, int) or not isinstance(s, int):
        return False
    return bool(ecdsa_raw_verify(hashlib.sha256(message).digest(), (r, s), key.to_bytes()))


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise PeerKeyRefused("the key's protobuf is truncated")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _encode_varint(number << 3) + _encode_varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _encode_varint((number << 3) | 2) + _encode_varint(len(value)) + value

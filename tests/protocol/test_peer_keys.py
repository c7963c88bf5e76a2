"""protocol/peer_keys.py: a signature counts for a peer id only if made by the key that peer id is a hash of."""

import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mesh.node_registration import NodeKey, private_node_key
from protocol.node_proof import InvalidNodeProof, NodeProof
from protocol.peer_keys import (
    KeyType,
    PeerKeyRefused,
    PeerPublicKey,
    b58decode,
    b58encode,
    inline_public_key,
    parse_key_protobuf,
    verify_peer_signature,
)
from tests.fixtures.node_keys import ed25519_node_key


def rsa_node_key(bits: int = 2048) -> NodeKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return private_node_key(KeyType.RSA, der)


def secp256k1_node_key() -> NodeKey:
    return private_node_key(KeyType.SECP256K1, os.urandom(32))


@pytest.fixture(scope="module")
def keys() -> dict[str, NodeKey]:
    return {"rsa": rsa_node_key(), "ed25519": ed25519_node_key(), "secp256k1": secp256k1_node_key()}


def test_peer_ids_inline_small_keys_and_hash_large_ones_as_libp2p_does(keys: dict[str, NodeKey]) -> None:
    assert keys["rsa"].peer_id.startswith("Qm") and inline_public_key(keys["rsa"].peer_id) is None
    assert keys["ed25519"].peer_id.startswith("12D3KooW")
    assert keys["secp256k1"].peer_id.startswith("16Uiu2")
    for name in ("ed25519", "secp256k1"):
        assert inline_public_key(keys[name].peer_id) == keys[name].public_key.to_protobuf()


@pytest.mark.parametrize("name", ["rsa", "ed25519", "secp256k1"])
def test_a_signature_verifies_only_for_its_own_message_and_peer_id(keys: dict[str, NodeKey], name: str) -> None:
    key = keys[name]
    public = key.public_key.to_protobuf()
    signature = key.sign(b"statement")
    verify_peer_signature(key.peer_id, b"statement", signature, public)
    with pytest.raises(PeerKeyRefused, match="not made by the key"):
        verify_peer_signature(key.peer_id, b"statement, altered", signature, public)
    other = next(k for n, k in keys.items() if n != name)
    with pytest.raises(PeerKeyRefused, match="not the key of peer id"):
        verify_peer_signature(other.peer_id, b"statement", signature, public)
    with pytest.raises(PeerKeyRefused):
        verify_peer_signature(key.peer_id, b"statement", other.sign(b"statement"), public)


def test_a_peer_id_that_hashes_its_key_needs_the_public_key(keys: dict[str, NodeKey]) -> None:
    key = keys["rsa"]
    with pytest.raises(PeerKeyRefused, match="send the public key"):
        verify_peer_signature(key.peer_id, b"m", key.sign(b"m"), None)


def test_rsa_keys_smaller_than_libp2ps_minimum_are_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = PeerPublicKey(KeyType.RSA, spki)
    signature = private.sign(b"m", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(PeerKeyRefused, match="2048"):
        verify_peer_signature(public.peer_id(), b"m", signature, public.to_protobuf())


def test_base58_round_trips_and_refuses_other_alphabets() -> None:
    for data in (b"", b"\0\0\x01", os.urandom(34), b"\x12\x20" + bytes(32)):
        assert b58decode(b58encode(data)) == data
    with pytest.raises(PeerKeyRefused, match="not base58"):
        b58decode("Qm0OIl")


@pytest.mark.parametrize(
    "encoded", [b"", b"\x08\x00", b"\x12\x05abc", b"\x08\x09\x12\x01a", b"\x18\x01", b"\x08\x80"], ids=repr
)
def test_malformed_key_protobufs_are_refused(encoded: bytes) -> None:
    with pytest.raises(PeerKeyRefused):
        parse_key_protobuf(encoded)


def test_a_node_proof_survives_its_link_encoding_and_refuses_anything_else() -> None:
    proof = NodeProof("Far Mesh node registration\nNode: x", "AAAA", "BBBB")
    assert NodeProof.decode(proof.encoded()) == proof
    for broken in ("%%%", "e30", "x" * 9000):  # not base64, `{}`, too long
        with pytest.raises(InvalidNodeProof):
            NodeProof.decode(broken)

"""A node's proof that it controls its peer id: the portal's registration statement, signed with the node's key.

The node launcher (`far-mesh register-node`, mesh/node_registration.py) asks the portal for a registration
statement naming the node's peer id and the wallet, signs its exact UTF-8 text with the node's libp2p private
key, and hands the proof to the wallet owner as a link to the portal's register page (`?proof=...`), or
submits it itself with the wallet's signature. The portal (portal/registrations.py) checks the signature
against the peer id (protocol/peer_keys.py). The statement binds the portal's domain and chain id, a nonce
used once and the time, so a proof is good for one registration, to one wallet, on one portal, for minutes.

This module is only the shape both sides agree on: field names, and the link encoding (base64url of JSON).
"""

import base64
import json
from dataclasses import dataclass

PROOF_PARAMETER = "proof"
"""The register page's query parameter that carries an encoded proof."""
MAX_ENCODED_CHARS = 8192
"""A statement (under 400 bytes), an RSA-8192 public key and signature fit well below this."""


class InvalidNodeProof(ValueError):
    """Not a node proof: the text says what is wrong."""


@dataclass(frozen=True)
class NodeProof:
    statement: str
    """The registration statement exactly as the portal wrote it."""
    node_public_key: str
    """Base64 of the node's protobuf-encoded libp2p public key (what the peer id hashes)."""
    node_signature: str
    """Base64 of the node key's signature over the statement's UTF-8 bytes."""

    def as_fields(self) -> dict[str, str]:
        """The fields of `POST /api/registrations` this proof fills (the wallet adds `signature`)."""
        return {
            "statement": self.statement,
            "node_public_key": self.node_public_key,
            "node_signature": self.node_signature,
        }

    def encoded(self) -> str:
        """The proof as one URL-safe word, for the register page's `?proof=` parameter."""
        text = json.dumps(self.as_fields(), separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, encoded: str) -> "NodeProof":
        if len(encoded) > MAX_ENCODED_CHARS:
            raise InvalidNodeProof(f"a node proof is at most {MAX_ENCODED_CHARS} characters")
        try:
            fields = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        except ValueError:  # binascii.Error, JSON or text that is not ASCII
            raise InvalidNodeProof("the node proof is not base64url JSON (copy the whole link)") from None
        if not isinstance(fields, dict) or not all(
            isinstance(fields.get(name), str) for name in ("statement", "node_public_key", "node_signature")
        ):
            raise InvalidNodeProof("the node proof lacks its statement, public key or signature")
        return cls(fields["statement"], fields["node_public_key"], fields["node_signature"])


def b64decode_field(value: str, name: str) -> bytes:
    """Standard base64 (padding optional) of a proof field, or InvalidNodeProof naming the field."""
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII at all
        raise InvalidNodeProof(f"{name} is not base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()

"""`far-mesh register-node`: the node proves it runs under its peer id by signing its registration with its key.

The portal registers a node to a wallet only with two signatures on one statement (peer id, wallet, the
portal's domain and chain id, a nonce used once, the time): the wallet's (consent to be paid) and the node's
own libp2p key's (control of the peer id: the peer id is a hash of that key). The wallet the node announces in
the DHT is never evidence, since anyone can store a record under any peer id.

So the operator runs, on the node's machine:

    far-mesh register-node --identity ~/.cache/far-mesh/node-identity.key \\
        --portal-url https://portal.example --wallet 0x...

which asks the portal for the statement, signs it with the key in `--identity` (the file `far-mesh node
--identity` created: hivemind's format, a libp2p `PrivateKey` protobuf), and prints a link to the portal's
register page carrying the statement and the node's signature; the wallet signs there. With
`--wallet-signature-stdin` it prints the statement instead and reads the wallet's `personal_sign` signature
from stdin, then submits both itself (no browser needed). The link and the statement are valid for the
portal's nonce lifetime (PORTAL_NONCE_TTL_S, 5 minutes by default) and register once.

Only the standard library talks to the portal (as mesh/node_earnings.py does); signing uses `cryptography`,
which hivemind already brings into the node image, imported only when a key is used: `far-mesh` registers this
command in the light image too, which has no hivemind.
"""

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

from protocol.node_proof import PROOF_PARAMETER, NodeProof, b64encode
from protocol.peer_keys import KeyType, PeerKeyRefused, PeerPublicKey, parse_key_protobuf

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

EXIT_REFUSED = 2
TIMEOUT_S = 15.0


class RegistrationRefused(Exception):
    """The node could not be registered: no usable key, an unreachable portal, or the portal's refusal."""


@dataclass(frozen=True)
class NodeKey:
    """A node's libp2p private key, read from its identity file, and the public key its peer id is made from."""

    private_key: "PrivateKey"
    public_key: PeerPublicKey

    @property
    def peer_id(self) -> str:
        return self.public_key.peer_id()

    def sign(self, message: bytes) -> bytes:
        """libp2p's signature for this key type (what protocol.peer_keys verifies)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(message)
        return self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))


def load_identity(path: Path) -> NodeKey:
    """The key in an identity file as hivemind (`P2P.generate_identity`) and go-libp2p write them."""
    try:
        encoded = path.expanduser().read_bytes()
    except OSError as exc:
        raise RegistrationRefused(f"cannot read --identity {path}: {exc.strerror}") from None
    try:
        key_type, data = parse_key_protobuf(encoded)
        return private_node_key(key_type, data)
    except (PeerKeyRefused, ValueError, TypeError) as exc:
        raise RegistrationRefused(f"--identity {path} is not a libp2p private key ({exc})") from None


def private_node_key(key_type: KeyType, data: bytes) -> NodeKey:
    """A key from the data of a libp2p `PrivateKey` protobuf (RSA: PKCS#1 DER; Ed25519: seed and public key;
    secp256k1: the 32-byte scalar)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type is KeyType.RSA:
        rsa_key = serialization.load_der_private_key(data, password=None)
        if not isinstance(rsa_key, rsa.RSAPrivateKey):
            raise ValueError("the RSA key's data is another kind of key")
        public = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return NodeKey(rsa_key, PeerPublicKey(KeyType.RSA, public))
    if key_type is KeyType.ED25519:  # libp2p stores the 32-byte seed followed by the public key
        ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(data[:32])
        raw = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return NodeKey(ed_key, PeerPublicKey(KeyType.ED25519, raw))
    if key_type is KeyType.SECP256K1:
        ec_key = ec.derive_private_key(int.from_bytes(data, "big"), ec.SECP256K1())
        point = ec_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        return NodeKey(ec_key, PeerPublicKey(KeyType.SECP256K1, point))
    raise ValueError(f"{key_type.name} keys are not supported")


def sign_statement(key: NodeKey, statement: str) -> NodeProof:
    """The node's proof for `statement`, which must name this node (so a misrouted statement is not signed)."""
    if f"\nNode: {key.peer_id}\n" not in statement:
        raise RegistrationRefused(f"the portal's statement does not name this node ({key.peer_id}); not signing it")
    return NodeProof(
        statement=statement,
        node_public_key=b64encode(key.public_key.to_protobuf()),
        node_signature=b64encode(key.sign(statement.encode())),
    )


def registration_link(portal_url: str, proof: NodeProof) -> str:
    """The portal's register page with the node's proof: the wallet signs there."""
    return f"{portal_url.rstrip('/')}/register?{PROOF_PARAMETER}={proof.encoded()}"


def request_statement(portal_url: str, peer_id: str, wallet: str, timeout_s: float = TIMEOUT_S) -> str:
    """A fresh registration statement from the portal for `peer_id` and `wallet`."""
    document = _post(
        portal_url, "/api/statements", {"kind": "register", "node_id": peer_id, "wallet": wallet}, timeout_s
    )
    statement = document.get("statement")
    if not isinstance(statement, str):
        raise RegistrationRefused(f"the portal at {portal_url} answered without a statement")
    return statement


def prepare_registration(identity: Path, portal_url: str, wallet: str, timeout_s: float = TIMEOUT_S) -> NodeProof:
    """Ask the portal for the statement registering this node to `wallet`, and sign it with the node's key."""
    key = load_identity(identity)
    return sign_statement(key, request_statement(portal_url, key.peer_id, wallet, timeout_s))


def submit_registration(
    portal_url: str, proof: NodeProof, wallet_signature: str, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Post the node's proof with the wallet's signature; the portal's answer (node_id, wallet, outcome)."""
    return _post(portal_url, "/api/registrations", proof.as_fields() | {"signature": wallet_signature}, timeout_s)


def register_node(
    identity: Path,
    portal_url: str,
    wallet: str,
    sign_with_wallet: Callable[[str], str],
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """The whole registration: the node signs, `sign_with_wallet` returns the wallet's signature of the text."""
    proof = prepare_registration(identity, portal_url, wallet, timeout_s)
    return submit_registration(portal_url, proof, sign_with_wallet(proof.statement), timeout_s)


def announce_registration(
    identity: Path, portal_url: str, wallet: str, *, out: TextIO | None = None, timeout_s: float = TIMEOUT_S
) -> str | None:
    """For `far-mesh node --portal-url` at start-up: print the signed registration link unless already registered.

    Never raises: a node serves whether or not the portal answers; what happened is printed (to `out`, default
    stdout). Returns the link.
    """
    out = out or sys.stdout
    try:
        key = load_identity(identity)
        registered = _registered_wallet(portal_url, key.peer_id, timeout_s)
        if registered == wallet:
            print(f"far-mesh node: registered to {wallet}; its earnings are paid there", file=out, flush=True)
            return None
        proof = sign_statement(key, request_statement(portal_url, key.peer_id, wallet, timeout_s))
    except RegistrationRefused as exc:
        print(
            f"far-mesh node: cannot prepare its registration now ({exc}); later, run `far-mesh register-node "
            f"--identity {identity} --portal-url {portal_url} --wallet {wallet}`",
            file=out,
            flush=True,
        )
        return None
    link = registration_link(portal_url, proof)
    now = (
        f"paid to {registered}, its registered wallet (moving it also needs that wallet's transfer statement)"
        if registered
        else "held until it is registered"
    )
    print(
        f"far-mesh node: its earnings are {now}; to register it to {wallet}, open within minutes {link} "
        f"(or later run `far-mesh register-node --identity {identity} --portal-url {portal_url} --wallet {wallet}`)",
        file=out,
        flush=True,
    )
    return link


def add_command(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`far-mesh register-node`, for mesh/commands.py's `register`."""
    command = subparsers.add_parser(
        "register-node",
        help="register a node to a wallet: the node signs with its libp2p key, the wallet signs in the portal",
    )
    command.add_argument("--identity", type=Path, required=True, help="the node's key file (far-mesh node --identity)")
    command.add_argument("--portal-url", required=True, help="the portal, e.g. https://portal.example")
    command.add_argument("--wallet", required=True, help="EIP-55 address the node's earnings are paid into")
    command.add_argument(
        "--wallet-signature-stdin",
        action="store_true",
        help="print the statement, read the wallet's personal_sign signature of it from stdin, and submit both "
        "(default: print a link where the wallet signs in the browser)",
    )
    command.set_defaults(handler=run_register_node)


def run_register_node(args: argparse.Namespace, *, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """`far-mesh register-node`: print the signed link, or read the wallet's signature and submit both."""
    from protocol.wallet import InvalidWallet, validate_wallet

    stdin, out = stdin or sys.stdin, out or sys.stdout
    try:
        wallet = validate_wallet(args.wallet)
        proof = prepare_registration(args.identity, args.portal_url, wallet)
        if not args.wallet_signature_stdin:
            print(f"far-mesh register-node: open within minutes, with wallet {wallet} connected:", file=out)
            print(registration_link(args.portal_url, proof), file=out, flush=True)
            return 0
        print(f"far-mesh register-node: sign this statement with wallet {wallet} (personal_sign):", file=out)
        print(proof.statement, file=out)
        print("far-mesh register-node: its signature (0x...):", file=out, flush=True)
        answer = submit_registration(args.portal_url, proof, stdin.readline().strip())
    except (RegistrationRefused, InvalidWallet) as exc:
        print(f"far-mesh register-node: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(
        f"far-mesh register-node: node {answer.get('node_id')} {answer.get('outcome')} to {answer.get('wallet')}",
        file=out,
    )
    return 0


def _registered_wallet(portal_url: str, peer_id: str, timeout_s: float) -> str | None:
    url = f"{portal_url.rstrip('/')}/api/nodes/{urllib.parse.quote(peer_id, safe='')}/earnings"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise RegistrationRefused(f"the portal at {portal_url} answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise RegistrationRefused(f"the portal at {portal_url} did not answer ({exc})") from None
    wallet = document.get("registered_wallet") if isinstance(document, dict) else None
    return wallet if isinstance(wallet, str) else None


def _post(portal_url: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    request = urllib.request.Request(
        portal_url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RegistrationRefused(f"the portal refused ({exc.code}): {_error_message(exc)}") from None
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors; a body that is not JSON a ValueError
        raise RegistrationRefused(f"the portal at {portal_url} did not answer ({exc})") from None
    if not isinstance(document, dict):
        raise RegistrationRefused(f"the portal at {portal_url} answered something else than a JSON object")
    return document


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
        return str(body["error"]["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return str(error.reason)

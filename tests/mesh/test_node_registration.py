"""mesh/node_registration.py: `far-mesh register-node` signs the portal's statement with the node's own key."""

import argparse
import io
from pathlib import Path

import asyncpg
import pytest

from mesh import dht_node
from mesh.node_registration import (
    EXIT_REFUSED,
    RegistrationRefused,
    add_command,
    announce_registration,
    load_identity,
    sign_statement,
)
from protocol.node_proof import b64decode_field
from protocol.peer_keys import verify_peer_signature
from tests.fixtures.ledger import unique_id
from tests.fixtures.node_keys import hivemind_identity, known_keyed_node
from tests.fixtures.portal import PortalServer, SigningWallet


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_the_key_of_an_identity_file_far_mesh_node_created_has_the_peer_id_hivemind_serves_under(
    tmp_path: Path,
) -> None:
    identity = tmp_path / "node-identity.key"
    dht_node.create_identity(identity)  # what `far-mesh node` does on first start
    key = load_identity(identity)
    assert key.peer_id == dht_node.peer_id_of(identity)
    proof = sign_statement(key, f"Far Mesh node registration\nNode: {key.peer_id}\nWallet: 0x")
    signature, public_key = b64decode_field(proof.node_signature, "s"), b64decode_field(proof.node_public_key, "k")
    verify_peer_signature(key.peer_id, proof.statement.encode(), signature, public_key)


def test_an_unreadable_or_foreign_identity_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(RegistrationRefused, match="cannot read --identity"):
        load_identity(tmp_path / "missing.key")
    (tmp_path / "other.key").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(RegistrationRefused, match="is not a libp2p private key"):
        load_identity(tmp_path / "other.key")


def test_the_node_never_signs_a_statement_naming_another_node(tmp_path: Path) -> None:
    key = hivemind_identity(tmp_path / "id.key")
    with pytest.raises(RegistrationRefused, match="does not name this node"):
        sign_statement(key, "Far Mesh node registration\nNode: QmSomeoneElse\nWallet: 0x")


def test_at_start_up_an_unreachable_portal_is_said_and_the_node_goes_on(tmp_path: Path) -> None:
    identity = tmp_path / "id.key"
    hivemind_identity(identity)
    out = io.StringIO()
    wallet = SigningWallet.named("operator").address
    assert announce_registration(identity, "http://127.0.0.1:9", wallet, out=out, timeout_s=2) is None
    assert "cannot prepare its registration now" in out.getvalue() and "far-mesh register-node" in out.getvalue()


async def test_the_command_registers_with_the_wallets_signature_read_from_stdin(
    portal_server: PortalServer, ledger: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = tmp_path / "id.key"
    key = hivemind_identity(identity)
    operator = SigningWallet.named(unique_id("operator"))
    await known_keyed_node(ledger, key, None)
    argv = ["register-node", "--identity", str(identity), "--portal-url", portal_server.url, "--wallet"]

    args = parse([*argv, operator.address])
    assert args.handler(args) == 0
    link = capsys.readouterr().out.splitlines()[-1]
    assert link.startswith(f"{portal_server.url}/register?proof=")

    class WalletAtTheKeyboard(io.StringIO):
        """Answers with the wallet's signature of the statement the command printed (as a person pastes it)."""

        def readline(self, size: int | None = -1) -> str:
            printed = capsys.readouterr().out
            statement = printed.split("(personal_sign):\n")[1].split("\nfar-mesh register-node:")[0]
            return operator.personal_sign(statement) + "\n"

    args = parse([*argv, operator.address, "--wallet-signature-stdin"])
    assert args.handler(args, stdin=WalletAtTheKeyboard()) == 0
    assert f"node {key.peer_id} registered to {operator.address}" in capsys.readouterr().out
    assert await ledger.fetchval("SELECT far_registered_wallet($1)", key.peer_id) == operator.address

    args = parse([*argv, operator.address.lower()])
    assert args.handler(args) == EXIT_REFUSED  # not an EIP-55 address: refused before asking the portal

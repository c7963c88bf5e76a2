"""`far-mesh node --portal-url`: where to register the node, then what it earned, read from the portal's JSON."""

import asyncio
import os
import signal
import sys
import threading
from io import StringIO
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cli.main import main
from mesh.node import NodeConfig, server_args
from mesh.node_earnings import earnings_line, fetch_earnings, registration_url, status_line
from mesh.node_keeper import NodeKeeper
from mesh.restarts import RestartPolicy
from protocol.catalog import ModelSpec
from tests.fixtures.ledger import unique_id
from tests.fixtures.portal import PortalServer, seed_earnings

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"
PEERS = ["/ip4/127.0.0.1/tcp/31337/p2p/QmNxzyESFVBkv7EafLn8yavWPfXrgxAzyskr7cai5mxaSA"]
DOCUMENT = {
    "node_id": "12D3KooWexample",
    "registered_wallet": WALLET,
    "totals": {
        "tokens_contributed": 1200,
        "earned_far": "0.12",
        "paid_far": "0.1",
        "in_payment_far": "0",
        "unpaid_far": "0.02",
    },
}


def test_the_quantization_reaches_the_petals_server() -> None:
    args = server_args(NodeConfig(model_source="org/model", initial_peers=tuple(PEERS), quant_type="nf4"))
    assert args[args.index("--quant_type") + 1] == "nf4"
    assert "--quant_type" not in server_args(NodeConfig(model_source="org/model", initial_peers=tuple(PEERS)))


def test_an_earnings_line_says_what_was_earned_paid_and_owed_and_to_whom() -> None:
    line = earnings_line(DOCUMENT, portal_url="https://portal.example", peer_id="12D3KooWexample")
    assert line == (
        f"far-mesh node: tokens served 1200, earned 0.12 FAR (paid 0.1, in payment 0, unpaid 0.02); paid to {WALLET}"
    )
    unregistered = earnings_line(
        DOCUMENT | {"registered_wallet": None}, portal_url="https://portal.example/", peer_id="12D3KooWexample"
    )
    assert unregistered.endswith(
        "not registered, so held: register at https://portal.example/register?node_id=12D3KooWexample"
    )
    assert "did not answer" in earnings_line(None, portal_url="https://portal.example", peer_id="p")


async def test_the_earnings_come_from_a_running_portal(portal_server: PortalServer, ledger: asyncpg.Connection) -> None:
    node = unique_id("12D3KooWlauncher")
    await ledger.execute("INSERT INTO far_nodes (node_id, wallet) VALUES ($1, $2)", node, WALLET)
    await seed_earnings(ledger, {node: 1}, sessions=2)
    document = await asyncio.to_thread(fetch_earnings, portal_server.url, node)
    assert document is not None and document["node_id"] == node and document["registered_wallet"] is None
    line = earnings_line(document, portal_url=portal_server.url, peer_id=node)
    assert "tokens served 26, earned 0.002 FAR" in line and registration_url(portal_server.url, node) in line
    assert await asyncio.to_thread(fetch_earnings, "http://127.0.0.1:9", node) is None  # nothing listens there


def test_the_launcher_prints_a_status_line_while_the_server_runs() -> None:
    out = StringIO()
    calls: list[tuple[str, str]] = []

    def fetch(url: str, peer: str) -> dict[str, Any]:
        calls.append((url, peer))
        return DOCUMENT

    command = [sys.executable, "-c", "import time; time.sleep(1.0)"]

    def line(restarts: int) -> str:
        return earnings_line(fetch("http://portal", "peer"), portal_url="http://portal", peer_id="peer")

    keeper = NodeKeeper(command, status_line=line, every_s=0.3, out=out)
    assert keeper.run() == 0
    assert len(calls) >= 2 and set(calls) == {("http://portal", "peer")}
    assert out.getvalue().splitlines()[0].startswith("far-mesh node: tokens served 1200")


def test_the_status_line_counts_restarts_once_there_were_any(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mesh.node_earnings.fetch_earnings", lambda url, peer: DOCUMENT)

    assert "restarts" not in status_line("http://portal", "peer", 0)
    assert status_line("http://portal", "peer", 2).endswith("; restarts 2")


def test_a_crashed_server_is_restarted_with_the_same_command_until_the_launcher_gives_up(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    command = [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"]
    policy = RestartPolicy(first_delay_s=0.05, max_delay_s=0.1, limit=3, window_s=60)
    out = StringIO()

    assert NodeKeeper(command, policy=policy, out=out).run() == 3

    assert starts.read_text() == "xxx"  # started, then restarted twice with the same command (identity, blocks)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("far-mesh node: the server exited with status 3; restart 1 in")
    assert lines[1].startswith("far-mesh node: the server exited with status 3; restart 2 in")
    assert "giving up (restarts 2)" in lines[2]


def test_a_sigterm_to_the_launcher_stops_the_server_it_runs() -> None:
    command = [sys.executable, "-c", "import time; time.sleep(30)"]
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        status = NodeKeeper(command).run()
    finally:
        timer.cancel()
    assert status == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the launcher's handler is gone with the server


def test_an_unreadable_identity_refuses_to_start(
    tiny_models: tuple[ModelSpec, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = tmp_path / "node.key"
    identity.write_bytes(b"not a key")
    args = ["node", "--initial-peers", *PEERS, "--wallet", WALLET, "--model", str(tiny_models[0].source)]
    assert main([*args, "--identity", str(identity)]) == 2
    assert "not a libp2p private key" in capsys.readouterr().err

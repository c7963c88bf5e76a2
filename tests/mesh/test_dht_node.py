"""`far-mesh dht`: a bootstrap whose peer id survives restarts, that clients join; placeholders are refused."""

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mesh.dht_node import DhtConfig, create_identity, dht_command, peer_id_of, refuse_placeholders
from mesh.ports import free_port, port_is_taken
from mesh.process_groups import signal_group
from protocol.settings import SettingsError
from workers.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


def far_mesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_together(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Each command's result, the commands run at the same time: each spends seconds importing hivemind and
    torch, which a second core does alongside the first."""
    processes = [
        subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands
    ]
    results = []
    for command, process in zip(commands, processes, strict=True):
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


@contextmanager
def running_dht(identity: Path, port: int) -> Iterator[str]:
    """`far-mesh dht` on 127.0.0.1:port until the block ends; yields the peer id it printed."""
    process = subprocess.Popen(
        far_mesh("dht", "--identity", str(identity), "--host", "127.0.0.1", "--port", str(port)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("far-mesh dht: peer_id="), first
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_is_taken(port):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the bootstrap did not listen in time"
            time.sleep(0.1)
        yield first.strip().partition("peer_id=")[2]
    finally:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        if process.stdout:
            process.stdout.close()


def test_a_new_identity_is_created_once_and_its_peer_id_printed(tmp_path: Path) -> None:
    identity = tmp_path / "dht.key"
    first = subprocess.run(
        far_mesh("dht", "--identity", str(identity), "--new-identity", "--show-peer-id"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    again = subprocess.run(
        far_mesh("dht", "--identity", str(identity), "--new-identity", "--show-peer-id"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert first.stdout.strip() == again.stdout.strip() == peer_id_of(identity)
    assert identity.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"
    # The key and its peer id are made without hivemind (torch): hivemind reads the same file as the same peer.
    from hivemind.p2p import PeerID

    assert str(PeerID.from_identity(identity.read_bytes()).to_base58()) == first.stdout.strip()


def test_a_missing_or_corrupt_identity_is_refused_before_anything_starts(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_bytes(b"not a key")
    missing, refused = run_together(
        far_mesh("dht", "--identity", str(tmp_path / "absent.key")), far_mesh("dht", "--identity", str(corrupt))
    )
    assert missing.returncode == 2 and "cannot read --identity" in missing.stderr
    assert refused.returncode == 2 and "is not a libp2p private key" in refused.stderr


def test_a_key_that_is_not_the_expected_peer_is_refused(tmp_path: Path) -> None:
    identity = tmp_path / "dht.key"
    create_identity(identity)  # as `--new-identity` does (the test above runs that command)
    expected, other = run_together(
        far_mesh("dht", "--identity", str(identity), "--expect-peer-id", peer_id_of(identity), "--show-peer-id"),
        far_mesh("dht", "--identity", str(identity), "--expect-peer-id", "QmSomeoneElse"),
    )
    assert expected.returncode == 0 and expected.stdout.strip() == peer_id_of(identity)
    assert other.returncode == 2 and "not the expected 'QmSomeoneElse'" in other.stderr


def test_the_command_runs_petals_run_dht_with_the_identity_and_announced_addresses() -> None:
    config = DhtConfig(identity=Path("/id"), port=31337, announce_hosts=("far-mesh-dht-0.far-mesh-dht", "10.1.2.3"))
    command = dht_command(config)
    assert command[1:4] == ["-m", "mesh.petals_cli", "run_dht"]
    assert command[command.index("--identity_path") + 1] == "/id"
    assert command[command.index("--host_maddrs") + 1] == "/ip4/0.0.0.0/tcp/31337"
    announced = command[command.index("--announce_maddrs") + 1 :]
    assert announced == ["/dns4/far-mesh-dht-0.far-mesh-dht/tcp/31337", "/ip4/10.1.2.3/tcp/31337"]
    assert config.initial_peers_for_clients("QmX") == [f"{a}/p2p/QmX" for a in announced]


@pytest.mark.parametrize(
    "placeholder",
    [
        "/dns4/far-mesh-dht/tcp/31337/p2p/SET_THE_BOOTSTRAP_PEER_ID",
        "/ip4/1.2.3.4/tcp/31337/p2p/Qm...",
        "/dns4/far-mesh-dht-0.far-mesh-dht/tcp/31337/p2p/$(FAR_MESH_DHT_PEER_ID)",
        "/dns4/<your-dht-host>/tcp/31337/p2p/QmAbc",
        "/ip4/10.0.0.1/tcp/31337/p2p/CHANGE_ME",
    ],
)
def test_a_worker_refuses_a_placeholder_bootstrap_at_start_up_naming_the_variable(placeholder: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        refuse_placeholders([placeholder])
    with pytest.raises(SettingsError, match=r"FAR_MESH_DHT_BOOTSTRAP: .*placeholder"):
        WorkerSettings.from_env(far_mesh_dht_bootstrap=f"/ip4/127.0.0.1/tcp/1/p2p/QmReal,{placeholder}")


def test_node_refuses_a_placeholder_initial_peer(tmp_path: Path) -> None:
    result = subprocess.run(
        far_mesh(
            "node",
            "--wallet",
            "0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1",
            "--model",
            str(tmp_path),
            "--initial-peers",
            "/dns4/far-mesh-dht/tcp/31337/p2p/SET_THE_BOOTSTRAP_PEER_ID",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "placeholder" in result.stderr


@pytest.mark.swarm
def test_the_bootstrap_keeps_its_peer_id_across_restarts_and_clients_join_through_it(tmp_path: Path) -> None:
    import hivemind
    from hivemind.utils.timed_storage import get_dht_time

    identity = tmp_path / "dht.key"
    create_identity(identity)  # as `--new-identity` does (tested above)
    port = free_port()
    with running_dht(identity, port) as first_peer_id:
        pass
    with running_dht(identity, port) as peer_id:
        assert peer_id == first_peer_id == peer_id_of(identity)
        # One client stores through the bootstrap by its DNS name, another reads it back by IP: both joined.
        writer = hivemind.DHT(
            initial_peers=[f"/dns4/localhost/tcp/{port}/p2p/{peer_id}"],
            client_mode=True,
            start=True,
            host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        )
        reader = hivemind.DHT(
            initial_peers=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"],
            client_mode=True,
            start=True,
            host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        )
        try:
            assert writer.store("far-mesh-dht-test", "joined", get_dht_time() + 60)
            found = reader.get("far-mesh-dht-test", latest=True)
            assert found is not None and found.value == "joined"
        finally:
            writer.shutdown()
            reader.shutdown()


def test_a_node_defaults_its_initial_peers_to_the_workers_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import build_parser

    bootstrap = "/dns4/far-mesh-dht-0.far-mesh-dht/tcp/31337/p2p/QmA,/ip4/10.0.0.2/tcp/31337/p2p/QmB"
    monkeypatch.setenv("FAR_MESH_DHT_BOOTSTRAP", bootstrap)
    args = build_parser().parse_args(["node", "--wallet", "0x0", "--model", "m"])
    assert args.initial_peers == bootstrap.split(",")
    monkeypatch.delenv("FAR_MESH_DHT_BOOTSTRAP")
    with pytest.raises(SystemExit):  # without either, --initial-peers is required, as before
        build_parser().parse_args(["node", "--wallet", "0x0", "--model", "m"])

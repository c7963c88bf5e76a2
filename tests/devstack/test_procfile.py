"""The Procfile is the one list of process commands; `far-mesh dev` and the deploy manifests read it."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import honcho.environ  # type: ignore[import-untyped]
import pytest
from pydantic import SecretStr

from accounting.commands import _migrate_once_postgres_answers
from cli.main import build_parser
from devstack.procfile import ProcfileError, commands_for, read_procfile
from devstack.procfile_env import DEFAULT_PORTS, free_ports_for, render, swarm_models
from mesh.dht_node import dht_host_port
from mesh.ports import LOWEST_KEPT_PORT
from payouts.payer import _connect_when_reachable
from payouts.settings import PayoutSettings
from workers.service import _wait_for_dht

REPO_PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


def test_every_procfile_line_names_a_real_far_mesh_subcommand() -> None:
    subcommands = dict(build_parser()._subparsers._group_actions[0].choices or {})  # type: ignore[union-attr]
    for name, argv in read_procfile(REPO_PROCFILE).items():
        assert argv[0] == "far-mesh", name
        assert argv[1] in subcommands, f"Procfile {name}: far-mesh has no {argv[1]!r} subcommand"


def test_accounting_migrates_before_consuming_and_no_line_runs_once(tmp_path: Path) -> None:
    # honcho stops every process when one ends: a run-once `release: far-mesh migrate` line stopped them all.
    processes = read_procfile(REPO_PROCFILE)
    assert "release" not in processes
    assert processes["accounting"] == ["far-mesh", "accounting", "--migrate"]
    assert not [argv for argv in processes.values() if argv[1] == "migrate"]


def test_a_malformed_line_is_reported_with_its_number(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("web: far-mesh gateway\n\n# comment\nthis is not a process line\n")
    with pytest.raises(ProcfileError, match=r"Procfile:4: expected 'name: command'"):
        read_procfile(procfile)


def test_asking_for_a_missing_process_type_names_it(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("web: far-mesh gateway\n")
    assert commands_for(procfile, ["web"]) == {"web": ["far-mesh", "gateway"]}
    with pytest.raises(ProcfileError, match="no worker line"):
        commands_for(procfile, ["web", "worker"])


# `honcho start` runs every line together, with the .env of `far-mesh procfile-env`
# (the whole run: tests/deploy/test_procfile_honcho.py).


def test_the_catalog_written_for_honcho_sells_what_the_swarm_line_serves() -> None:
    swarm = read_procfile(REPO_PROCFILE)["swarm"]
    assert swarm_models(REPO_PROCFILE) == [swarm[swarm.index("--model") + 1]]


def test_env_values_survive_honchos_dotenv_parser() -> None:
    # honcho splits each .env line as a shell would: an unquoted JSON catalog would lose its quotes and spaces
    values = {
        "FAR_MESH_MODELS": json.dumps([{"model_id": "far tiny #4", "source": "/a b/c", "price_per_token_far": None}]),
        "PORTAL_SECRET_KEY": "a'b\"c$d",
    }
    assert honcho.environ.parse(render(values)) == values


def test_free_ports_are_distinct_and_below_the_range_outgoing_connections_take_theirs() -> None:
    # A port from the ephemeral range could be an outgoing connection's before its process listened on it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports_for(DEFAULT_PORTS)
    assert set(ports) == set(DEFAULT_PORTS)
    assert len(set(ports.values())) == len(ports)
    assert all(LOWEST_KEPT_PORT <= port < low for port in ports.values()), ports


def test_the_dht_line_takes_its_identity_and_loopback_port_from_the_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAR_MESH_DHT_IDENTITY", str(tmp_path / "dht.key"))
    monkeypatch.setenv("FAR_MESH_DHT_HOST", "127.0.0.1")
    monkeypatch.setenv("FAR_MESH_DHT_PORT", "40123")
    argv = read_procfile(REPO_PROCFILE)["dht"]
    args = build_parser().parse_args(argv[1:])
    assert (args.identity, args.host, args.port, args.new_identity) == (tmp_path / "dht.key", "127.0.0.1", 40123, True)


def test_the_swarm_line_joins_the_bootstrap_the_workers_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = "/ip4/127.0.0.1/tcp/40123/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    monkeypatch.setenv("FAR_MESH_DHT_BOOTSTRAP", bootstrap)
    args = build_parser().parse_args(read_procfile(REPO_PROCFILE)["swarm"][1:])
    assert args.initial_peers == [bootstrap] and args.dht_port is None
    assert dht_host_port(bootstrap) == ("127.0.0.1", 40123)


async def test_a_worker_started_before_the_dht_waits_for_it_then_goes_on() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        peers = [f"/ip4/127.0.0.1/tcp/{port}/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"]
        waiting = asyncio.create_task(_wait_for_dht(peers, asyncio.Event()))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # nothing listens yet: it waits instead of failing
        reserved.listen()
        assert await asyncio.wait_for(waiting, timeout=10) is True


async def test_a_worker_waiting_for_the_dht_stops_on_sigterm() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(_wait_for_dht(["/ip4/127.0.0.1/tcp/1/p2p/QmNothingListens"], stop))
    await asyncio.sleep(0.2)
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=10) is False


def test_payouts_without_a_chain_say_so_and_idle_until_sigterm(tmp_path: Path) -> None:
    # honcho stops every process when one exits: a payer with nothing configured must not exit
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAR_MESH_")}
    env |= {"POSTGRES_URL": "postgresql://nobody@127.0.0.1:1/none", "PYTHONPATH": str(REPO_PROCFILE.parent)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "payouts", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "payouts serve: no chain configured" in line and "CHAIN_TOKEN_ADDRESS" in line
        time.sleep(0.5)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_a_payout_setting_given_alone_still_stops_the_payer_with_the_missing_names() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAR_MESH_")}
    env |= {
        "POSTGRES_URL": "postgresql://nobody@127.0.0.1:1/none",
        "PYTHONPATH": str(REPO_PROCFILE.parent),
        "CHAIN_TOKEN_ADDRESS": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "payouts", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "CHAIN_BATCH_CONTRACT_ADDRESS" in done.stderr


async def test_the_accounting_line_waits_for_postgresql_before_migrating(migrated_postgres_dsn: str) -> None:
    with socket.socket() as reserved:  # bound, not listening: connections are refused, as while PostgreSQL starts
        reserved.bind(("127.0.0.1", 0))
        waiting = asyncio.create_task(
            _migrate_once_postgres_answers(f"postgresql://postgres@127.0.0.1:{reserved.getsockname()[1]}/postgres")
        )
        await asyncio.sleep(1.0)
        assert not waiting.done()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert await asyncio.wait_for(_migrate_once_postgres_answers(migrated_postgres_dsn), timeout=10) == 0


@pytest.mark.parametrize(
    "passing",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ],
    ids=type,
)
async def test_the_accounting_line_waits_out_a_postgresql_that_answers_but_cannot_migrate_yet(
    monkeypatch: pytest.MonkeyPatch, passing: Exception
) -> None:
    # The chaos soak restarted accounting while PostgreSQL restarted: "shutting down" counted as an answer, so the
    # line migrated at once and exited 1, where a moment later it would have run.
    tries: list[str] = []

    async def migrations(dsn: str) -> list[str]:
        tries.append(dsn)
        if len(tries) == 1:
            raise passing
        return []

    monkeypatch.setattr("schema.migrate.apply_migrations", migrations)
    monkeypatch.setattr("protocol.backoff.Backoff.sleep", _no_wait)
    assert await _migrate_once_postgres_answers("postgresql://ledger") == 0
    assert tries == ["postgresql://ledger"] * 2


async def test_the_accounting_line_exits_1_on_a_migration_that_fails_without_retrying_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from schema.migrate import MigrationError

    tries: list[str] = []

    async def migrations(dsn: str) -> list[str]:
        tries.append(dsn)
        raise MigrationError("0028_x.sql failed and was rolled back: syntax error")

    monkeypatch.setattr("schema.migrate.apply_migrations", migrations)
    assert await _migrate_once_postgres_answers("postgresql://ledger") == 1
    assert len(tries) == 1
    assert "0028_x.sql failed" in caplog.text


async def _no_wait(_self: object) -> None:
    return None


async def test_a_payer_started_before_its_chain_node_waits_for_it_and_stops_on_sigterm() -> None:
    settings = PayoutSettings(
        postgres_url="postgresql://nobody@127.0.0.1:1/none",
        chain_rpc_url="http://127.0.0.1:1",  # nothing answers: the node is still starting
        chain_token_address="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        chain_batch_contract_address="0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        payout_treasury_key=SecretStr("0x" + "11" * 32),
        chain_rpc_timeout_s=1,
    )
    stop = asyncio.Event()
    waiting = asyncio.create_task(_connect_when_reachable(settings, stop))
    await asyncio.sleep(1.5)
    assert not waiting.done()  # it waits instead of exiting
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=10) is None


def test_the_deposit_watcher_without_a_contract_says_so_and_idles_until_sigterm() -> None:
    # honcho stops every process when one exits: a watcher with no deposit contract configured must not exit
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAR_MESH_")}
    env |= {"POSTGRES_URL": "postgresql://nobody@127.0.0.1:1/none", "PYTHONPATH": str(REPO_PROCFILE.parent)}
    assert read_procfile(REPO_PROCFILE)["deposits"] == ["far-mesh", "deposits", "watch"]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "deposits", "watch"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "deposits watch: no deposit contract configured" in line, line
        time.sleep(0.5)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()

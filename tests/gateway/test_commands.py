"""`far-mesh keys create|revoke|list|show` against the real ledger database, and the keys they make at the gateway."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from devstack.redis_server import RedisServer
from mesh.ports import free_port, free_port_to_keep
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import WALLET, IssueKey, SseReader, SyntheticWorker, start_gateway, stop_gateway


def far_mesh(*args: str, postgres_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POSTGRES_URL": postgres_url}
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_created_key_works_until_it_is_revoked(gateway_url: str, migrated_postgres_dsn: str) -> None:
    created = far_mesh("keys", "create", "--wallet", WALLET, "--label", "alice", postgres_url=migrated_postgres_dsn)
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]
    key_id = key.split("_")[1]
    assert key_id in created.stdout.splitlines()[0] and key not in created.stderr

    def follow() -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(f"{gateway_url}/inference/req_unknown/stream", headers=headers).status_code

    assert follow() == 404  # authenticated; the request simply does not exist
    revoked = far_mesh("keys", "revoke", key_id, postgres_url=migrated_postgres_dsn)
    assert revoked.returncode == 0, revoked.stderr
    assert follow() == 401
    # one revoke behaviour, the portal's too (schema.api_keys.revoke): again is harmless and keeps the first time
    again = far_mesh("keys", "revoke", key_id, postgres_url=migrated_postgres_dsn)
    assert (again.returncode, again.stdout) == (0, revoked.stdout)
    unknown = far_mesh("keys", "revoke", "0123456789abcdef", postgres_url=migrated_postgres_dsn)
    assert unknown.returncode == 1 and "no API key with id '0123456789abcdef'" in unknown.stderr


def test_keys_create_takes_budgets_and_limits_and_list_and_show_print_them(migrated_postgres_dsn: str) -> None:
    created = far_mesh(
        "keys", "create", "--wallet", WALLET, "--label", "team-a",
        "--max-budget-far", "12.5", "--period-budget-far", "1", "--budget-period", "day",
        "--expires", "2099-01-31", "--models", "test/tiny-llama,test/no-swarm",
        "--rate-limit", "30", "--max-streams", "2",
        postgres_url=migrated_postgres_dsn,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split()[-1].split("_")[1]
    shown = far_mesh("keys", "show", key_id, postgres_url=migrated_postgres_dsn)
    assert shown.returncode == 0, shown.stderr
    line = shown.stdout.strip()
    for part in (
        f"key_id={key_id}",
        "status=active",
        "spent_far=0",
        "max_budget_far=12.5",
        "period_budget_far=1",
        "budget_period=day",
        "expires=2099-01-31T00:00:00+00:00",
        "models=test/tiny-llama,test/no-swarm",
        "rate_limit=30",
        "max_streams=2",
    ):
        assert part in line, (part, line)
    listed = far_mesh("keys", "list", "--wallet", WALLET, postgres_url=migrated_postgres_dsn)
    assert listed.returncode == 0 and f"key_id={key_id}" in listed.stdout
    assert created.stdout.split()[-1] not in listed.stdout + shown.stdout  # the secret is never printed again
    unknown = far_mesh("keys", "show", "0" * 16, postgres_url=migrated_postgres_dsn)
    assert unknown.returncode == 1 and "no API key" in unknown.stderr
    half = far_mesh(
        "keys", "create", "--wallet", WALLET, "--period-budget-far", "1", postgres_url=migrated_postgres_dsn
    )
    assert half.returncode == 1 and "--budget-period" in half.stderr


def test_keys_create_refuses_a_wallet_with_a_bad_checksum(migrated_postgres_dsn: str) -> None:
    result = far_mesh("keys", "create", "--wallet", WALLET.lower(), postgres_url=migrated_postgres_dsn)
    assert result.returncode == 1 and "did you mean " + WALLET in result.stderr


def test_a_bad_postgres_url_names_the_variable(migrated_postgres_dsn: str) -> None:
    result = far_mesh("keys", "create", "--wallet", WALLET, postgres_url="nonsense")
    assert result.returncode == 2 and "POSTGRES_URL" in result.stderr and "Traceback" not in result.stderr


async def test_sigterm_lets_open_streams_finish_then_exits(
    gateway_env: dict[str, str],
    tmp_path: Path,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
) -> None:
    process, url = start_gateway({**gateway_env, "GATEWAY_SHUTDOWN_DRAIN_S": "10"}, tmp_path / "gateway.log")
    try:
        key, _ = await issue_key()
        body = {"prompt": "slow goodbye", "max_tokens": 10}
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with client.stream(
                "POST", "/inference/generate", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                reader = SseReader(response)
                first = await reader.events(limit=1)
                process.send_signal(signal.SIGTERM)
                rest = await reader.events()
        assert len(first + rest) == 11 and rest[-1][1]["status"] == "completed"
        # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly
        assert await asyncio.to_thread(process.wait, 10) in (0, -signal.SIGTERM)
    finally:
        stop_gateway(process)
    log = (tmp_path / "gateway.log").read_text()
    assert "gateway started" in log and "gateway stopped" in log and key not in log


async def test_a_drain_under_a_second_cuts_the_open_streams_instead_of_waiting_for_them_for_ever(
    gateway_env: dict[str, str], tmp_path: Path, healthy_swarm: SwarmSnapshot, issue_key: IssueKey
) -> None:
    process, url = start_gateway({**gateway_env, "GATEWAY_SHUTDOWN_DRAIN_S": "0.5"}, tmp_path / "gateway.log")
    try:
        key, _ = await issue_key()
        body = {"prompt": "no worker takes this", "max_tokens": 10}  # queued for good: only the drain ends it
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with client.stream(
                "POST", "/inference/generate", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                assert response.status_code == 200
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 10) in (0, -signal.SIGTERM)
    finally:
        stop_gateway(process)


def _start_without_waiting(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "gateway"],
            env={**os.environ, **env, "GATEWAY_PORT": str(free_port())},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _logged(log_path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        assert process.poll() is None, log_path.read_text()
        assert asyncio.get_running_loop().time() < deadline, log_path.read_text()
        await asyncio.sleep(0.1)


async def test_a_gateway_started_while_redis_is_down_waits_for_it_then_serves(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Started while Redis restarted, it exited (status 3), and a Procfile runner stops every process with it."""
    port, log_path = free_port_to_keep(), tmp_path / "gateway.log"
    env = {**gateway_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    process = _start_without_waiting(env, log_path)
    redis_server = None
    try:
        await _logged(log_path, "gateway waiting for Redis", process)
        redis_server = RedisServer(tmp_path / "redis", port).start()
        await _logged(log_path, "gateway started", process)
    finally:
        stop_gateway(process)
        if redis_server is not None:
            redis_server.stop()


async def test_a_gateway_waiting_for_redis_stops_at_once_on_sigterm(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "gateway.log"
    process = _start_without_waiting({**gateway_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, log_path)
    try:
        await _logged(log_path, "gateway waiting for Redis", process)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 5) in (0, 3, -signal.SIGTERM)
    finally:
        stop_gateway(process)

"""`far-mesh keys create|revoke` against the real ledger database, and the keys they make at the gateway."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

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
    again = far_mesh("keys", "revoke", key_id, postgres_url=migrated_postgres_dsn)
    assert again.returncode == 1 and "no active API key" in again.stderr


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

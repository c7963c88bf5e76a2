"""A real gateway as a process: `far-mesh gateway` on a loopback port against the caller's Redis and PostgreSQL.

`GATEWAY_ENV` is the configuration the gateway tests and benchmarks run it with (small caps, a fast keep-alive),
`snapshot()` a swarm snapshot of its default model that a caller publishes so requests are admitted,
`issue_key_sync` an API key in the ledger for a caller without an event loop of its own.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg

from devstack.harness.http_client import serves
from gateway.api_keys import create_key
from mesh.ports import free_port
from protocol.swarm import ServerSnapshot, SwarmSnapshot

MODEL_ID = "test/tiny-llama"
OTHER_MODEL_ID = "test/no-swarm"
PRICE = Decimal("0.0001")
OTHER_PROMPT_PRICE = Decimal("0.00002")
OTHER_PRICE = Decimal("0.0003")
"""The other model's own prices; the default model's are the defaults (prompts free, PRICE per token)."""
OTHER_MODEL_FACTS = {"family": "test-llama", "parameters": 1_000, "context_length": 256, "license": "MIT"}
"""What the other model's entry says it is; the default model's says nothing (null on the lists)."""
FEE_BPS = 250
WALLET = "0x742d35Cc6634C0532925a3b844Bc454e4438f44e"
GATEWAY_ENV = {
    "DEFAULT_MODEL_ID": MODEL_ID,
    "FAR_MESH_MODELS": json.dumps(
        [
            {"model_id": MODEL_ID},
            {
                "model_id": OTHER_MODEL_ID,
                "prompt_price_per_token_far": str(OTHER_PROMPT_PRICE),
                "completion_price_per_token_far": str(OTHER_PRICE),
                **OTHER_MODEL_FACTS,
            },
        ]
    ),
    "PRICE_PER_TOKEN_FAR": str(PRICE),
    "FAR_MESH_PLATFORM_FEE_BPS": str(FEE_BPS),
    "GATEWAY_HOST": "127.0.0.1",
    "GATEWAY_MAX_BODY_BYTES": "4096",
    "GATEWAY_MAX_PROMPT_CHARS": "1000",
    "GATEWAY_MAX_TOKENS": "64",
    "GATEWAY_RATE_LIMIT_PER_MINUTE": "12",
    "GATEWAY_BATCH_MAX_FILES": "3",
    "GATEWAY_MAX_CONCURRENT_STREAMS": "3",
    "GATEWAY_HEARTBEAT_INTERVAL_S": "0.3",
    "GATEWAY_CANCEL_GRACE_S": "0.3",
    "GATEWAY_RELAY_READERS": "2",
    "GATEWAY_KEY_CACHE_S": "0",
    "GATEWAY_SHUTDOWN_DRAIN_S": "2",
    "LOG_LEVEL": "INFO",
}


def start_gateway(env: dict[str, str], log_path: Path, timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start `far-mesh gateway` in its own process group and wait until /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "gateway"],
            env={**os.environ, **env, "GATEWAY_PORT": str(port)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if serves(f"{url}/health", process, timeout_s):
        return process, url
    stop_gateway(process)
    raise RuntimeError(f"gateway did not start; its log:\n{log_path.read_text()}")


def stop_gateway(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def snapshot(model_id: str = MODEL_ID, *, taken_at: datetime | None = None, online: bool = True) -> SwarmSnapshot:
    state = "online" if online else "offline"
    return SwarmSnapshot(
        model_id=model_id,
        dht_prefix="tiny-llama",
        num_blocks=4,
        taken_at=taken_at or datetime.now(UTC),
        servers=(
            ServerSnapshot(peer_id="QmA", start_block=0, end_block=2, throughput=10.0, state=state),
            ServerSnapshot(peer_id="QmB", start_block=2, end_block=4, throughput=10.0, state="online"),
        ),
    )


def issue_key_sync(dsn: str, wallet: str = WALLET) -> str:
    """A new API key, for callers that run no event loop of their own."""

    async def issue() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            return (await create_key(connection, wallet, "sync")).secret_key
        finally:
            await connection.close()

    return asyncio.run(issue())

"""What the SDK tests add to the session's one system: fresh API keys, a strict gateway, a dropping proxy.

- `new_api_key()`: a key of its own, so rate-limit windows and request-id ownership start empty.
- `strict_gateway`: a second gateway process over the same Redis, PostgreSQL and workers, allowing one new
  request per minute, so a 429 can be provoked without lowering the limits every other test runs under.
- `dropping_proxy`: a loopback proxy in front of the system's gateway that a test cuts mid-stream.
"""

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from devstack.harness.system import wait_for_http
from devstack.system import DEV_WALLET
from gateway.api_keys import create_key
from mesh.ports import free_port
from tests.fixtures.system import SystemUnderTest
from tests.sdk.proxy import DroppingProxy

STRICT_RATE_LIMIT_PER_MINUTE = 1


def issue_api_key(sut: SystemUnderTest, label: str = "sdk tests") -> str:
    async def issue() -> str:
        connection = await asyncpg.connect(sut.postgres_url)
        try:
            return (await create_key(connection, DEV_WALLET, label=label)).secret_key
        finally:
            await connection.close()

    return asyncio.run(issue())


@pytest.fixture
def new_api_key(e2e_system: SystemUnderTest) -> Callable[[], str]:
    return lambda: issue_api_key(e2e_system)


@pytest.fixture(scope="package")  # stopped once the SDK tests are done: no other test meets it
def strict_gateway(e2e_system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a gateway that starts at most one new request per API key and minute."""
    port = free_port()
    env = e2e_system.system._env_for("web") | {
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_RATE_LIMIT_PER_MINUTE": str(STRICT_RATE_LIMIT_PER_MINUTE),
        "GATEWAY_SHUTDOWN_DRAIN_S": "1",
    }
    log_path = Path(tmp_path_factory.mktemp("strict-gateway")) / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cli", "gateway"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process, f"the strict gateway (its log: {log_path})", timeout_s=60)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def dropping_proxy(e2e_system: SystemUnderTest) -> Iterator[DroppingProxy]:
    with DroppingProxy(e2e_system.system.plan.gateway_port) as proxy:
        yield proxy

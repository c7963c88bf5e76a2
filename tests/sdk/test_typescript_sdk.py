"""The TypeScript SDK's suite (sdk/js, vitest), run against this session's live system.

The suite gets the system's addresses and keys in FARLABS_* variables, and a small control API on loopback
for what only this side can do: read the HTTP API's tokens with the plain SSE client the Python tests use,
read the ledger once accounting has settled, and kill and restart the gateway process.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.loopback_http import loopback_http
from tests.fixtures.system import (
    PRICE_FAR,
    SystemUnderTest,
    assert_books_balance,
    collect,
    the_ledger_session,
    token_events,
    wait_until_accounted,
)
from tests.sdk.node import SDK_JS, built

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

SUITE_TIMEOUT_S = 300


class Control:
    """What the TypeScript suite asks of the system, one method per control route."""

    def __init__(self, sut: SystemUnderTest) -> None:
        self.sut = sut
        self._restart: threading.Thread | None = None
        self._restart_error: BaseException | None = None

    def reference(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        async def read() -> list[dict[str, Any]]:
            async with self.sut.client() as client:
                body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "request_id": _request_id()}
                return await collect(client, body)

        return {"tokens": [event["token"] for event in token_events(asyncio.run(read()))]}

    def ledger(self, request_id: str) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            await wait_until_accounted(self.sut.redis_url)
            session = await the_ledger_session(self.sut.postgres_url, request_id)
            assert_books_balance(session, session.row["tokens_generated"])
            row = session.row
            return {
                "tokens_generated": row["tokens_generated"],
                "total_cost_far": format(row["total_cost_far"], "f"),
                "status": row["status"],
            }

        return asyncio.run(read())

    def kill_gateway(self) -> dict[str, Any]:
        """SIGKILL the gateway's process group, as a crash would, and start it again in the background."""
        web = self.sut.system.process("web")
        os.killpg(web.process.pid, signal.SIGKILL)
        web.process.wait(10)
        self._restart = threading.Thread(target=self._restart_gateway, daemon=True)
        self._restart.start()
        return {"killed": web.process.pid}

    def wait_for_gateway(self) -> dict[str, Any]:
        if self._restart is not None:
            self._restart.join(120)
        if self._restart_error is not None:
            raise self._restart_error
        return {"pid": self.sut.system.process("web").process.pid}

    def restore(self) -> None:
        """Whatever the suite did, the gateway serves again for the tests that follow."""
        self.wait_for_gateway()
        if "web" in self.sut.dead_processes():
            self.sut.restart_process("web")

    def _restart_gateway(self) -> None:
        try:
            self.sut.restart_process("web")
        except BaseException as exc:  # reported by wait_for_gateway
            self._restart_error = exc


def _request_id() -> str:
    return f"sdk-js-{uuid.uuid4().hex[:12]}"


def _handler(control: Control) -> type[BaseHTTPRequestHandler]:
    routes: dict[tuple[str, str], Callable[[list[str], dict[str, list[str]]], dict[str, Any]]] = {
        ("GET", "reference"): lambda _, q: control.reference(q["prompt"][0], int(q["max_tokens"][0])),
        ("GET", "ledger"): lambda path, _: control.ledger(path[1]),
        ("POST", "gateway"): lambda path, _: (
            control.kill_gateway() if path[1] == "kill" else control.wait_for_gateway()
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def _answer(self, method: str) -> None:
            url = urlsplit(self.path)
            path = [part for part in url.path.split("/") if part]
            route = routes.get((method, path[0] if path else ""))
            try:
                if route is None:
                    raise LookupError(f"no control route {method} {url.path}")
                status, body = 200, route(path, parse_qs(url.query))
            except Exception as exc:  # the suite prints it; the assertion that failed is in the message
                status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: vitest's report is the record

    return Handler


@pytest.fixture
def control_url(e2e_system: SystemUnderTest) -> Iterator[str]:
    control = Control(e2e_system)
    try:
        with loopback_http(_handler(control)) as url:
            yield url
    finally:
        control.restore()


@pytest.mark.skipif(shutil.which("npm") is None, reason="Node.js and npm are needed for the TypeScript SDK")
def test_the_typescript_sdk_passes_its_suite_against_the_live_system(
    e2e_system: SystemUnderTest, strict_gateway: str, new_api_key: Callable[[], str], control_url: str
) -> None:
    built()
    env = os.environ | {
        "FARLABS_BASE_URL": e2e_system.url,
        "FARLABS_API_KEY": e2e_system.system.api_key,
        "FARLABS_OTHER_KEY": new_api_key(),
        "FARLABS_STRICT_URL": strict_gateway,
        "FARLABS_STRICT_KEY": new_api_key(),
        "FARLABS_CONTROL_URL": control_url,
        "FARLABS_PRICE_FAR": str(PRICE_FAR),
        "NO_COLOR": "1",
    }
    suite = subprocess.run(
        ["npx", "vitest", "run"], cwd=SDK_JS, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S
    )
    report = suite.stdout + suite.stderr
    assert suite.returncode == 0, report
    summary = [line.strip() for line in report.splitlines() if line.strip().startswith("Tests ")]
    assert summary and "passed" in summary[-1] and "skipped" not in summary[-1], report  # the live tests all ran

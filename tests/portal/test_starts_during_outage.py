"""A portal (re)started while PostgreSQL restarts waits for it instead of exiting (the chaos soak, issue #29,
seed 33: its pool's first connection raised "unexpected connection_lost()" and uvicorn exited with status 3).

The portal runs as `far-mesh portal`, a process, as the soak runs it: the exit was uvicorn's, not the app's."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack.harness.http_client import serves
from devstack.harness.tcp_proxy import LoopbackProxy
from mesh.ports import free_port
from tests.fixtures.portal import PORTAL_HOST

FAR_MESH = Path(sys.executable).parent / "far-mesh"
WAITING = "portal waiting for PostgreSQL"


class _DroppingListener:
    """A port that accepts each connection and closes it at once: PostgreSQL going away mid-handshake."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_server(("127.0.0.1", port))
        self.socket.settimeout(0.05)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drop, daemon=True)
        self._thread.start()

    def _drop(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            connection.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.socket.close()


class _Portal:
    """`far-mesh portal` with its output collected line by line."""

    def __init__(self, postgres_url: str, redis_url: str) -> None:
        self.port = port = free_port()
        env = os.environ | {
            "POSTGRES_URL": postgres_url,
            "REDIS_URL": redis_url,
            "PORTAL_HOST": "127.0.0.1",
            "PORTAL_PORT": str(port),
            "PORTAL_SECRET_KEY": "test-secret-key-with-at-least-32-characters",
            "PORTAL_DOMAIN": PORTAL_HOST,
            "PORTAL_CHAIN_ID": "31337",
            "PORTAL_SECURE_COOKIES": "false",
        }
        self.process = subprocess.Popen(
            [str(FAR_MESH), "portal"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def said(self, text: str, times: int = 1) -> bool:
        return sum(text in line for line in self.lines) >= times

    def wait_for(self, what: str, ready: Callable[[], bool], timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.process.poll() is None, f"the portal exited ({self.process.returncode}):\n{''.join(self.lines)}"
            assert time.monotonic() < deadline, f"{what} not reached within {timeout_s}s:\n{''.join(self.lines)}"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the portal if it runs, then close its output once read to the end (an open pipe left to the garbage
        collector is a ResourceWarning, an error in this suite, in whichever later test collects it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._collector.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def outage() -> Iterator[tuple[int, _DroppingListener]]:
    port = free_port()
    listener = _DroppingListener(port)
    yield port, listener
    listener.close()


def test_a_portal_started_while_postgresql_is_down_waits_and_serves_once_it_answers(
    outage: tuple[int, _DroppingListener], migrated_postgres_dsn: str, redis_url: str
) -> None:
    ledger_port, listener = outage
    real = urlsplit(migrated_postgres_dsn)
    assert real.port is not None, "the test ledger listens on TCP"
    upstream = f"{real.hostname}:{real.port}"
    portal = _Portal(migrated_postgres_dsn.replace(upstream, f"127.0.0.1:{ledger_port}", 1), redis_url)
    proxy: LoopbackProxy | None = None
    try:
        portal.wait_for("a second try", lambda: portal.said(WAITING, times=2))
        listener.close()  # PostgreSQL is back, on the same address
        proxy = LoopbackProxy(real.port, ledger_port).start()
        serving = serves(f"http://127.0.0.1:{portal.port}/", portal.process, timeout_s=20, interval_s=0.05)
        assert serving, f"the portal did not serve within 20 s:\n{''.join(portal.lines)}"
    finally:
        portal.stop()
        if proxy is not None:
            proxy.stop()


def test_a_portal_told_to_stop_while_it_waits_for_postgresql_stops_at_once(
    outage: tuple[int, _DroppingListener], redis_url: str
) -> None:
    ledger_port, _ = outage
    portal = _Portal(f"postgresql://postgres@127.0.0.1:{ledger_port}/nothing", redis_url)
    try:
        portal.wait_for("the wait's log line", lambda: portal.said(WAITING))
        portal.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        portal.process.wait(10)  # uvicorn only sets should_exit: a wait that never read it would go on for ever
        assert time.monotonic() - started < 4, "".join(portal.lines)
        assert portal.said("portal stopped before PostgreSQL answered"), "".join(portal.lines)
    finally:
        portal.stop()

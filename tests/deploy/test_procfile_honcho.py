"""The Procfile runs as written under a Procfile runner (honcho): every line parses, and `honcho start` with the
`.env` of `far-mesh procfile-env` runs every line together until a generation through the gateway completes, then
stops with nothing left behind."""

import asyncio
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from cli.main import build_parser
from devstack.harness.sse import collect
from devstack.postgres_server import drop_database
from devstack.services import with_database
from gateway.api_keys import create_key
from mesh.process_groups import signal_group
from protocol.catalog import ModelSpec
from tests.deploy.manifests import REPO, procfile

SYSTEM_READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
WALLET = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
RUN_MARKER = "FAR_MESH_PROCFILE_TEST_RUN"
"""Set in the test's .env, so every process of the run (p2pd daemons and swarm servers included) can be found."""
GRACEFUL_STOPS = {
    "web": "gateway stopped",
    "worker": "worker stopped",
    "accounting": "accounting consumer stopped",
    "swarm": "local swarm stopped",
    "payouts": "payouts serve stopped",
    "deposits": "deposits watch stopped",
    "ledger": "ledger serve stopped",
    "verifier": "verifier stopped",
    "portal": "Finished server process",
}
"""The line each process logs once it has shut down on SIGTERM (the DHT bootstrap is petals' own and says nothing)."""


@pytest.mark.parametrize("name", sorted(procfile()))
def test_every_procfile_line_is_a_complete_command_line(name: str) -> None:
    # `far-mesh swarm` without its required --model exited 2 at once, and honcho stopped every other process.
    argv = shlex.split(procfile()[name])
    assert argv[0] == "far-mesh"
    args = build_parser().parse_args(argv[1:])  # SystemExit(2) on a missing or unknown argument
    assert callable(args.handler)


_STOPPED = re.compile(r"\| (?P<name>\S+) stopped \(rc=(?P<status>-?\d+)\)")
_STOPPED_BY_HONCHO = (-signal.SIGTERM, -signal.SIGKILL)


class Honcho:
    """`honcho start` in a process group of its own, its output read line by line on a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        venv_bin = Path(sys.executable).parent
        self.process = Popen(
            [str(venv_bin / "honcho"), "-f", str(REPO / "Procfile"), "-d", str(REPO), *args],
            env={
                **env,
                "PATH": f"{venv_bin}:{env['PATH']}",
                "PYTHONPATH": str(REPO),  # the checkout, whatever the editable install was built with
            },
            stdout=PIPE,
            stderr=STDOUT,
            text=True,
            start_new_session=True,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout or []:
            self._lines.put(line)

    def tail(self, lines: int = 40) -> str:
        return "".join(self.seen[-lines:])

    def first_failure(self, lines: int = 30) -> str:
        """The output of the first process that exited on its own (honcho then stopped the rest, whose shutdown
        fills the tail), or nothing."""
        for line in self.seen:
            if (stopped := _STOPPED.search(line)) and int(stopped["status"]) not in _STOPPED_BY_HONCHO:
                name = stopped["name"]
                return "".join([seen for seen in self.seen if f" {name} " in seen][-lines:])
        return ""

    def wait_for(self, text: str, deadline: float) -> None:
        """Read until a line contains `text`; fails if honcho stops (one process exited) or time runs out."""
        while not any(text in line for line in self.seen):
            assert time.monotonic() < deadline, f"no {text!r} in time\n{self.tail()}"
            self.drain(timeout_s=1)
            assert self.process.poll() is None or not self._lines.empty(), (
                f"honcho exited\n{self.first_failure()}\n...\n{self.tail()}"
            )

    def drain(self, timeout_s: float = 0.0) -> None:
        try:
            self.seen.append(self._lines.get(timeout=timeout_s) if timeout_s else self._lines.get_nowait())
            while True:
                self.seen.append(self._lines.get_nowait())
        except queue.Empty:
            return

    def stop(self) -> int:
        """SIGTERM to honcho's group (honcho passes it on to each process's group); SIGKILL if it hangs."""
        signal_group(self.process.pid, signal.SIGTERM)
        try:
            status = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL)
            status = self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        self.drain()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return status


def _isolated_environ() -> dict[str, str]:
    """The test machine's environment without settings of ours that could leak into the run."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("FAR_MESH_", "GATEWAY_", "PORTAL_"))}


def _processes_of_run(marker: str) -> list[int]:
    """Pids of live processes whose environment carries `RUN_MARKER=marker` (children inherit it)."""
    needle = f"{RUN_MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def procfile_database(postgres_admin_dsn: str) -> Iterator[str]:
    """A database name for the run (`far-mesh procfile-env` creates it), dropped afterwards."""
    name = f"far_mesh_procfile_{uuid.uuid4().hex[:12]}"
    yield with_database(postgres_admin_dsn, name)
    asyncio.run(drop_database(postgres_admin_dsn, name))


def _write_env(path: Path, state_dir: Path, cache_dir: Path, redis_url: str, postgres_url: str, marker: str) -> None:
    """The documented step, `far-mesh procfile-env > .env`, with free ports and this test's Redis and ledger."""
    env = {
        **_isolated_environ(),
        "PYTHONPATH": str(REPO),
        "REDIS_URL": redis_url,
        "POSTGRES_URL": postgres_url,
        "FAR_MESH_CACHE_DIR": str(cache_dir),
    }
    command = [sys.executable, "-m", "cli", "procfile-env", "--free-ports", "--state-dir", str(state_dir)]
    written = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert written.returncode == 0, written.stderr
    path.write_text(written.stdout + f"{RUN_MARKER}={marker}\n")


def _env_value(path: Path, name: str) -> str:
    [line] = [line for line in path.read_text().splitlines() if line.startswith(f"{name}=")]
    return shlex.split(line.partition("=")[2])[0]


async def _issue_key(postgres_url: str) -> str:
    connection = await asyncpg.connect(postgres_url)
    try:
        return (await create_key(connection, WALLET, label="procfile test")).secret_key
    finally:
        await connection.close()


async def _generate_once_served(gateway: str, postgres_url: str, deadline: float) -> list[dict[str, object]]:
    """Wait until the gateway is healthy and the swarm covers the model, then generate through the gateway."""
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        while True:
            try:
                health = await client.get("/health")
                status = (await client.get("/mesh/status")).json()
                if health.status_code == 200 and status["status"] == "connected" and status["active_nodes"] == 2:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway never reported the swarm connected"
            await asyncio.sleep(1)
        key = await _issue_key(postgres_url)  # the ledger is migrated by now: the worker is consuming
        client.headers["Authorization"] = f"Bearer {key}"
        return await collect(client, {"prompt": "Hello", "max_tokens": 5, "temperature": 0})


@pytest.mark.swarm
@pytest.mark.timeout(600)
def test_honcho_start_runs_every_procfile_line_until_a_generation_completes(
    tiny_models: tuple[ModelSpec, ...], redis_url: str, procfile_database: str, tmp_path: Path
) -> None:
    cache_dir = Path(str(tiny_models[0].source)).parent.parent
    run_redis = urlunsplit(urlsplit(redis_url)._replace(path="/5"))  # a database index of its own
    marker = uuid.uuid4().hex
    env_file = tmp_path / ".env"
    _write_env(env_file, tmp_path / "state", cache_dir, run_redis, procfile_database, marker)
    gateway = f"http://127.0.0.1:{_env_value(env_file, 'GATEWAY_PORT')}"

    honcho = Honcho(["-e", str(env_file), "start"], _isolated_environ())
    stopped_by_us = False
    try:
        deadline = time.monotonic() + SYSTEM_READY_TIMEOUT_S
        honcho.wait_for("worker started", deadline)
        events = asyncio.run(_generate_once_served(gateway, procfile_database, deadline))
        honcho.drain()
        assert events[-1].get("done") is True, events[-1]
        assert events[-1]["tokens_generated"] == 5
        assert not any("stopped (rc=" in line for line in honcho.seen), honcho.tail()  # nobody exited early
        assert any("payouts serve: no chain configured" in line for line in honcho.seen)
        assert any("deposits watch: no deposit contract configured" in line for line in honcho.seen)
        stopped_by_us = True
        honcho.stop()
    finally:
        if not stopped_by_us:
            honcho.stop()
        leftovers = _processes_of_run(marker)
        for pid in leftovers:  # a failed run must not leave daemons behind for the next test
            os.kill(pid, signal.SIGKILL)

    output = "".join(honcho.seen)
    names = set(procfile())
    statuses = dict(re.findall(r"\| (\w+)\.1 stopped \(rc=(-?\d+)\)", output))
    assert set(statuses) == names, honcho.tail()
    # honcho signals each process's group: its shell ends by SIGTERM (-15) once the process inside has shut down
    assert {name: rc for name, rc in statuses.items() if rc not in ("0", "-15")} == {}, honcho.tail()
    for name, line in GRACEFUL_STOPS.items():
        assert re.search(rf"{name}\.1\s+\| .*{re.escape(line)}", output), (
            f"{name} did not shut down: {line!r}\n{honcho.tail(80)}"
        )
    assert "Traceback" not in output, honcho.tail(80)
    assert leftovers == [], "processes of the run outlived honcho (p2pd daemons, swarm servers?)"

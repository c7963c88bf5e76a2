"""The local swarm's fork server: each child is its own process group with the environment and log it was given,
its exit is reported as `Popen` would report it, and nothing it forked outlives it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh.local_swarm import SERVER_ENVIRONMENT
from mesh.petals_cli import AWAIT_PORT_VARIABLE, command_line
from mesh.ports import free_port_to_keep, port_is_taken
from mesh.swarm_forks import ForkedProcess, ForkServer

pytestmark = pytest.mark.swarm


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """One fork server for the tests that do not end it (each start imports torch and petals: seconds)."""
    server = ForkServer(tmp_path_factory.mktemp("forks") / "forks.log", {**os.environ, **SERVER_ENVIRONMENT})
    yield server
    server.close()


def start_dht(forks: ForkServer, tmp_path: Path, name: str) -> tuple[ForkedProcess, int, Path]:
    """A DHT bootstrap forked by `forks`, listening on loopback; returns it, its port and its log."""
    port = free_port_to_keep()
    args = ["--host_maddrs", f"/ip4/127.0.0.1/tcp/{port}", "--identity_path", str(tmp_path / f"{name}.identity")]
    log = tmp_path / f"{name}.log"
    child = forks.spawn(command_line("run_dht", args), {**os.environ, **SERVER_ENVIRONMENT}, log)
    wait_for(lambda: port_is_taken(port) or child.poll() is not None)
    assert child.poll() is None, log.read_text()
    return child, port, log


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def process_group(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[2])


def test_a_child_runs_in_its_own_group_with_the_environment_and_log_it_was_given(
    forks: ForkServer, tmp_path: Path
) -> None:
    with socket.socket() as awaited:  # the child waits for this port to listen, as its environment says
        awaited.bind(("127.0.0.1", 0))
        port = free_port_to_keep()
        args = ["--host_maddrs", f"/ip4/127.0.0.1/tcp/{port}", "--identity_path", str(tmp_path / "dht.identity")]
        env = {**os.environ, **SERVER_ENVIRONMENT, AWAIT_PORT_VARIABLE: f"127.0.0.1:{awaited.getsockname()[1]}"}
        child = forks.spawn(command_line("run_dht", args), env, tmp_path / "dht.log")

        assert process_group(child.pid) == child.pid
        time.sleep(2)
        assert not port_is_taken(port) and child.poll() is None
        awaited.listen()
        wait_for(lambda: port_is_taken(port))
    wait_for(lambda: "Running a DHT instance" in (tmp_path / "dht.log").read_text())


def test_an_exit_is_reported_with_its_status_and_a_kill_with_minus_the_signal(
    forks: ForkServer, tmp_path: Path
) -> None:
    refused = forks.spawn(command_line("run_dht", ["--no-such-option"]), dict(os.environ), tmp_path / "refused.log")
    assert refused.wait(60) == 2  # argparse's usage error
    assert "unrecognized arguments: --no-such-option" in (tmp_path / "refused.log").read_text()

    running, _, _ = start_dht(forks, tmp_path, "dht")
    os.killpg(running.pid, signal.SIGKILL)
    assert running.wait(10) == -signal.SIGKILL


def test_only_petals_cli_commands_are_forked(forks: ForkServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mesh.petals_cli commands only"):
        forks.spawn(["sleep", "1"], dict(os.environ), tmp_path / "sleep.log")


def test_a_fork_server_killed_outright_or_closed_takes_its_children_with_it_and_the_next_spawn_starts_another(
    tmp_path: Path,
) -> None:
    forks = ForkServer(tmp_path / "forks.log", {**os.environ, **SERVER_ENVIRONMENT})
    first, first_port, _ = start_dht(forks, tmp_path, "first")
    killed = _fork_server_pid(first.pid)

    os.kill(killed, signal.SIGKILL)

    assert first.wait(10) == -signal.SIGKILL
    wait_for(lambda: not port_is_taken(first_port), timeout_s=10)
    second, second_port, _ = start_dht(forks, tmp_path, "second")
    assert _fork_server_pid(second.pid) != killed

    forks.close()

    assert second.wait(10) == -signal.SIGKILL
    wait_for(lambda: not port_is_taken(second_port), timeout_s=10)


def _fork_server_pid(child: int) -> int:
    stat = Path(f"/proc/{child}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


SIBLING_KILLED_HOLDING_HIVEMIND_LOCKS = """
import json, os, sys, time
import mesh.compat
from hivemind.utils import asyncio as hivemind_asyncio
from hivemind.utils.mpfuture import MPFuture
from mesh.swarm_forks import own_hivemind_locks

def hivemind_locks():
    return [MPFuture._initialization_lock, MPFuture._update_lock, hivemind_asyncio._AsyncContextWrapper.EXECUTOR_LOCK]

for lock in hivemind_locks():  # taken and never released, as by a child killed outright while it held them
    lock.acquire()
outcomes = {}
for owns in (False, True):
    child = os.fork()
    if child == 0:
        if owns:
            own_hivemind_locks()
        MPFuture()  # the first future of a process takes the initialisation lock
        os._exit(0 if all(lock.acquire(timeout=1) for lock in hivemind_locks()[1:]) else 1)
    deadline = time.monotonic() + (30 if owns else 3)
    while (status := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if status[0] == 0:
        os.kill(child, 9)
        os.waitpid(child, 0)
    outcome = "stuck" if status[0] == 0 else os.waitstatus_to_exitcode(status[1])
    outcomes["own locks" if owns else "shared locks"] = outcome
print(json.dumps(outcomes))
"""


def test_a_child_takes_hivemind_locks_of_its_own_so_a_sibling_killed_holding_them_blocks_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIBLING_KILLED_HOLDING_HIVEMIND_LOCKS],
        env={**os.environ, **SERVER_ENVIRONMENT},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == {"shared locks": "stuck", "own locks": 0}

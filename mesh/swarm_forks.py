"""The local swarm's fork server: one process imports torch, transformers, hivemind and petals once, then forks
every server and DHT bootstrap the swarm starts, so none of them pays for those imports again.

Started as its own `python -m mesh.petals_cli run_server ...`, a server spends about 4.5 CPU-seconds importing
before it does anything else; a test run starts and restarts dozens of them on two cores, and a chaos soak kills
servers on purpose. A child of the fork server runs `mesh.petals_cli.main` with the arguments of that same command
line (`mesh.node.server_command`), so it is the same program, started as a process of its own would be:

- in a process group of its own (the swarm stops and kills a server by group, as before);
- its output appended to its log, its input /dev/null, its environment exactly the one asked for;
- with fresh random state: a forked child starts with its parent's, so every server would otherwise draw the same
  DHT node id (hivemind draws it from `random`);
- with hivemind's process-wide locks of its own (`own_hivemind_locks`);
- dying with the fork server, which dies with the thread of the swarm that started it (`mesh.process_lifetime`),
  so a swarm killed outright still leaves nothing behind.

The fork server talks JSON lines: the swarm writes `{"args": [...], "env": {...}, "log": path}` to its input, and
it answers `{"pid": n}` once forked and `{"exited": n, "status": s}` when that child ends (`s` as
`Popen.returncode` gives it: minus the signal's number when a signal ended it). The end of its input ends it, and
its children with it. It never exec's anything and forks only from its one thread.
"""

import importlib
import json
import multiprocessing
import os
import queue
import random
import selectors
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from mesh.petals_cli import COMMANDS, command_line
from mesh.process_groups import signal_group
from mesh.process_lifetime import die_with_supervisor, supervised_environment

PETALS_CLI = command_line(COMMANDS[0], [])[:-1]
"""`[python, -m, mesh.petals_cli]`: the commands the fork server runs start so; what follows is its arguments."""
SPAWN_TIMEOUT_S = 120.0
"""How long a spawn waits for the fork server's answer; its first spawn waits for its imports too."""
CLOSE_GRACE_S = 5.0


class ForkServerGone(RuntimeError):
    """The fork server exited (or was killed) before it answered: whatever it had forked died with it."""


class ForkedProcess:
    """A child of the fork server, as the swarm sees it: what the swarm used of `subprocess.Popen`."""

    def __init__(self, pid: int, server: "ForkServer") -> None:
        self.pid = pid
        self._server = server

    def poll(self) -> int | None:
        """The exit status once the child ended, else None."""
        return self._server.exit_status(self.pid)

    def wait(self, timeout: float) -> int:
        status = self._server.wait_for_exit(self.pid, timeout)
        if status is None:
            raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
        return status


class ForkServer:
    """The swarm's side: starts the fork server on first use (and again after it died) and asks it for children.

    Call `spawn` from the thread the children must die with (the swarm's spawner thread), `close` when done."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self._log_path = log_path
        self.env = env
        """The fork server's own environment, which each child's starts from."""
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._pids: queue.Queue[int | None] = queue.Queue()
        self._statuses: dict[int, int | None] = {}
        self._changed = threading.Condition()
        self._lock = threading.Lock()

    def spawn(self, command: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        """Fork `command` (a `mesh.petals_cli` command line) with `env`, its output appended to `log_path`."""
        if command[: len(PETALS_CLI)] != PETALS_CLI:
            raise ValueError(f"the fork server runs mesh.petals_cli commands only, not {command[:4]}")
        request = {"args": command[len(PETALS_CLI) :], "env": env, "log": str(log_path)}
        with self._lock:
            process = self._running()
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
                pid = self._pids.get(timeout=SPAWN_TIMEOUT_S)
            except (BrokenPipeError, queue.Empty):
                pid = None
            if pid is None:
                raise ForkServerGone(f"the swarm's fork server did not fork; its log: {self._log_path}")
        return ForkedProcess(pid, self)

    def exit_status(self, pid: int) -> int | None:
        with self._changed:
            return self._statuses.get(pid)

    def wait_for_exit(self, pid: int, timeout: float) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: self._statuses.get(pid) is not None, timeout)
            return self._statuses.get(pid)

    def close(self) -> None:
        """End the fork server (its input closed, then SIGKILL after a grace): any child still running dies too."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            self._let_go(process, CLOSE_GRACE_S)

    def _running(self) -> "subprocess.Popen[str]":
        if self._process is not None:
            if self._process.poll() is None:
                return self._process
            self._let_go(self._process, grace_s=0)
        self._pids = queue.Queue()
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**self.env, **supervised_environment()},
                start_new_session=True,
                text=True,
            )
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout, self._pids), name="swarm-fork-server", daemon=True
        )
        self._reader.start()
        return self._process

    def _let_go(self, process: "subprocess.Popen[str]", grace_s: float) -> None:
        """Close its input, which ends it, and wait `grace_s` for that before killing its group; then wait for its
        reader, which has marked every child dead once it returns. A dead fork server needs no grace."""
        assert process.stdin is not None and self._reader is not None
        try:
            process.stdin.close()
            process.wait(grace_s)
        except (BrokenPipeError, subprocess.TimeoutExpired):  # a request it had not read is lost with it
            signal_group(process.pid, signal.SIGKILL)
            process.wait()
        self._reader.join()

    def _read(self, answers: IO[str], pids: "queue.Queue[int | None]") -> None:
        with answers:
            for line in answers:
                try:
                    message = json.loads(line)
                except ValueError:  # cut short as the fork server died
                    break
                with self._changed:
                    if "pid" in message:
                        self._statuses[message["pid"]] = None
                        pids.put(message["pid"])
                    else:
                        self._statuses[message["exited"]] = message["status"]
                        self._changed.notify_all()
        with self._changed:  # the fork server is gone, and every child it had with it
            for pid, status in self._statuses.items():
                if status is None:
                    self._statuses[pid] = -signal.SIGKILL
            self._changed.notify_all()
        pids.put(None)


# The fork server's own side, run as `python -m mesh.swarm_forks` by `ForkServer`.


class _ForkLoop:
    """Reads requests and reaps children on the fork server's one thread; `run` returns only in a forked child."""

    def __init__(self) -> None:
        self._answers = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)  # what the fork server itself prints goes to its log, not into the answers
        self.wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_write, False)
        self.wakeup_write = wakeup_write
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._pending = b""

    def run(self) -> dict[str, Any]:
        with selectors.DefaultSelector() as selector:
            selector.register(0, selectors.EVENT_READ)
            selector.register(self.wakeup_read, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fd == self.wakeup_read:
                        os.read(self.wakeup_read, 4096)
                        self._reap()
                    elif (request := self._read_and_fork()) is not None:
                        return request

    def _read_and_fork(self) -> dict[str, Any] | None:
        """Fork a child for each whole request read; the request in the child, None in the fork server."""
        chunk = os.read(0, 65536)
        if not chunk:  # the swarm closed it (or died): the children die with this process
            os._exit(0)  # at once: an interpreter that imported torch and petals takes seconds to finalise
        self._pending += chunk
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            request: dict[str, Any] = json.loads(line)
            pid = os.fork()
            if pid == 0:
                return request
            try:  # its own process group before the answer (the child asks too), so the group can be signalled
                os.setpgid(pid, pid)
            except OSError:  # it is already dead, or already its group's leader
                pass
            self._answer({"pid": pid})
        return None

    def _answer(self, message: dict[str, int]) -> None:
        self._answers.write(json.dumps(message).encode() + b"\n")

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = os.waitstatus_to_exitcode(wait_status)
            self._answer({"exited": pid, "status": status})

    def become_child(self, request: dict[str, Any], fork_server: int) -> None:
        """In the child: let go of the fork server's files and signals, then take the requested ones."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if os.getppid() != fork_server:  # it died before this child could ask to die with it
            os._exit(1)
        os.setpgid(0, 0)
        self._answers.close()
        os.close(self.wakeup_read)
        os.close(self.wakeup_write)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((null, 0), (log, 1), (log, 2)):
            os.dup2(source, target)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()
        importlib.import_module("torch").seed()
        own_hivemind_locks()


def own_hivemind_locks() -> None:
    """Replace the locks hivemind makes when imported with new ones, in a child of the fork server.

    They are multiprocessing semaphores, meant to be shared by a process and the processes it forks itself (its DHT,
    its connection handlers). The fork server imported hivemind, so its children would all share one set: a server
    killed outright while it held one (the swarm's tests kill servers so, the soak too) left every server started
    after it waiting for that lock for good, before it joined the swarm."""
    from hivemind.utils import asyncio as hivemind_asyncio
    from hivemind.utils.mpfuture import MPFuture

    MPFuture.reset_backend()  # hivemind's own reset: its two locks and SharedBytes' lock
    hivemind_asyncio._AsyncContextWrapper.EXECUTOR_LOCK = multiprocessing.Lock()


def main() -> None:
    die_with_supervisor()  # and so every child forked below dies with this process
    import mesh.compat  # noqa: F401 - the imports every child would otherwise pay for
    from mesh import petals_cli

    for command in COMMANDS:
        importlib.import_module(f"petals.cli.{command}")
    loop = _ForkLoop()
    fork_server = os.getpid()
    request = loop.run()
    loop.become_child(request, fork_server)
    petals_cli.main(request["args"])


if __name__ == "__main__":
    main()

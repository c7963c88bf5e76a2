"""What keeps a provider's Petals server up: `far-mesh node` runs the server as its child and restarts it after a
crash, with the same command, so with the same identity file (peer id), blocks and port: the node's
registration and earnings simply continue.

Each crash prints one line (exit status, restart count, delay); a server that crashes `RESTART_LIMIT` times
within `RESTART_WINDOW_S` is given up on and the launcher exits with its status, so a service manager above it
(systemd, Kubernetes) sees the failure. SIGTERM and SIGINT are passed to the server's whole process group and
end the launcher once the server has stopped; the server dies with the launcher however the launcher dies
(`mesh.process_lifetime`). With a portal, a status line (earnings, and restarts once there were any) is printed
every few minutes. Only the standard library is used: the node image stays as it is.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TextIO

from mesh.process_groups import signal_group
from mesh.process_lifetime import supervised_environment
from mesh.restarts import RestartPolicy

RESTART_FIRST_DELAY_S = 2.0
RESTART_MAX_DELAY_S = 60.0
RESTART_LIMIT = 5
RESTART_WINDOW_S = 600.0
STOP_GRACE_S = 20.0
"""How long a stopping server may take before its group is killed (Petals hands its sessions back first)."""

StatusLine = Callable[[int], str]
"""Given the restart count so far, the periodic status line."""


def default_policy() -> RestartPolicy:
    return RestartPolicy(
        first_delay_s=RESTART_FIRST_DELAY_S,
        max_delay_s=RESTART_MAX_DELAY_S,
        limit=RESTART_LIMIT,
        window_s=RESTART_WINDOW_S,
    )


class NodeKeeper:
    """Runs `command` until it stops on request or exits cleanly; restarts it after a crash per `policy`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        policy: RestartPolicy | None = None,
        status_line: StatusLine | None = None,
        every_s: float = 300.0,
        out: TextIO = sys.stdout,
    ) -> None:
        self.command = list(command)
        self.policy = policy or default_policy()
        self.status_line = status_line
        self.every_s = every_s
        self.out = out
        self.restarts = 0
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Keep the server running; its last exit status (the signal's negative number after a stop)."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                status = self._run_once()
                if self._stopping.is_set() or status == 0:
                    return status
                delay = self.policy.crashed()
                if delay is None:
                    self._say(
                        f"far-mesh node: the server exited with status {status} {RESTART_LIMIT} times within "
                        f"{RESTART_WINDOW_S:.0f} s; giving up (restarts {self.restarts})"
                    )
                    return status
                self.restarts += 1
                self._say(
                    f"far-mesh node: the server exited with status {status}; restart {self.restarts} "
                    f"in {delay:.0f} s with the same peer id"
                )
                if self._stopping.wait(delay):
                    return status
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run_once(self) -> int:
        child = subprocess.Popen(self.command, env=os.environ | supervised_environment(), start_new_session=True)
        self._child = child
        try:
            while True:
                try:
                    return child.wait(timeout=self.every_s if self.status_line else None)
                except subprocess.TimeoutExpired:
                    if self.status_line is not None:
                        self._say(self.status_line(self.restarts))
        finally:
            signal_group(child.pid, signal.SIGKILL)  # whatever the server forked goes with it

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping.set()
        if self._child is not None and self._child.poll() is None:
            signal_group(self._child.pid, signal.Signals(signum))
            deadline = threading.Timer(STOP_GRACE_S, signal_group, (self._child.pid, signal.SIGKILL))
            deadline.daemon = True
            deadline.start()

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

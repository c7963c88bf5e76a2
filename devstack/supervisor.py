"""Runs a handful of long-lived processes together, the way a Procfile runner does.

Each child gets its own process group (so its own children, such as p2pd, die with it), its output is
prefixed with its name, and when one exits or Ctrl-C/SIGTERM arrives, all are stopped: SIGTERM to each
group, then SIGKILL after a grace period.
"""

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mesh.process_groups import signal_group


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    pump: threading.Thread = field(init=False)


class Supervisor:
    def __init__(self, *, grace_s: float = 20.0) -> None:
        self.grace_s = grace_s
        self.children: list[Child] = []
        self._stopping = threading.Event()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        process = subprocess.Popen(
            list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        child = Child(name, process)
        child.pump = threading.Thread(target=self._relay_output, args=(child,), daemon=True)
        child.pump.start()
        self.children.append(child)
        print(f"dev: started {name} (pid {process.pid}): {' '.join(argv)}", flush=True)
        return child

    def wait(self) -> int:
        """Block until a child exits or a stop signal arrives; then stop everything. Returns an exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stopping.is_set():
                for child in self.children:
                    code = child.process.poll()
                    if code is not None:
                        print(f"dev: {child.name} exited with status {code}; stopping the rest", flush=True)
                        return code or 1
                time.sleep(0.2)
            return 0
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"dev: {child.name} ignored SIGTERM for {self.grace_s:.0f}s; killing it", flush=True)
            signal_group(child.process.pid, signal.SIGKILL)
            child.process.wait()
            child.pump.join(timeout=2)
            if child.process.stdout is not None:
                child.process.stdout.close()
        self.children.clear()

    def _on_signal(self, signum: int, _frame: object) -> None:
        print(f"dev: {signal.Signals(signum).name} received; stopping", flush=True)
        self._stopping.set()

    @staticmethod
    def _relay_output(child: Child) -> None:
        assert child.process.stdout is not None
        for raw in child.process.stdout:
            sys.stdout.write(f"{child.name:>10} | {raw.decode(errors='replace')}")
            sys.stdout.flush()

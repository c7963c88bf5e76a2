"""The supervisor stops every process it started, grandchildren included, when one of them exits."""

import os
import sys
import time
from pathlib import Path

from devstack.supervisor import Supervisor

# Spawns a grandchild that would outlive its parent unless the whole process group is signalled.
PARENT_WITH_GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_when_one_process_exits_all_are_stopped_with_their_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    supervisor = Supervisor(grace_s=5)
    long_lived = supervisor.start("long", [sys.executable, "-c", PARENT_WITH_GRANDCHILD, str(pid_file)], os.environ)
    supervisor.start("short", [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"], os.environ)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())

    assert supervisor.wait() == 3

    assert long_lived.process.poll() is not None
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)

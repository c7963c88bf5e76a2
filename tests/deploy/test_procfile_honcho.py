"""The Procfile runs as written under a Procfile runner (honcho): every line parses, and the swarm line starts."""

import os
import queue
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen

import pytest

from cli.main import build_parser
from devstack.process_groups import signal_group
from protocol.catalog import ModelSpec
from tests.deploy.manifests import REPO, procfile

SWARM_READY_TIMEOUT_S = 240.0


@pytest.mark.parametrize("name", sorted(procfile()))
def test_every_procfile_line_is_a_complete_command_line(name: str) -> None:
    # `far-mesh swarm` without its required --model exited 2 at once, and honcho stopped every other process.
    argv = shlex.split(procfile()[name])
    assert argv[0] == "far-mesh"
    args = build_parser().parse_args(argv[1:])  # SystemExit(2) on a missing or unknown argument
    assert callable(args.handler)


@pytest.mark.swarm
def test_honcho_starts_the_swarm_line_as_written(tiny_models: tuple[ModelSpec, ...]) -> None:
    venv_bin = Path(sys.executable).parent
    cache_dir = Path(str(tiny_models[0].source)).parent.parent  # <cache>/models/<name>: the tests' generated models
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),  # the checkout, whatever the editable install was built with
        "FAR_MESH_CACHE_DIR": str(cache_dir),
    }
    process = Popen(
        [str(venv_bin / "honcho"), "-f", str(REPO / "Procfile"), "-d", str(REPO), "start", "swarm"],
        env=env,
        stdout=PIPE,
        stderr=STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None

    def read() -> None:
        for line in process.stdout or []:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + SWARM_READY_TIMEOUT_S
        while not any("swarm ready; Ctrl-C stops it" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen[-30:])
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "".join(seen[-30:])
        assert any("initial peers: /ip4/127.0.0.1/tcp/" in line for line in seen)
        assert not any("stopped (rc=" in line for line in seen), "".join(seen[-30:])
    finally:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except Exception:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        reader.join(timeout=10)
        process.stdout.close()

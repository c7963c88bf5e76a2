"""A script that started a system stops it when it is sent SIGTERM or SIGINT, and a second signal cannot cut that
stop short."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
from devstack.harness.interrupts import interrupt_on_signals
interrupt_on_signals("bench_x")
try:
    print("started", flush=True)
    time.sleep(60)
finally:
    print("stopping", flush=True)
    time.sleep(0.5)  # a second signal lands here, while the system stops
    print("stopped", flush=True)
"""


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_runs_the_scripts_finally_and_a_second_is_only_said(first: signal.Signals) -> None:
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(repo=str(REPO))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert script.stdout is not None and script.stdout.readline() == "started\n"
        script.send_signal(first)
        assert script.stdout.readline() == "stopping\n"
        script.send_signal(signal.SIGTERM)
        out, err = script.communicate(timeout=20)
    finally:
        script.kill()
    assert out == "stopped\n"
    assert "bench_x: SIGTERM again: already stopping" in err
    assert f"KeyboardInterrupt: {first.name}" in err and script.returncode != 0

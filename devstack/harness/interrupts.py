"""SIGINT and SIGTERM as one KeyboardInterrupt, for a script that started a system: its `finally` then stops what
it started. SIGTERM's default ends the process on the spot and leaves every process of the system running (a CI
job's timeout, a `kill`), and a background job of a non-interactive shell starts with SIGINT ignored."""

import signal
import sys
from types import FrameType


def interrupt_on_signals(script: str) -> None:
    """From now on the first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread; later ones are only
    said, so that the stop the first began is not cut short (a second Ctrl-C, or the parent-death SIGTERM a script
    started by pytest gets again as each of a dying pytest's threads exits, left it hung on its own threads)."""

    def already_stopping(signum: int, _frame: FrameType | None) -> None:
        print(f"{script}: {signal.Signals(signum).name} again: already stopping", file=sys.stderr, flush=True)

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, already_stopping)
        signal.signal(signal.SIGTERM, already_stopping)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

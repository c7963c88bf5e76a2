"""`python -m tests.accounting.consumer_dying_after_commit`: `far-mesh accounting`, SIGKILLed by itself right after
its first commit and before it acknowledges anything: the worst moment for exactly-once."""

import os
import signal
import sys

from accounting.consumer import UsageConsumer
from cli.main import main


async def _die_before_the_ack(*args: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


UsageConsumer._dead_letter_and_ack = _die_before_the_ack  # type: ignore[method-assign,assignment]
sys.exit(main(["accounting"]))

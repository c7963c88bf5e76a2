"""A chain payer process that kills itself (SIGKILL: no cleanup, no last commit) at a chosen step, so a test
can restart the payer from whatever that step left in the ledger and on the chain.

    python tests/payouts/payer_process.py after-sign|after-broadcast|awaiting-confirmations|before-confirm|none

Settings come from the environment, as for `far-mesh payouts run --payer chain`. The hooks are patched in
here, so the production modules carry no test switches.
"""

import asyncio
import os
import signal
import sys
from decimal import Decimal
from typing import Any

import asyncpg


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    import payouts.payer as payer_module
    from chain.client import ChainClient

    if point == "after-sign":  # the signed transaction is committed, nothing was broadcast
        record_signed = payer_module.record_signed

        async def signed_then_die(*args: Any, **kwargs: Any) -> None:
            await record_signed(*args, **kwargs)
            die()

        payer_module.record_signed = signed_then_die  # type: ignore[assignment]
    elif point == "after-broadcast":  # the node has it (and mines it at once); the ledger still says signed
        send_raw = ChainClient.send_raw

        async def sent_then_die(self: ChainClient, raw_tx: str) -> str:
            await send_raw(self, raw_tx)
            die()
            return ""

        ChainClient.send_raw = sent_then_die  # type: ignore[method-assign]
    elif point == "awaiting-confirmations":  # mined, counting its confirmations (the first look at the head)

        async def head_then_die(self: ChainClient) -> int:
            die()
            return 0

        ChainClient.block_number = head_then_die  # type: ignore[method-assign]
    elif point == "before-confirm":  # mined and confirmed on chain; the ledger has not marked anything paid

        async def die_instead(*args: Any, **kwargs: Any) -> None:
            die()

        payer_module.mark_paid = die_instead  # type: ignore[assignment]
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}")


async def main(point: str) -> None:
    from payouts.payer import ChainPayer
    from payouts.settings import PayoutSettings

    install(point)
    settings = PayoutSettings.from_env()
    payer = await ChainPayer.connect(settings)
    connection = await asyncpg.connect(settings.postgres_url)
    try:
        for settled in await payer.run_once(connection, min_far=Decimal(0)):
            print(f"batch {settled.batch_id}: {settled.status}")
    finally:
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

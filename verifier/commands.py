"""`far-mesh verifier`: the process that rechecks sampled sessions and slashes what does not recompute."""

import argparse
import asyncio
import signal


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    verifier = subparsers.add_parser(
        "verifier", help="recompute sampled spans of real sessions; slash and ban on mismatch (POSTGRES_URL)"
    )
    verifier.set_defaults(handler=run_verifier)


def run_verifier(args: argparse.Namespace) -> int:
    from verifier.service import serve
    from verifier.settings import VerifierSettings

    settings = VerifierSettings.from_env()
    settings.configure_logging()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
    return 0

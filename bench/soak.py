"""The chaos soak (issue #29): the whole system under a steady mix of buyers while a seeded random schedule
SIGKILLs and restarts its processes and restarts Redis and PostgreSQL; then the checkers, each with its numbers.
Exit status 0 only when every check passed. Not part of `make bench` (it is not a ratio benchmark).

Run: `.venv/bin/python bench/soak.py --duration 180` (the short soak), `--duration 1800` (the 30-minute one);
`--seed N` replays a run: the same seed gives the same schedule and the same buyers' choices.
"""

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.soak.run import run_soak  # noqa: E402


def main() -> int:
    interrupt_on_signals("soak")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load and faults")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a fresh one, printed)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent buyers")
    parser.add_argument("--mean-gap", type=float, default=12.0, help="mean seconds between faults")
    parser.add_argument("--gateways", type=int, default=2, help="gateway replicas the buyers spread over")
    parser.add_argument(
        "--chain", action="store_true", help="pay on a local chain: the payer, deposits, reconciler and node fault too"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="far-mesh-soak-") as work_dir:
        report = run_soak(
            seed,
            args.duration,
            Path(work_dir),
            clients=args.clients,
            mean_gap_s=args.mean_gap,
            chain=args.chain,
            gateways=args.gateways,
        )
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

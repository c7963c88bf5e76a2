"""Signalling a child's whole process group: a Petals server's handler processes and its p2pd live in the group
of the process we started, and signalling only that process would leave them running."""

import os
import signal


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to every process of group `pgid`; the group may already be gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass

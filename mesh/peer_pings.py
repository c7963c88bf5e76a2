"""Measuring every server of a model from this client: round trips by ping, and what each server announces.

Petals' own updater pings only a sample of servers (`max_pinged` per position), so a buyer's `sort` would rank
most servers by a guessed default delay. Pinging every server of the client's view once per snapshot interval
(the worker's loop) measures them all; the client's ping aggregator keeps the result, so Petals' own routing
sees the same numbers, and the worker writes them to Redis (`protocol.peer_measurements`) for other workers.
"""

import math
import time
from typing import Any

from protocol.peer_measurements import PeerMeasurement


def measure_peers(manager: Any) -> dict[str, PeerMeasurement]:
    """Ping every server in `manager`'s view (a Petals `RemoteSequenceManager`) and return what is known of each
    (blocking: up to the client's ping timeout)."""
    with manager.lock_changes:
        spans = list(manager.state.sequence_info.spans_by_priority)
    if not spans:
        return {}
    manager.ping_aggregator.ping([span.peer_id for span in spans], wait_timeout=manager.config.ping_timeout)
    rtts = manager.ping_aggregator.to_dict()
    now = time.time()
    measured = {}
    for span in spans:
        rtt = rtts.get(span.peer_id)
        info = span.server_info
        measured[span.peer_id.to_base58()] = PeerMeasurement(
            rtt_s=rtt if rtt is not None and math.isfinite(rtt) else None,
            reachable=rtt is None or math.isfinite(rtt),
            throughput=_finite(getattr(info, "throughput", None)),
            inference_rps=_finite(getattr(info, "inference_rps", None)),
            measured_at=now,
        )
    return measured


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value >= 0 else None

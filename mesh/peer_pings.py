"""Measuring every server of a model from this client: round trips by ping, and what each server announces.

Petals' own updater pings only a sample of servers (`max_pinged` per position), so a buyer's `sort` would rank
most servers by a guessed default delay. Pinging every server of the client's view once per snapshot interval
(the worker's loop) measures them all; the client's ping aggregator keeps the result, so Petals' own routing
sees the same numbers, and the worker writes them to Redis (`protocol.peer_measurements`) for other workers.
Beside each round trip goes the speed this worker's sessions measured of the server (`mesh.peer_speed`); where
it measured none, the figure another worker wrote is carried over while it is fresh, so a worker that never used
a server does not erase what the others know of it (every worker rewrites every server's entry).
"""

import math
import time
from collections.abc import Mapping
from typing import Any

from mesh.peer_speed import MAX_AGE_S, PeerSpeeds
from protocol.peer_measurements import PeerMeasurement


def measure_peers(
    manager: Any, speeds: PeerSpeeds | None = None, previous: Mapping[str, PeerMeasurement] | None = None
) -> dict[str, PeerMeasurement]:
    """Ping every server in `manager`'s view (a Petals `RemoteSequenceManager`) and return what is known of each
    (blocking: up to the client's ping timeout): with this worker's `speeds`, or else the fresh speed in
    `previous` (what Redis held)."""
    with manager.lock_changes:
        spans = list(manager.state.sequence_info.spans_by_priority)
    if not spans:
        return {}
    manager.ping_aggregator.ping([span.peer_id for span in spans], wait_timeout=manager.config.ping_timeout)
    rtts = manager.ping_aggregator.to_dict()
    now = time.time()
    own = speeds.snapshot() if speeds is not None else {}
    measured = {}
    for span in spans:
        peer = span.peer_id.to_base58()
        rtt = rtts.get(span.peer_id)
        info = span.server_info
        decode_s, decode_at = None, None
        if (speed := own.get(peer)) is not None:
            decode_s, decode_at = speed.s_per_block, speed.measured_at
        elif (seen := (previous or {}).get(peer)) is not None and seen.decode_measured_at is not None:
            if now - seen.decode_measured_at <= MAX_AGE_S:
                decode_s, decode_at = seen.decode_s_per_block, seen.decode_measured_at
        measured[peer] = PeerMeasurement(
            rtt_s=rtt if rtt is not None and math.isfinite(rtt) else None,
            reachable=rtt is None or math.isfinite(rtt),
            throughput=_finite(getattr(info, "throughput", None)),
            inference_rps=_finite(getattr(info, "inference_rps", None)),
            measured_at=now,
            decode_s_per_block=decode_s,
            decode_measured_at=decode_at,
        )
    return measured


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value >= 0 else None

"""A worker measures every server of its client's view: a ping each, and what each announces."""

import math
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from mesh.peer_pings import measure_peers


class _Pings:
    def __init__(self, answers: dict[Any, float]) -> None:
        self.answers = answers
        self.asked: list[Any] = []
        self.rtts: dict[Any, float] = {}

    def ping(self, peers: list[Any], *, wait_timeout: float) -> None:
        self.asked = list(peers)
        self.rtts = {peer: self.answers[peer] for peer in peers if peer in self.answers}

    def to_dict(self) -> dict[Any, float]:
        return dict(self.rtts)


def test_every_server_is_pinged_and_an_unanswered_ping_marks_it_unreachable() -> None:
    from mesh.compat import petals  # first: it makes hivemind and petals importable together

    PeerID = petals.data_structures.PeerID

    ds = petals.data_structures
    near, down, silent = (PeerID(name) for name in (b"near", b"down", b"silent"))
    info = ds.ServerInfo(state=ds.ServerState.ONLINE, throughput=20.0, inference_rps=500.0)
    spans = [ds.RemoteSpanInfo(peer, 0, 4, info) for peer in (near, down, silent)]
    pings = _Pings({near: 0.01, down: math.inf})
    manager = SimpleNamespace(
        lock_changes=threading.Lock(),
        state=SimpleNamespace(sequence_info=SimpleNamespace(spans_by_priority=spans)),
        ping_aggregator=pings,
        config=SimpleNamespace(ping_timeout=1.0),
    )
    measured = measure_peers(manager)
    assert pings.asked == [near, down, silent]
    assert (measured[near.to_base58()].rtt_s, measured[near.to_base58()].reachable) == (0.01, True)
    assert (measured[down.to_base58()].rtt_s, measured[down.to_base58()].reachable) == (None, False)
    assert (measured[silent.to_base58()].rtt_s, measured[silent.to_base58()].reachable) == (None, True)
    assert measured[near.to_base58()].throughput == 20.0 and measured[near.to_base58()].inference_rps == 500.0


def test_each_server_carries_this_workers_own_speed_else_another_workers_while_fresh() -> None:
    from mesh.compat import petals  # first: it makes hivemind and petals importable together
    from mesh.peer_speed import MAX_AGE_S, PeerSpeeds
    from protocol.peer_measurements import PeerMeasurement

    ds = petals.data_structures
    timed, theirs, stale = (ds.PeerID(name) for name in (b"timed", b"theirs", b"stale"))
    info = ds.ServerInfo(state=ds.ServerState.ONLINE, throughput=1e6)
    manager = SimpleNamespace(
        lock_changes=threading.Lock(),
        state=SimpleNamespace(
            sequence_info=SimpleNamespace(
                spans_by_priority=[ds.RemoteSpanInfo(peer, 0, 4, info) for peer in (timed, theirs, stale)]
            )
        ),
        ping_aggregator=_Pings({}),
        config=SimpleNamespace(ping_timeout=1.0),
    )
    speeds = PeerSpeeds()
    speeds.record(timed.to_base58(), 4, 0.08)
    now = time.time()
    previous = {
        timed.to_base58(): PeerMeasurement(measured_at=now, decode_s_per_block=0.5, decode_measured_at=now),
        theirs.to_base58(): PeerMeasurement(measured_at=now, decode_s_per_block=0.03, decode_measured_at=now - 5),
        stale.to_base58(): PeerMeasurement(
            measured_at=now, decode_s_per_block=0.03, decode_measured_at=now - MAX_AGE_S - 1
        ),
    }
    measured = measure_peers(manager, speeds, previous)
    assert measured[timed.to_base58()].decode_s_per_block == pytest.approx(0.02)
    assert measured[theirs.to_base58()].decode_s_per_block == 0.03
    assert measured[theirs.to_base58()].decode_measured_at == now - 5
    assert measured[stale.to_base58()].decode_s_per_block is None

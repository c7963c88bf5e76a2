"""A worker measures every server of its client's view: a ping each, and what each announces."""

import math
import threading
from types import SimpleNamespace
from typing import Any

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

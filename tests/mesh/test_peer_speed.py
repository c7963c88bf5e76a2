"""A worker times each server's decode steps in its own sessions and keeps a smoothed figure per peer: the evidence
`sort: throughput` ranks by, instead of the throughput a server announces (#30 item 2)."""

from types import SimpleNamespace
from typing import Any

import pytest

from mesh.peer_speed import EMA_WEIGHT, MAX_AGE_S, PeerSpeeds


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _ServerSession:
    """What the timer reads of Petals' `_ServerInferenceSession`: its span, whether it stepped, and `step`; each
    step takes `seconds` of the fake timer."""

    def __init__(self, peer: str, start: int, end: int, timer: _Clock, seconds: float) -> None:
        self.span = SimpleNamespace(peer_id=peer, start=start, end=end)
        self.stepped = False
        self._timer, self.seconds = timer, seconds

    def step(self, inputs: Any, prompts: Any, hypo_ids: Any, *, step_id: str) -> Any:
        self._timer.now += self.seconds
        self.stepped = True
        return inputs


class _InferenceSession:
    def __init__(self, server_sessions: list[_ServerSession]) -> None:
        self.server_sessions = server_sessions

    def _enter_server_sessions(self, chosen_spans: Any) -> list[_ServerSession]:
        return self.server_sessions


def _tokens(n: int) -> Any:
    return SimpleNamespace(shape=(1, n, 8))


def test_decode_steps_feed_a_per_block_moving_average_and_prefill_steps_are_not_sampled() -> None:
    timer = _Clock()
    speeds = PeerSpeeds(timer=timer)
    fast, slow = _ServerSession("fast", 0, 2, timer, 0.02), _ServerSession("slow", 2, 4, timer, 0.2)
    session = _InferenceSession([fast, slow])
    speeds.attach(session)
    for server_session in session._enter_server_sessions([]):
        server_session.step(_tokens(30), None, None, step_id="prefill")  # the prompt: not a sample
    assert speeds.get("fast") is None and speeds.get("slow") is None
    fast.step(_tokens(1), None, None, step_id="1")
    assert speeds.get("fast") == pytest.approx(0.01)  # 0.02 s over 2 blocks
    fast.seconds = 0.04
    fast.step(_tokens(1), None, None, step_id="2")
    assert speeds.get("fast") == pytest.approx(0.01 + EMA_WEIGHT * (0.02 - 0.01))
    slow.step(_tokens(1), None, None, step_id="1")
    assert speeds.get("slow") == pytest.approx(0.1)


def test_a_figure_not_refreshed_for_max_age_is_forgotten_and_starts_again_from_its_next_sample() -> None:
    clock = _Clock()
    speeds = PeerSpeeds(clock=clock)
    speeds.record("peer", 4, 0.4)
    assert set(speeds.snapshot()) == {"peer"}
    clock.now += MAX_AGE_S + 1
    assert speeds.get("peer") is None and speeds.snapshot() == {}
    speeds.record("peer", 1, 0.5)
    assert speeds.get("peer") == 0.5
    speeds.record("peer", 0, 0.5)  # a step of no blocks measures nothing
    assert speeds.get("peer") == 0.5

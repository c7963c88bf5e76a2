"""workers.spot_checks and workers.route_policy: which sessions are sampled, what is published, which peers are
kept out of routes. Redis is fakeredis; the model's sequence manager a stand-in holding what Petals holds."""

import threading
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import torch

from mesh.session import SpanRecorder
from protocol import keys
from protocol.verification import SpotCheck
from workers.route_policy import DEFAULT_POLICY, apply_route_policy, banned_peers, redundant
from workers.settings import WorkerSettings
from workers.spot_checks import (
    RunTrust,
    begin_trust,
    flush_failures,
    nodes_due,
    sampled_by_fraction,
    watch_failures,
)

PEER_A = "QmNckXSTCTz4ugo9p4jbYJeaQUJS4bgTnrzLzqCPQQBdJR"
PEER_B = "QmUHKQbyJx3dYCbZ4AyEc3MYGCR4SCmKDkLeKdCNRsrQR4"


class FakeManager:
    """What `workers` reads and sets on Petals' RemoteSequenceManager."""

    def __init__(self, peers: list[str]) -> None:
        from hivemind.p2p import PeerID

        spans = [[SimpleNamespace(peer_id=PeerID.from_base58(p))] for p in peers]
        self.state = SimpleNamespace(sequence_info=SimpleNamespace(spans_containing_block=spans))
        self.lock_changes = threading.Lock()
        self.blocked_servers: Any = None
        self.updates = 0

    def update(self, *, wait: bool) -> None:
        self.updates += 1

    def on_request_failure(self, peer_id: Any) -> None:
        """Petals' own bookkeeping (its temporary ban list); nothing here."""


class FakeServed:
    def __init__(self, peers: list[str]) -> None:
        self.manager = FakeManager(peers)
        self.model = SimpleNamespace(transformer=SimpleNamespace(h=SimpleNamespace(sequence_manager=self.manager)))

    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


def settings(**overrides: Any) -> WorkerSettings:
    values = {"far_mesh_dht_bootstrap": "/ip4/127.0.0.1/tcp/1/p2p/" + PEER_A, **overrides}
    return WorkerSettings.from_env(**values)


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


def test_the_fraction_sampled_is_close_to_the_setting_and_the_same_for_every_run_of_a_request() -> None:
    sampled = sum(sampled_by_fraction(f"req-{i}", 0.05) for i in range(20_000))
    assert 800 < sampled < 1200
    assert sampled_by_fraction("req-7", 0.5) == sampled_by_fraction("req-7", 0.5)
    assert not any(sampled_by_fraction(f"req-{i}", 0.0) for i in range(1000))


async def test_a_node_unsampled_for_its_interval_is_due_once_and_then_not_until_the_interval_passes(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    assert await nodes_due(redis, {PEER_A, PEER_B}, per_hour=2, now=10_000.0) == sorted([PEER_A, PEER_B])
    assert await nodes_due(redis, {PEER_A}, per_hour=2, now=10_100.0) == []
    assert await nodes_due(redis, {PEER_A}, per_hour=2, now=10_000.0 + 1801) == [PEER_A]
    assert await nodes_due(redis, {PEER_B}, per_hour=0, now=99_999.0) == []


async def test_a_session_is_sampled_when_a_node_is_due_even_at_fraction_zero(redis: fakeredis.FakeAsyncRedis) -> None:
    served = FakeServed([PEER_A])
    first = await begin_trust(redis, "req-1", served, settings(far_mesh_verify_fraction=0.0))  # type: ignore[arg-type]
    assert first.reason == "node-due" and first.recorder is not None
    second = await begin_trust(redis, "req-2", served, settings(far_mesh_verify_fraction=0.0))  # type: ignore[arg-type]
    assert second.reason is None and second.recorder is None and second.route_policy == DEFAULT_POLICY


async def test_banned_peers_leave_the_routes_until_their_ban_ends(redis: fakeredis.FakeAsyncRedis) -> None:
    import time

    served = FakeServed([PEER_A, PEER_B])
    await redis.zadd(keys.BANNED_NODES, {PEER_B: time.time() + 60, PEER_A: time.time() - 1})
    assert await banned_peers(redis) == {PEER_B}
    assert await apply_route_policy(redis, served) == "avoid-banned:1"  # type: ignore[arg-type]
    assert {p.to_base58() for p in served.manager.blocked_servers} == {PEER_B}
    assert await apply_route_policy(redis, served) == "avoid-banned:1"  # type: ignore[arg-type]
    assert served.manager.updates == 1  # unchanged bans: no second refresh of the swarm view
    await redis.zrem(keys.BANNED_NODES, PEER_B)
    assert await apply_route_policy(redis, served) == DEFAULT_POLICY  # type: ignore[arg-type]
    assert served.manager.blocked_servers is None and served.manager.updates == 2


async def test_a_sampled_run_publishes_every_span_it_recorded_in_one_entry(redis: fakeredis.FakeAsyncRedis) -> None:
    recorder = SpanRecorder()
    session = SimpleNamespace(_enter_server_sessions=lambda spans: spans)
    recorder.attach(session)

    class ServerSession:
        def __init__(self, peer: str, start: int, end: int) -> None:
            self.span = SimpleNamespace(peer_id=peer, start=start, end=end)
            self.history: torch.Tensor | None = None

        def step(self, inputs: torch.Tensor, prompts: Any, hypo_ids: Any, *, step_id: str) -> torch.Tensor:
            first = self.history is None  # Petals sends the whole history once, then the new position only
            self.history = inputs if first else torch.cat([self.history, inputs[:, -1:]], dim=1)
            return (inputs if first else inputs[:, -1:]) * 2

    first, second = session._enter_server_sessions([ServerSession(PEER_A, 0, 2), ServerSession(PEER_B, 2, 4)])
    prompt = torch.ones(1, 3, 8)
    for step in range(3):
        inputs = prompt if step == 0 else torch.full((1, 3 + step, 8), float(step))
        second.step(first.step(inputs, None, None, step_id="s"), None, None, step_id="s")
        recorder.step_done()
    trust = RunTrust(recorder=recorder, reason="fraction")
    await trust.publish(redis, "req-9", "far-tiny-llama-4")
    ((_, fields),) = await redis.xrange(keys.VERIFICATION_STREAM)
    check = SpotCheck.from_stream_fields(fields)
    assert [(s.peer_id, s.start_block, s.end_block) for s in check.spans] == [(PEER_A, 0, 2), (PEER_B, 2, 4)]
    assert [(step.step, step.tokens) for step in check.spans[0].steps] == [(0, 3), (1, 1), (2, 1)]
    assert set(await redis.hkeys(keys.VERIFIED_NODES)) == {PEER_A.encode(), PEER_B.encode()}


def test_a_malformed_entry_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="no 'check' field"):
        SpotCheck.from_stream_fields({b"other": b"{}"})


def test_a_low_reputation_peer_is_avoided_only_where_others_hold_its_blocks() -> None:
    view = [{"good", "shaky"}, {"good", "shaky"}, {"lonely"}]
    assert redundant(view, ["lonely", "shaky"], frozenset()) == {"shaky"}
    assert redundant(view, ["shaky"], frozenset({"good"})) == set()  # the other holder is banned
    assert redundant([{"a", "b"}], ["a", "b"], frozenset()) == {"a"}  # never both holders of a block


async def test_the_policy_prefers_reputable_servers_and_says_so(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = FakeServed([PEER_A, PEER_B])
    monkeypatch.setattr("workers.route_policy._servers_by_block", lambda manager: [{PEER_A, PEER_B}])
    await redis.hset(keys.NODE_REPUTATION, mapping={PEER_A: "0.9", PEER_B: "0.083333"})
    assert await apply_route_policy(redis, served) == "avoid-low-reputation:1"  # type: ignore[arg-type]
    assert {p.to_base58() for p in served.manager.blocked_servers} == {PEER_B}
    await redis.hset(keys.NODE_REPUTATION, mapping={PEER_B: "0.5"})
    assert await apply_route_policy(redis, served) == DEFAULT_POLICY  # type: ignore[arg-type]
    assert served.manager.blocked_servers is None


async def test_steps_that_fail_on_a_server_are_counted_once_each_for_the_verifier(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    from hivemind.p2p import PeerID

    await flush_failures(fakeredis.FakeAsyncRedis())  # what earlier tests in this process counted
    served = FakeServed([PEER_A])
    watch_failures(served)  # type: ignore[arg-type]
    watch_failures(served)  # type: ignore[arg-type]
    for _ in range(2):
        served.manager.on_request_failure(PeerID.from_base58(PEER_B))
    served.manager.on_request_failure(None)  # a failure before any server was chosen blames no one
    await flush_failures(redis)
    await flush_failures(redis)
    assert await redis.hgetall(keys.FAILED_STEPS) == {PEER_B.encode(): b"2"}

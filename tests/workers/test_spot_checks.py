"""workers.spot_checks and workers.route_policy: which sessions are sampled, what is published, which peers are
kept out of routes. Redis is fakeredis (real Redis where a Lua script runs); the model's sequence manager a
stand-in holding what Petals holds."""

import logging
import time
import zlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
import torch

from mesh.session import SpanRecorder
from protocol import keys
from protocol.verification import UNVERIFIED_FIELD, SpotCheck
from tests.verifier.helpers import MODEL, PEER_A, FakeServed, Replay, recorded_span, settings
from workers import spot_checks
from workers.route_policy import DEFAULT_POLICY, apply_route_policy, banned_peers, redundant
from workers.settings import WorkerSettings
from workers.spot_checks import (
    CLAIM_MAX_S,
    RunTrust,
    begin_trust,
    flush_failures,
    nodes_due,
    sampled_by_fraction,
    sampling_key,
    watch_failures,
)

PEER_B = "QmUHKQbyJx3dYCbZ4AyEc3MYGCR4SCmKDkLeKdCNRsrQR4"
SECRET = "a-fleet-wide-sampling-secret"


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


@pytest.fixture
async def live_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The test session's real Redis, flushed: publishing runs a Lua script, which fakeredis cannot."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


def ids_whose_crc32(below: bool, count: int, fraction: float = 0.05) -> list[str]:
    """Request ids a client can pick by their public hash: all under `fraction` of crc32's range, or all over."""
    ids: list[str] = []
    i = 0
    while len(ids) < count:
        request_id = f"chosen-{i}"
        if (zlib.crc32(request_id.encode()) / 2**32 < fraction) == below:
            ids.append(request_id)
        i += 1
    return ids


async def sampled(redis: fakeredis.FakeAsyncRedis, request_ids: list[str], config: WorkerSettings) -> set[str]:
    served = FakeServed([PEER_A])
    chosen = set()
    for request_id in request_ids:
        trust = await begin_trust(redis, request_id, served, config)  # type: ignore[arg-type]
        if trust.reason == "fraction":
            chosen.add(request_id)
    return chosen


def test_the_fraction_sampled_is_close_to_the_setting_and_the_same_for_every_run_of_a_request() -> None:
    key = SECRET.encode()
    sampled = sum(sampled_by_fraction(f"req-{i}", 0.05, key) for i in range(20_000))
    assert 800 < sampled < 1200
    assert sampled_by_fraction("req-7", 0.5, key) == sampled_by_fraction("req-7", 0.5, key)
    assert not any(sampled_by_fraction(f"req-{i}", 0.0, key) for i in range(1000))


async def test_ids_a_client_chose_by_their_crc32_are_sampled_at_the_configured_rate_all_the_same(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    config = settings(
        worker_verify_fraction=0.05, worker_verify_min_per_node_hour=0, worker_verify_sampling_secret=SECRET
    )
    always = await sampled(redis, ids_whose_crc32(below=True, count=2000), config)
    never = await sampled(redis, ids_whose_crc32(below=False, count=2000), config)
    # Binomial(2000, 0.05): 100 expected, standard deviation 9.7; the bounds are five of them away
    assert 50 < len(always) < 150, "ids a public hash always samples must not be sampled more than the fraction"
    assert 50 < len(never) < 150, "ids a public hash never samples must be sampled like any other"


async def test_a_different_secret_samples_different_requests(redis: fakeredis.FakeAsyncRedis) -> None:
    request_ids = [f"req-{i}" for i in range(400)]
    config = {"worker_verify_fraction": 0.5, "worker_verify_min_per_node_hour": 0}
    one = await sampled(redis, request_ids, settings(**config, worker_verify_sampling_secret=SECRET))
    other = await sampled(redis, request_ids, settings(**config, worker_verify_sampling_secret=SECRET[::-1]))
    assert 140 < len(one) < 260 and 140 < len(other) < 260
    assert len(one & other) < 150  # independent halves share about 100 (Binomial(400, 0.25), sd 8.7)


def test_without_a_secret_a_worker_samples_with_a_random_key_of_its_own_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(spot_checks, "_process_key", None)
    with caplog.at_level(logging.WARNING, logger="workers.spot_checks"):
        key = sampling_key(settings())
        assert sampling_key(settings()) == key and len(key) == 32
    assert [r.message for r in caplog.records if "WORKER_VERIFY_SAMPLING_SECRET" in r.message] != []
    monkeypatch.setattr(spot_checks, "_process_key", None)
    assert sampling_key(settings()) != key  # another process: another key
    assert sampling_key(settings(worker_verify_sampling_secret=SECRET)) == SECRET.encode()


async def test_a_due_node_is_claimed_by_one_run_at_a_time_and_is_due_again_when_its_claim_lapses_unchecked(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    assert await nodes_due(redis, {PEER_A, PEER_B}, per_hour=2, now=10_000.0) == sorted([PEER_A, PEER_B])
    assert await nodes_due(redis, {PEER_A}, per_hour=2, now=10_100.0) == []
    assert await nodes_due(redis, {PEER_A}, per_hour=2, now=10_000.0 + CLAIM_MAX_S + 1) == [PEER_A]
    assert await nodes_due(redis, {PEER_B}, per_hour=0, now=99_999.0) == []
    assert await redis.hlen(keys.VERIFIED_NODES) == 0  # claiming checks no one


async def test_a_due_peer_not_on_the_route_stays_due_after_the_request(live_redis: aioredis.Redis) -> None:
    served = FakeServed([PEER_A, PEER_B])
    config = settings(worker_verify_fraction=0.0)
    started = time.time()
    trust = await begin_trust(live_redis, "req-route-a", served, config)  # type: ignore[arg-type]
    assert trust.reason == "node-due" and trust.recorder is not None
    trust.recorder = Replay([recorded_span(PEER_A)])  # the route used PEER_A only
    await trust.publish(live_redis, "req-route-a", MODEL)
    assert await live_redis.hget(keys.VERIFIED_NODES, PEER_B) is None
    assert await nodes_due(live_redis, {PEER_A, PEER_B}, per_hour=1, now=started + CLAIM_MAX_S + 1) == [PEER_B]


async def test_a_peer_whose_span_was_recorded_is_stamped_sampled_when_its_check_is_published(
    live_redis: aioredis.Redis,
) -> None:
    started = time.time()
    served = FakeServed([PEER_A])
    trust = await begin_trust(live_redis, "req-route-a", served, settings(worker_verify_fraction=0.0))  # type: ignore[arg-type]
    assert trust.reason == "node-due"
    trust.recorder = Replay([recorded_span(PEER_A)])
    await trust.publish(live_redis, "req-route-a", MODEL)
    stamped = await live_redis.hget(keys.VERIFIED_NODES, PEER_A)
    assert stamped is not None and float(stamped) >= started
    assert await nodes_due(live_redis, {PEER_A}, per_hour=1, now=started + CLAIM_MAX_S + 1) == []


async def test_a_check_dropped_over_the_byte_budget_stamps_no_one(live_redis: aioredis.Redis) -> None:
    config = settings(worker_verify_fraction=0.0, worker_verify_max_bytes=1000)
    trust = await begin_trust(live_redis, "req-too-big", FakeServed([PEER_A]), config)  # type: ignore[arg-type]
    trust.recorder = Replay([recorded_span(PEER_A, payload_bytes=2000)])
    await trust.publish(live_redis, "req-too-big", MODEL)
    entries = await live_redis.xrange(keys.VERIFICATION_STREAM)
    assert [set(fields) for _, fields in entries] == [{UNVERIFIED_FIELD.encode()}]  # a notice, no check
    assert await live_redis.hget(keys.VERIFIED_NODES, PEER_A) is None


async def test_a_session_is_sampled_when_a_node_is_due_even_at_fraction_zero(redis: fakeredis.FakeAsyncRedis) -> None:
    served = FakeServed([PEER_A])
    first = await begin_trust(redis, "req-1", served, settings(worker_verify_fraction=0.0))  # type: ignore[arg-type]
    assert first.reason == "node-due" and first.recorder is not None
    second = await begin_trust(redis, "req-2", served, settings(worker_verify_fraction=0.0))  # type: ignore[arg-type]
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


async def test_a_ban_whose_swarm_re_read_never_answers_fails_the_policy_in_time_and_neither_the_run_nor_its_check(
    redis: fakeredis.FakeAsyncRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Petals' own update(wait=True) would hold the run for ever here: its updater retries an unreachable DHT.
    def never_re_read() -> FakeServed:
        served = FakeServed([PEER_A, PEER_B])
        served.manager.ready.clear()
        served.manager.config.request_timeout = 0.2
        return served

    await redis.zadd(keys.BANNED_NODES, {PEER_B: time.time() + 60})
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not re-read within 0.2 s"):
        await apply_route_policy(redis, never_re_read())  # type: ignore[arg-type]
    config = settings(worker_verify_fraction=1.0)
    trust = await begin_trust(redis, "req-dht-gone", never_re_read(), config)  # type: ignore[arg-type]
    assert trust.route_policy == DEFAULT_POLICY and "route policy not applied" in caplog.text
    assert trust.reason == "fraction" and trust.recorder is not None  # the session is still checked
    assert time.monotonic() - started < 5


async def test_a_sampled_run_publishes_every_span_it_recorded_in_one_entry(live_redis: aioredis.Redis) -> None:
    redis = live_redis
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
    trust = RunTrust(recorder=recorder, reason="fraction", max_bytes=1_000_000)
    await trust.publish(redis, "req-9", "far-tiny-llama-4")
    ((_, fields),) = await redis.xrange(keys.VERIFICATION_STREAM)
    check = SpotCheck.from_stream_fields(fields)
    assert [(s.peer_id, s.start_block, s.end_block) for s in check.spans] == [(PEER_A, 0, 2), (PEER_B, 2, 4)]
    assert [(step.step, step.tokens) for step in check.spans[0].steps] == [(0, 3), (1, 1), (2, 1)]
    assert set(await redis.hkeys(keys.VERIFIED_NODES)) == {PEER_A.encode(), PEER_B.encode()}


def test_every_recorded_tensor_keeps_its_own_dtype_and_each_span_the_dtype_its_server_announced() -> None:
    """The worker sends float32 to the first span and each later span gets the previous server's reply: a
    bfloat16 server's span is sent float32 and answers bfloat16, and the float32 server after it is sent
    bfloat16. One label per span (the reply's) made the verifier misread the inputs and drop every such check."""
    recorder = SpanRecorder()
    session = SimpleNamespace(_enter_server_sessions=lambda spans: spans)
    recorder.attach(session)

    class ServerSession:
        def __init__(self, peer: str, start: int, end: int, dtype: torch.dtype) -> None:
            info = SimpleNamespace(torch_dtype=str(dtype).removeprefix("torch."))
            self.span = SimpleNamespace(peer_id=peer, start=start, end=end, server_info=info)
            self.history: torch.Tensor | None = None
            self.dtype = dtype

        def step(self, inputs: torch.Tensor, prompts: Any, hypo_ids: Any, *, step_id: str) -> torch.Tensor:
            self.history = inputs if self.history is None else torch.cat([self.history, inputs[:, -1:]], dim=1)
            return inputs[:, -inputs.shape[1] :].to(self.dtype) * 2

    first, second = session._enter_server_sessions(
        [ServerSession(PEER_A, 0, 2, torch.bfloat16), ServerSession(PEER_B, 2, 4, torch.float32)]
    )
    second.step(first.step(torch.ones(1, 3, 8), None, None, step_id="s"), None, None, step_id="s")
    recorder.step_done()
    spans = recorder.spans()
    assert [(s.peer_id, s.announced_dtype) for s in spans] == [(PEER_A, "bfloat16"), (PEER_B, "float32")]
    assert [(s.steps[0].inputs_dtype, s.steps[0].outputs_dtype) for s in spans] == [
        ("float32", "bfloat16"),
        ("bfloat16", "float32"),
    ]


def test_a_malformed_entry_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="no 'check' field"):
        SpotCheck.from_stream_fields({b"other": b"{}"})


def test_a_low_reputation_peer_is_avoided_only_where_servers_in_good_standing_hold_its_blocks() -> None:
    view = [{"good", "shaky"}, {"good", "shaky"}, {"lonely"}]
    assert redundant(view, ["lonely", "shaky"], frozenset()) == {"shaky"}
    assert redundant(view, ["shaky"], frozenset({"good"})) == set()  # the other holder is banned
    assert redundant([{"a", "b"}], ["a", "b"], frozenset()) == set()  # no replica is blocked for another one


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


async def test_a_peer_with_no_score_yet_stands_in_for_no_peer_on_probation(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer id the ledger has not seen costs nothing to mint: it is no better than a peer on probation."""
    served = FakeServed([PEER_A, PEER_B])
    monkeypatch.setattr("workers.route_policy._servers_by_block", lambda manager: [{PEER_A, PEER_B}])
    await redis.hset(keys.NODE_REPUTATION, mapping={PEER_B: "0.083333"})  # A: no score at all
    assert await apply_route_policy(redis, served) == DEFAULT_POLICY  # type: ignore[arg-type]
    assert served.manager.blocked_servers is None
    await redis.hset(keys.NODE_REPUTATION, mapping={PEER_A: "0.9"})  # A earned a score: now B is avoided
    assert await apply_route_policy(redis, served) == "avoid-low-reputation:1"  # type: ignore[arg-type]


async def test_a_replica_on_probation_is_routed_to_once_the_reputable_server_beside_it_is_unreachable(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hivemind.p2p import PeerID

    served = FakeServed([PEER_A, PEER_B])
    monkeypatch.setattr("workers.route_policy._servers_by_block", lambda manager: [{PEER_A, PEER_B}])
    await redis.hset(keys.NODE_REPUTATION, mapping={PEER_A: "0.9", PEER_B: "0.083333"})
    assert await apply_route_policy(redis, served) == "avoid-low-reputation:1"  # type: ignore[arg-type]

    # A was killed: the DHT still announces it online, but a ping found it dead (MeshClient.refresh_routes)
    served.manager.on_request_failure(PeerID.from_base58(PEER_A))

    assert await apply_route_policy(redis, served) == DEFAULT_POLICY  # type: ignore[arg-type]
    assert served.manager.blocked_servers is None


async def test_a_ban_or_score_naming_no_peer_id_is_ignored_and_the_routes_are_still_planned(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = FakeServed([PEER_A, PEER_B])
    monkeypatch.setattr("workers.route_policy._servers_by_block", lambda manager: [{PEER_A, PEER_B}])
    await redis.zadd(keys.BANNED_NODES, {"node-a": time.time() + 600, PEER_A: time.time() + 600})
    await redis.hset(keys.NODE_REPUTATION, mapping={"peer-b": "0.1"})

    assert await apply_route_policy(redis, served) == "avoid-banned:1"  # type: ignore[arg-type]
    assert {p.to_base58() for p in served.manager.blocked_servers} == {PEER_A}


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

"""One session routes by its own preferences through Petals' real data structures, and the model's shared
sequence manager, which every other session routes through, is left exactly as it was (#30 item 2)."""

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from mesh import session_routes
from mesh.announce import public_name_for
from mesh.route_choice import RouteRule, RouteUnsatisfiable
from mesh.session_routes import SessionRoutes

WALLET = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


class _Pings:
    def __init__(self, rtts: dict[Any, float]) -> None:
        self.rtts = rtts

    def to_dict(self) -> dict[Any, float]:
        return dict(self.rtts)


def shared_manager(held_back: frozenset[str] = frozenset(), announced: dict[str, float] | None = None) -> Any:
    """What `SessionRoutes` reads of a `RemoteSequenceManager`: a four-block view where `whole` holds 0..4 (far),
    `near-a` 0..2 (announcing WALLET) and `near-b` 2..4 (both near), as Petals' updater builds it from the DHT;
    the `held_back` servers are in its `blocked_servers` and so out of its view, as the route policy leaves them;
    each announces a throughput of 10 unless `announced` says otherwise."""
    from hivemind.p2p import PeerID

    from mesh.compat import petals

    ds = petals.data_structures
    uids = [f"tiny.{i}" for i in range(4)]
    ids = {name: PeerID(name.encode()) for name in ("whole", "near-a", "near-b")}
    spans = {"whole": (0, 4, None), "near-a": (0, 2, public_name_for(WALLET)), "near-b": (2, 4, None)}
    spans = {name: span for name, span in spans.items() if name not in held_back}
    infos = {
        name: ds.ServerInfo(
            state=ds.ServerState.ONLINE,
            throughput=(announced or {}).get(name, 10.0),
            start_block=start,
            end_block=end,
            public_name=public,
            inference_rps=500.0,
        )
        for name, (start, end, public) in spans.items()
    }
    modules = [
        ds.RemoteModuleInfo(uid, {ids[n]: infos[n] for n, (s, e, _) in spans.items() if s <= i < e})
        for i, uid in enumerate(uids)
    ]
    sequence_info = petals.client.routing.sequence_info.RemoteSequenceInfo.make_empty(uids)
    sequence_info.update_(modules)
    ready = threading.Event()
    ready.set()
    return SimpleNamespace(
        state=SimpleNamespace(sequence_info=sequence_info),
        lock_changes=threading.Lock(),
        _thread_start_lock=threading.Lock(),
        is_alive=lambda: True,
        ready=ready,
        ping_aggregator=_Pings({ids["whole"]: 0.5, ids["near-a"]: 0.01, ids["near-b"]: 0.01}),
        blocked_servers={ids[name] for name in held_back} or None,
        block_uids=tuple(uids),
        config=SimpleNamespace(max_retries=3),
    )


class _Manager(SimpleNamespace):
    def __len__(self) -> int:
        return 4


def _routes(
    rule: RouteRule, held_back: frozenset[str] = frozenset(), banned: frozenset[str] = frozenset()
) -> tuple[SessionRoutes, Any]:
    manager = _Manager(**vars(shared_manager(held_back)))
    return SessionRoutes(manager, rule, banned=banned), manager


def _chosen(spans: list[Any]) -> list[tuple[str, int, int]]:
    return [(span.peer_id.to_bytes().decode(), span.start, span.end) for span in spans]


def test_a_session_ignoring_a_peer_is_routed_around_it_while_the_shared_view_still_holds_it() -> None:
    routes, manager = _routes(RouteRule(ignore=frozenset({WALLET})))
    before = [list(spans) for spans in manager.state.sequence_info.spans_containing_block]
    assert _chosen(routes.make_sequence(0, None, mode="min_latency")) == [("whole", 0, 4)]
    assert manager.blocked_servers is None
    assert [list(spans) for spans in manager.state.sequence_info.spans_containing_block] == before
    unfiltered, _ = _routes(RouteRule())
    assert _chosen(unfiltered.make_sequence(0, None, mode="min_latency")) == [("near-a", 0, 2), ("near-b", 2, 4)]


def test_a_session_passes_everything_but_routing_through_to_the_shared_manager() -> None:
    routes, manager = _routes(RouteRule())
    assert len(routes) == 4 and routes.block_uids == manager.block_uids and routes.config is manager.config


def test_a_partial_route_after_a_failure_spans_only_what_petals_asked_for() -> None:
    routes, _ = _routes(RouteRule(sort="latency"))
    assert _chosen(routes.make_sequence(1, 3, mode="min_latency")) == [("near-a", 1, 2), ("near-b", 2, 3)]


def test_only_a_wallet_holding_half_the_blocks_names_the_other_half_before_and_while_routing() -> None:
    routes, _ = _routes(RouteRule(only=frozenset({WALLET})))
    assert routes.uncovered_blocks() == [2, 3]
    with pytest.raises(RouteUnsatisfiable, match=r"blocks 2\.\.3"):
        routes.make_sequence(0, None, mode="min_latency")


def test_without_fallbacks_a_later_route_may_only_use_the_first_routes_servers() -> None:
    rule = RouteRule(pin_first_route=True)
    routes, manager = _routes(rule)
    routes.make_sequence(0, None, mode="min_latency")
    for spans in manager.state.sequence_info.spans_containing_block:  # near-b gone, as Petals drops a failed server
        spans[:] = [span for span in spans if span.peer_id.to_bytes() != b"near-b"]
    manager.state.sequence_info.spans_by_priority[:] = [
        span for span in manager.state.sequence_info.spans_by_priority if span.peer_id.to_bytes() != b"near-b"
    ]
    with pytest.raises(RouteUnsatisfiable, match="allow_fallbacks is false"):
        routes.make_sequence(2, 4, mode="min_latency")


def test_a_probation_server_the_route_policy_held_back_serves_where_the_buyers_rule_leaves_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    everything = shared_manager().state.sequence_info.spans_by_priority  # the DHT, before any block list
    read: list[frozenset[str]] = []

    def from_the_dht(manager: Any, peers: frozenset[str]) -> dict[str, Any]:
        read.append(peers)
        return {span.peer_id.to_base58(): span for span in everything if span.peer_id.to_base58() in peers}

    monkeypatch.setattr(session_routes, "held_back_spans", from_the_dht)
    unfiltered, manager = _routes(RouteRule(), held_back=frozenset({"whole"}))
    (whole,) = [peer.to_base58() for peer in manager.blocked_servers]
    assert _chosen(unfiltered.make_sequence(0, None, mode="min_latency")) == [("near-a", 0, 2), ("near-b", 2, 4)]
    assert read == []  # the shared view sufficed: no DHT read
    ignoring, _ = _routes(RouteRule(ignore=frozenset({WALLET})), held_back=frozenset({"whole"}))
    assert _chosen(ignoring.make_sequence(0, None, mode="min_latency")) == [("whole", 0, 4)]
    assert read == [frozenset({whole})]
    ignore = RouteRule(ignore=frozenset({WALLET}))
    banned, _ = _routes(ignore, held_back=frozenset({"whole"}), banned=frozenset({whole}))
    assert banned.uncovered_blocks() == [0, 1]


def test_a_swarm_view_that_cannot_be_read_gives_up_after_the_request_timeout_instead_of_waiting_for_ever() -> None:
    routes, manager = _routes(RouteRule())
    manager.ready = threading.Event()  # the updater's read never finishes, as with the DHT unreachable
    manager.update = lambda wait: None
    manager.config = SimpleNamespace(request_timeout=0.01, max_retries=3)
    with pytest.raises(TimeoutError, match="not re-read within 0.01 s"):
        routes.make_sequence(0, None, mode="min_latency")


def test_throughput_takes_the_servers_measured_faster_even_when_a_slower_one_announces_more() -> None:
    manager = _Manager(**vars(shared_manager(announced={"whole": 1e6})))
    from hivemind.p2p import PeerID  # after the manager: mesh.compat first makes hivemind and petals importable

    from mesh.peer_speed import PeerSpeeds
    from protocol.peer_measurements import PeerMeasurement

    rule = RouteRule(sort="throughput")
    unmeasured = SessionRoutes(manager, rule)
    assert _chosen(unmeasured.make_sequence(0, None, mode="min_latency")) == [("whole", 0, 4)]  # fewer hops: a tie
    speeds = PeerSpeeds()
    speeds.record(str(PeerID(b"whole")), 4, 0.2)  # 0.05 s per block
    speeds.record(str(PeerID(b"near-a")), 2, 0.02)
    speeds.record(str(PeerID(b"near-b")), 2, 0.02)
    own = SessionRoutes(manager, rule, speeds=speeds)
    assert _chosen(own.make_sequence(0, None, mode="min_latency")) == [("near-a", 0, 2), ("near-b", 2, 4)]
    others = {
        str(PeerID(name)): PeerMeasurement(measured_at=1.0, decode_s_per_block=figure)
        for name, figure in ((b"whole", 0.05), (b"near-a", 0.01))
    }  # near-b never measured: it counts as the median of the others, 0.03 s per block
    from_redis = SessionRoutes(manager, rule, others)
    assert _chosen(from_redis.make_sequence(0, None, mode="min_latency")) == [("near-a", 0, 2), ("near-b", 2, 4)]

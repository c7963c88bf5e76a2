"""Routes chosen by a buyer's preferences: who may serve, and which allowed route each sort picks (#30 item 4)."""

import math

import pytest

from mesh.route_choice import (
    Candidate,
    Hop,
    RouteRule,
    RouteUnsatisfiable,
    block_ranges,
    choose_route,
    uncovered,
    unknown_decode_s,
)

WALLET = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"

# Four blocks. "whole" holds them all, far away and slow; "near-a" and "near-b" split them, close and fast;
# "big" holds blocks 2..3, measured the fastest per block of all but a long round trip away.
WHOLE = Candidate("whole", 0, 4, rtt_s=0.4, inference_rps=50.0, decode_s_per_block=0.1)
NEAR_A = Candidate("near-a", 0, 2, wallet=WALLET, rtt_s=0.01, inference_rps=500.0, decode_s_per_block=0.02)
NEAR_B = Candidate("near-b", 2, 4, rtt_s=0.01, inference_rps=500.0, decode_s_per_block=0.02)
BIG = Candidate("big", 2, 4, rtt_s=0.3, inference_rps=500.0, decode_s_per_block=0.001)
SWARM = [WHOLE, NEAR_A, NEAR_B, BIG]


def peers(route: list[Hop]) -> list[tuple[str, int, int]]:
    return [(hop.candidate.peer_id, hop.start, hop.end) for hop in route]


def test_latency_takes_the_nearest_servers_even_across_more_hops() -> None:
    assert peers(choose_route(SWARM, 0, 4, "latency")) == [("near-a", 0, 2), ("near-b", 2, 4)]
    assert choose_route(SWARM, 0, 4, None) == choose_route(SWARM, 0, 4, "latency")


def test_price_ranks_as_latency_since_every_route_of_a_model_costs_the_buyer_the_same() -> None:
    assert choose_route(SWARM, 0, 4, "price") == choose_route(SWARM, 0, 4, "latency")


def test_throughput_takes_the_servers_workers_measured_fastest_per_block_whatever_the_ping() -> None:
    assert peers(choose_route(SWARM, 0, 4, "throughput")) == [("near-a", 0, 2), ("big", 2, 4)]


def test_under_throughput_an_unmeasured_server_counts_as_the_median_of_the_measured_ones() -> None:
    assert unknown_decode_s(SWARM) == pytest.approx(0.02) and unknown_decode_s([WHOLE, BIG]) == pytest.approx(0.0505)
    unmeasured = Candidate("unmeasured", 2, 4, rtt_s=0.01)
    assert peers(choose_route([NEAR_A, unmeasured, WHOLE], 0, 4, "throughput"))[1] == ("unmeasured", 2, 4)
    assert peers(choose_route([NEAR_A, unmeasured, BIG], 0, 4, "throughput"))[1] == ("big", 2, 4)
    nothing_measured = [Candidate(c.peer_id, c.start, c.end, rtt_s=c.rtt_s) for c in SWARM]
    assert peers(choose_route(nothing_measured, 0, 4, "throughput")) == [("whole", 0, 4)]  # a tie: fewer hops win


def test_an_unmeasured_server_is_assumed_neither_nearer_than_a_measured_near_one_nor_unreachable() -> None:
    unmeasured = Candidate("unmeasured", 0, 4, inference_rps=500.0)
    assert peers(choose_route([unmeasured, NEAR_A, NEAR_B], 0, 4, "latency"))[0][0] == "near-a"
    unreachable = Candidate("down", 0, 4, rtt_s=math.inf)
    assert peers(choose_route([unreachable, unmeasured], 0, 4, "latency")) == [("unmeasured", 0, 4)]
    assert peers(choose_route([unreachable], 0, 4, "latency")) == [("down", 0, 4)]  # a last resort, as in Petals


def test_a_partial_route_from_a_failed_block_starts_there() -> None:
    assert peers(choose_route(SWARM, 3, 4, "latency")) == [("near-b", 3, 4)]
    assert choose_route(SWARM, 2, 2, "latency") == []


def test_ignore_excludes_a_peer_by_id_or_by_the_wallet_it_announces() -> None:
    by_id = RouteRule(ignore=frozenset({"near-b"}))
    allowed = [c for c in SWARM if by_id.allows(c)]
    assert peers(choose_route(allowed, 0, 4, "latency")) == [("near-a", 0, 2), ("big", 2, 4)]
    by_wallet = RouteRule(ignore=frozenset({WALLET}))
    assert peers(choose_route([c for c in SWARM if by_wallet.allows(c)], 0, 4, "latency")) == [("whole", 0, 4)]


def test_only_leaves_uncovered_blocks_named_and_min_reputation_counts_the_unscored_as_zero() -> None:
    only = RouteRule(only=frozenset({WALLET}))
    allowed = [c for c in SWARM if only.allows(c)]
    assert uncovered(allowed, 0, 4) == [2, 3]
    with pytest.raises(RouteUnsatisfiable, match=r"blocks 2\.\.3"):
        choose_route(allowed, 0, 4, "latency")
    reputable = RouteRule(min_reputation=0.5, reputations={"whole": 0.9, "near-a": 0.49})
    assert [c.peer_id for c in SWARM if reputable.allows(c)] == ["whole"]


def test_without_fallbacks_the_first_route_pins_its_servers_and_a_lost_one_leaves_its_blocks_unsatisfiable() -> None:
    rule = RouteRule(pin_first_route=True)
    first = choose_route([c for c in SWARM if rule.allows(c)], 0, 4, "latency")
    rule.chose(first)
    rule.chose(choose_route([WHOLE], 0, 4))  # later routes never widen the pin
    assert rule.pinned == frozenset({"near-a", "near-b"})
    without_near_b = [c for c in SWARM if c is not NEAR_B and rule.allows(c)]
    assert uncovered(without_near_b, 0, 4) == [2, 3]
    with_fallbacks = RouteRule()
    with_fallbacks.chose(first)
    assert with_fallbacks.pinned is None and with_fallbacks.allows(BIG)


def test_block_ranges_read_as_a_person_writes_them() -> None:
    assert block_ranges([0, 1, 2, 5, 7, 8]) == "0..2, 5, 7..8"
    assert block_ranges([11, 12]) == "11..12"


def test_a_server_short_of_attention_cache_for_the_session_is_avoided_where_another_route_exists() -> None:
    full = Candidate("near-a", 0, 2, rtt_s=0.01, inference_rps=500.0, cache_tokens_left=100)
    swarm = [full, NEAR_B, WHOLE]
    assert peers(choose_route(swarm, 0, 4, "latency", cache_tokens_needed=20)) == [("near-a", 0, 2), ("near-b", 2, 4)]
    assert peers(choose_route(swarm, 0, 4, "latency", cache_tokens_needed=64)) == [("whole", 0, 4)]
    assert peers(choose_route([full, NEAR_B], 0, 4, "latency", cache_tokens_needed=64))[0][0] == "near-a"

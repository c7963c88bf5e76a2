"""The soak's schedule is a function of its seed alone (a failing run is replayed by its seed), and a run long
enough meets every kind of fault."""

from devstack.harness.soak.schedule import (
    ALL_KINDS,
    LINKS,
    NETWORK_KINDS,
    latency_ms_of,
    link_of,
    make_schedule,
    slow_for_s,
)
from devstack.harness.tcp_proxy import MAX_FAULT_S


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert make_schedule(7, 1800) == make_schedule(7, 1800)
    assert make_schedule(7, 1800) != make_schedule(8, 1800)


def test_every_kind_comes_within_the_first_faults_of_any_short_run_and_all_fall_inside_it() -> None:
    for seed in range(200):
        faults = make_schedule(seed, 180, mean_gap_s=12)
        assert {f.kind for f in faults[: len(ALL_KINDS)]} == set(ALL_KINDS), seed
        assert all(0 < f.at_s < 180 for f in faults)
        assert [f.at_s for f in faults] == sorted(f.at_s for f in faults)


def test_a_thirty_minute_run_draws_over_a_hundred_faults_at_the_default_pace() -> None:
    assert len(make_schedule(11, 1800, mean_gap_s=12)) > 100


def test_network_faults_are_drawn_from_the_seed_bounded_and_printed_with_their_link() -> None:
    drawn = [f for seed in range(10) for f in make_schedule(seed, 1800) if f.kind in NETWORK_KINDS]
    assert {f.kind for f in drawn} == set(NETWORK_KINDS) and {link_of(f) for f in drawn} == set(LINKS)
    for fault in drawn:
        assert 0 <= fault.down_s <= 3 and 1 <= slow_for_s(fault) <= 4 <= MAX_FAULT_S
        assert 50 <= latency_ms_of(fault) <= 200
        assert link_of(fault) in fault.describe()
    slow = next(f for f in drawn if f.kind == "slow_link")
    assert f"+{latency_ms_of(slow)}ms per chunk for {slow_for_s(slow):.2f}s" in slow.describe()

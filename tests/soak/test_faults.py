"""A gateway fault kills either replica, as its drawn target says, and a network fault breaks the link its target
names on that link's proxy, for the time and latency the schedule printed."""

from types import SimpleNamespace
from typing import Any, cast

from devstack.harness.soak.faults import _kill_and_restart, target_name
from devstack.harness.soak.schedule import Fault
from devstack.harness.system import SystemUnderTest


class _RecordingProxy:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def partition(self, seconds: float) -> None:
        self.calls.append(("partition", seconds))

    def slow(self, seconds: float, latency_s: float) -> None:
        self.calls.append(("slow", seconds, latency_s))


def _system(proxies: dict[str, _RecordingProxy]) -> SystemUnderTest:
    system = SimpleNamespace(gateway_names=("web", "web.2"))
    return cast(SystemUnderTest, SimpleNamespace(system=system, proxies=proxies))


def test_a_gateway_fault_kills_the_replica_its_target_draws() -> None:
    sut = _system({})
    assert target_name(sut, Fault(1.0, "gateway", 954, 1.0)) == "web"
    assert target_name(sut, Fault(1.0, "gateway", 955, 1.0)) == "web.2"


def test_a_network_fault_breaks_its_link_on_that_links_proxy_as_scheduled() -> None:
    redis, postgres = _RecordingProxy(), _RecordingProxy()
    sut = _system({"redis": redis, "postgres": postgres})
    partition, slow = Fault(1.0, "partition", 960, 1.11), Fault(2.0, "slow_link", 747, 0.21)
    assert (target_name(sut, partition), target_name(sut, slow)) == ("link:redis", "link:postgres")
    _kill_and_restart(sut, partition, "link:redis")
    _kill_and_restart(sut, slow, "link:postgres")
    assert redis.calls == [("partition", 1.11)]
    assert postgres.calls == [("slow", 1.21, 0.121)]  # +121 ms per chunk for 1.21 s, as the schedule printed

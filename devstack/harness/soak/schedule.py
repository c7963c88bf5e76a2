"""The fault schedule: derived from the seed alone, printed before the run, so a failing run is replayed with
`--seed`. Which process of a kind dies is an index drawn here too, resolved against the running system only when
the fault fires (a worker restarted meanwhile has a new pid, not a new name)."""

import random
from dataclasses import dataclass

PROCESS_KINDS = ("gateway", "worker", "swarm_server", "accounting", "verifier", "portal")
"""Kinds SIGKILLed (with everything they started) and restarted."""
SERVICE_KINDS = ("redis", "postgres")
"""Kinds stopped and started again (Redis with its append-only file, so it comes back with its data)."""
NETWORK_KINDS = ("partition", "slow_link")
"""Kinds that break a link, not a process: the loopback proxy between every process and Redis or PostgreSQL
(which one: `link_of`) refuses and cuts connections (`partition`, for `down_s`) or holds each chunk
`latency_ms_of` (`slow_link`, for `slow_for_s`)."""
ALL_KINDS = PROCESS_KINDS + SERVICE_KINDS + NETWORK_KINDS
LINKS = ("redis", "postgres")
CHAIN_KINDS = ("payer", "deposit_watcher", "reconciler", "chain_node")
"""With `--chain`: the payer, the deposit watcher and the reconciliation loop SIGKILLed and restarted, and the
chain's ganache stopped and started again on its database."""


@dataclass(frozen=True)
class Fault:
    at_s: float
    """Seconds after the load started."""
    kind: str
    target: int
    """Which one of the kind (modulo how many there are), e.g. worker.(target % workers + 1)."""
    down_s: float
    """How long it stays down before it is restarted."""

    def describe(self) -> str:
        if self.kind == "partition":
            return f"t={self.at_s:7.2f}s {self.kind:<12} #{self.target} {link_of(self)} cut {self.down_s:.2f}s"
        if self.kind == "slow_link":
            return (
                f"t={self.at_s:7.2f}s {self.kind:<12} #{self.target} {link_of(self)} "
                f"+{latency_ms_of(self)}ms per chunk for {slow_for_s(self):.2f}s"
            )
        return f"t={self.at_s:7.2f}s {self.kind:<12} #{self.target} down {self.down_s:.2f}s"


def link_of(fault: Fault) -> str:
    """The link a network fault breaks: the one to Redis or the one to PostgreSQL."""
    return LINKS[fault.target % len(LINKS)]


def latency_ms_of(fault: Fault) -> int:
    """A slow link's added latency per chunk, 50 to 200 ms, from the fault's drawn target (no extra draw, so
    adding the network kinds changed no other draw of a schedule)."""
    return 50 + (fault.target // len(LINKS)) % 151


def slow_for_s(fault: Fault) -> float:
    """How long a slow link stays slow: a second more than its drawn time down (1 to 4 s)."""
    return round(1.0 + fault.down_s, 2)


def make_schedule(
    seed: int, duration_s: float, *, mean_gap_s: float = 12.0, kinds: tuple[str, ...] = ALL_KINDS
) -> list[Fault]:
    """Faults at random gaps (uniform between a quarter and 1.75 times `mean_gap_s`, so faults overlap yet a short
    run still gets about duration / mean gap of them) over the first `duration_s`, every kind drawn at least once
    when the run is long enough: the first len(kinds) faults take the kinds in a shuffled order, then at random.
    The same seed gives the same schedule, always."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    faults: list[Fault] = []
    at = rng.uniform(2.0, mean_gap_s)
    while at < duration_s:
        kind = order[len(faults)] if len(faults) < len(order) else rng.choice(kinds)
        faults.append(Fault(round(at, 2), kind, rng.randrange(1000), round(rng.uniform(0.0, 3.0), 2)))
        at += rng.uniform(0.25, 1.75) * mean_gap_s
    return faults

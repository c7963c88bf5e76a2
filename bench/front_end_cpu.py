"""CPU seconds spent by a front end: a set of processes and everything they started, less the swarm's servers.

The benchmarks compare CPU per token of two paths to the same swarm. The swarm's servers do the same work for
both, so they are left out (they run in process groups of their own, `mesh.local_swarm`); what is counted is
the Python processes, their `p2pd` daemons and DHT processes, and Redis where the path uses it. A process that
exits while measured takes its CPU with it, so each measurement should span only processes that outlive it.
"""

import os
from collections.abc import Iterable

import psutil  # type: ignore[import-untyped]  # pinned (requirements/constraints.txt), with the mesh extra


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _tree(roots: Iterable[int], skip_groups: frozenset[int]) -> dict[int, psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in members:
            try:
                if os.getpgid(process.pid) in skip_groups and process.pid != pid:
                    continue
            except ProcessLookupError:
                continue
            found[process.pid] = process
    return found


def cpu_by_process(roots: Iterable[int], *, skip_groups: Iterable[int] = ()) -> dict[int, float]:
    """User + system CPU seconds so far of each of `roots` and their descendants, except descendants in
    `skip_groups` (the swarm's servers)."""
    spent: dict[int, float] = {}
    for pid, process in _tree(roots, frozenset(skip_groups)).items():
        try:
            spent[pid] = _cpu_s(process)
        except psutil.NoSuchProcess:
            continue
    return spent


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `cpu_by_process` readings by the processes alive at the second (a process
    started in between counts from zero; one that ended in between is lost, never counted negative)."""
    return sum(cpu_by_kind(before, after).values())


def cpu_by_kind(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """`cpu_between`, by kind of process: this one ("python"), "redis", and the rest ("p2pd/DHT": the Petals
    clients' daemons and DHT processes)."""
    spent: dict[str, float] = {}
    for pid, seconds in after.items():
        kind = "python" if pid == os.getpid() else _kind(pid)
        spent[kind] = spent.get(kind, 0.0) + max(0.0, seconds - before.get(pid, 0.0))
    return spent


def _kind(pid: int) -> str:
    try:
        return "redis" if psutil.Process(pid).name().startswith("redis-server") else "p2pd/DHT"
    except psutil.NoSuchProcess:
        return "p2pd/DHT"

"""Injecting the schedule's faults into a running `SystemUnderTest` and putting back what each broke.

A process kind is SIGKILLed with its whole process group (what it started dies with it, as in a crash or an
OOM kill) and restarted through the system's own `restart_process`, which waits until it serves. A swarm server
is SIGKILLed alone: the swarm's supervision restarts it with its peer id, as `make run` would. Redis and
PostgreSQL (and, with the chain, its ganache, on its database) are stopped and started again. A network fault
breaks the link to Redis or PostgreSQL on the system's loopback proxy (`tcp_proxy`): a partition, or a slow
link, each put back after its time. A gateway fault kills one replica, the other serving on. Faults overlap:
each runs in its own task, and one whose target is still down from an earlier fault is skipped (and counted). A
process that exits without being killed is a finding, not noise: the watchdog records it and restarts it so the
run goes on.
"""

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field

from devstack.harness.soak.schedule import NETWORK_KINDS, Fault, latency_ms_of, link_of, slow_for_s
from devstack.harness.system import SystemUnderTest

RECOVERY_TIMEOUT_S = 180.0
PROCESS_NAMES = {
    "accounting": "accounting",
    "verifier": "verifier",
    "portal": "portal",
    "payer": "payouts",
    "deposit_watcher": "deposits",
    "reconciler": "ledger",
}


@dataclass
class Injected:
    fault: Fault
    target: str
    outcome: str = "pending"
    """"restored", "skipped: ..." or "failed: ..." (a restart that did not serve within the timeout)."""
    recovered_s: float | None = None


@dataclass
class FaultLog:
    injected: list[Injected] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    """Every pid the system ran at any time: none may be left once it stops."""
    down: set[str] = field(default_factory=set)

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.injected:
            if item.outcome == "restored":
                counts[item.fault.kind] = counts.get(item.fault.kind, 0) + 1
        return counts


def record_pids(sut: SystemUnderTest, log: FaultLog) -> None:
    """Remember every process the system runs now (supervised children, swarm servers and the DHT, the network
    proxies, Redis)."""
    log.pids.update(c.process.pid for c in sut.system.supervisor.children)
    swarm = sut.system.swarm
    if swarm is not None:
        for server in swarm.servers:
            log.pids.add(server.pid)
            log.pids.update(server.group_members())
    if sut.chain_node is not None and sut.chain_node.process is not None:
        log.pids.add(sut.chain_node.process.pid)
    log.pids.update(pid for proxy in sut.proxies.values() if (pid := proxy.pid) is not None)
    redis_process = getattr(sut.redis_server, "_process", None)
    if redis_process is not None:
        log.pids.add(redis_process.pid)


def target_name(sut: SystemUnderTest, fault: Fault) -> str:
    if fault.kind == "gateway":
        gateways = sut.system.gateway_names
        return gateways[fault.target % len(gateways)]
    if fault.kind in NETWORK_KINDS:
        return f"link:{link_of(fault)}"
    if fault.kind in PROCESS_NAMES:
        return PROCESS_NAMES[fault.kind]
    if fault.kind == "worker":
        workers = sorted(c.name for c in sut.system.supervisor.children if c.name.startswith("worker."))
        return workers[fault.target % len(workers)]
    if fault.kind == "swarm_server":
        assert sut.system.swarm is not None
        servers = sut.system.swarm.servers
        return f"server:{fault.target % len(servers)}"
    return fault.kind


def _kill_and_restart(sut: SystemUnderTest, fault: Fault, name: str) -> None:
    """Blocking: the fault itself, the time down, and the restart until it serves."""
    if fault.kind in NETWORK_KINDS:
        proxy = sut.proxies.get(link_of(fault))
        assert proxy is not None, "a network fault needs the system started with network_proxies"
        if fault.kind == "partition":
            proxy.partition(fault.down_s)
        else:
            proxy.slow(slow_for_s(fault), latency_ms_of(fault) / 1000)
    elif fault.kind == "redis":
        sut.redis_server.stop()
        time.sleep(fault.down_s)
        sut.redis_server.start()
    elif fault.kind == "postgres":
        sut.postgres.stop()
        time.sleep(fault.down_s)
        sut.postgres.restart()
    elif fault.kind == "chain_node":
        assert sut.chain_node is not None, "a chain_node fault needs the system started with its chain"
        sut.chain_node.stop()
        time.sleep(fault.down_s)
        sut.chain_node.start()
    elif fault.kind == "swarm_server":
        swarm = sut.system.swarm
        assert swarm is not None
        server = swarm.servers[int(name.partition(":")[2])]
        restarts = server.restarts
        os.kill(server.pid, signal.SIGKILL)  # its main process: the swarm's supervision restarts it
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while server.restarts == restarts and time.monotonic() < deadline:
            time.sleep(0.1)
        swarm.ensure_serving(RECOVERY_TIMEOUT_S)
    else:
        child = sut.system.process(name)
        os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait(10)
        time.sleep(fault.down_s)
        sut.restart_process(name, RECOVERY_TIMEOUT_S)


async def inject(sut: SystemUnderTest, fault: Fault, log: FaultLog) -> None:
    name = target_name(sut, fault)
    item = Injected(fault, name)
    log.injected.append(item)
    if name in log.down:
        item.outcome = "skipped: still down from an earlier fault"
        return
    log.down.add(name)
    started = time.monotonic()
    try:
        await asyncio.to_thread(_kill_and_restart, sut, fault, name)
        item.outcome = "restored"
    except Exception as exc:  # the run goes on; the report names the restart that failed
        item.outcome = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        item.recovered_s = round(time.monotonic() - started, 2)
        log.down.discard(name)
        record_pids(sut, log)
    print(f"soak: fault {fault.describe()} -> {name}: {item.outcome} in {item.recovered_s:.1f}s", flush=True)


async def run_schedule(sut: SystemUnderTest, faults: list[Fault], log: FaultLog, load_started: float) -> None:
    """Every fault at its time after `load_started`, overlapping; returns once each has been put back."""
    tasks = []
    for fault in faults:
        await asyncio.sleep(max(0.0, load_started + fault.at_s - time.monotonic()))
        tasks.append(asyncio.create_task(inject(sut, fault, log)))
    await asyncio.gather(*tasks)


async def watchdog(sut: SystemUnderTest, log: FaultLog, stop: asyncio.Event) -> None:
    """Restart any supervised process that exited while nobody had killed it, and record it as a finding."""
    while not stop.is_set():
        for child in list(sut.system.supervisor.children):
            if child.name in log.down or child.process.poll() is None:
                continue
            log.unexpected_exits.append(f"{child.name} (pid {child.process.pid}) exited {child.process.returncode}")
            print(f"soak: FINDING {log.unexpected_exits[-1]} unkilled; restarting it", flush=True)
            log.down.add(child.name)
            try:
                await asyncio.to_thread(sut.restart_process, child.name, RECOVERY_TIMEOUT_S)
            except Exception as exc:
                log.unexpected_exits.append(f"{child.name} did not come back: {exc}")
            finally:
                log.down.discard(child.name)
                record_pids(sut, log)
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass

"""A real Petals swarm on loopback: one DHT bootstrap and N servers, each a process in its own process group.

Development (`far-mesh swarm`, `far-mesh dev`) and the tests run the swarm through this module. Servers run
the node launcher's command line (`mesh.node.server_command`), so they are real nodes that happen to listen on
127.0.0.1; the swarm's fork server (`mesh.swarm_forks`) forks each with that command line's arguments, from a
process that has already imported torch and petals, so a server or a restart costs no imports. Several models may
share one DHT, and each server is given one model and one block span, so spans can be split (A 0:2 / 2:4) and
replicated (A 2:4 twice).

Peer ids are known without parsing logs: each process is given an identity file path that does not exist
yet, generates its key there as it starts, and the peer id is derived from that file.

Every process is stopped by process group, SIGTERM then SIGKILL: a Petals server's handler processes and its
`p2pd` daemons are in its group, and killing only the main process would leave them running.

A running swarm supervises its processes: one that exits without being asked to (a crash, the OOM killer) has
what is left of its group killed and is started again with the same identity file, port and blocks, after a
backoff and a warning that names its exit status and shows the tail of its log; `RESTART_LIMIT` crashes within
`RESTART_WINDOW_S` and the swarm gives up on it, logging an error per block left unserved, and
`ensure_serving()` says so. The fork server is started from one long-lived thread of the swarm and dies with it,
and every process it forked dies with the fork server (`mesh.process_lifetime`): a swarm whose own process is
killed leaves nothing behind.
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from mesh.announce import public_name_for
from mesh.dht_node import dht_host_port
from mesh.node import (
    InvalidBlocks,
    ModelPathMissing,
    NodeConfig,
    NodeRefused,
    PortTaken,
    looks_like_path,
    server_command,
)
from mesh.petals_cli import AWAIT_PORT_VARIABLE, LOOPBACK_SERVER_VARIABLE, command_line
from mesh.ports import free_port_to_keep, port_is_taken
from mesh.process_groups import signal_group
from mesh.process_lifetime import children_die_with_this_thread
from mesh.restarts import RestartPolicy
from mesh.swarm_forks import ForkedProcess, ForkServer
from protocol.catalog import ModelSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")

LOOPBACK = "127.0.0.1"
SERVER_THROUGHPUT = 100.0
"""Announced by every local server instead of a measured value: measuring takes minutes and needs internet."""
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30
WATCH_INTERVAL_S = 0.5
"""How often a running swarm looks for processes that exited."""
SERVED_POLL_S = 0.2
"""How often a start asks the DHT for its servers (one small query to the local bootstrap): ready sooner."""
RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
RESTART_LIMIT = 5
RESTART_WINDOW_S = 300.0
"""A process that crashes RESTART_LIMIT times within RESTART_WINDOW_S is given up on."""
PORT_MOVES = 3
"""How often a server starting for the first time may find its port taken and start again on another."""

SERVER_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    # Several servers share two cores; one thread each keeps them from fighting over both.
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    # The tensor sharing strategy mesh.compat selects, set before any process imports hivemind.
    "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor",
}


class SwarmError(RuntimeError):
    """The local swarm did not come up; the message includes the logs of the processes that failed."""


@dataclass(frozen=True)
class ServerPlan:
    """One server of a local swarm: which model, which half-open block span, whom to pay."""

    model: ModelSpec
    start_block: int
    end_block: int
    wallet: str | None = None
    label: str | None = None
    torch_dtype: str = "float32"
    """What the server computes and replies in (a GPU provider's is usually bfloat16 or float16)."""


def model_num_blocks(model: ModelSpec) -> int | None:
    """The number of transformer blocks of a locally stored model (None when it is a hub id)."""
    if not looks_like_path(model.weights_source):
        return None
    config_path = Path(model.weights_source).expanduser() / "config.json"
    if not config_path.is_file():
        raise ModelPathMissing(f"model path {model.weights_source} has no config.json; generate it first")
    config: dict[str, Any] = json.loads(config_path.read_text())
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    return int(layers) if layers is not None else None


def peer_id_from_identity(path: Path) -> str:
    """The base58 peer id of the libp2p private key hivemind wrote to `path`."""
    from hivemind.p2p import PeerID

    return str(PeerID.from_identity(path.read_bytes()).to_base58())


class SwarmProcess:
    """A process forked by the swarm's fork server, in its own process group, its output in a log file; restartable
    with the same command."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log_path: Path,
        identity_path: Path,
        forks: ForkServer,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.identity_path = identity_path
        self._command = command
        self._forks = forks
        self._env = {**forks.env, **(env or {})}
        self._peer_id: str | None = None
        self.restarts = 0
        self.stopped_on_purpose = False
        """Set by kill() and stop(): the swarm does not restart a process it was asked to end."""
        self._restarted_at_byte = 0
        log_path.write_bytes(b"")
        self._process = self._spawn()

    def _spawn(self) -> ForkedProcess:
        return self._forks.spawn(self._command, self._env, self.log_path)

    def restart(self) -> None:
        """Kill what is left of the group, then start the same command again: same identity, blocks and port (a server
        whose port another process took moves, `LocalServer._before_restart`)."""
        signal_group(self.pid, signal.SIGKILL)
        self._reap(timeout=STOP_GRACE_S)
        self._before_restart()
        self.restarts += 1
        self._restarted_at_byte = self.log_path.stat().st_size
        with self.log_path.open("ab") as log:
            log.write(f"--- restarted by the local swarm (restart {self.restarts}) ---\n".encode())
        self._process = self._spawn()

    def _before_restart(self) -> None:
        """What must change before the same command runs again: nothing here (`LocalServer` may move its port)."""

    @property
    def pid(self) -> int:
        """Also the process group id: the process leads its own group."""
        return self._process.pid

    @property
    def peer_id(self) -> str:
        """The process's libp2p peer id; SwarmError until the process has written its identity file."""
        if self._peer_id is None:
            try:
                self._peer_id = peer_id_from_identity(self.identity_path)
            except Exception as exc:  # missing, or still being written: protobuf and OS errors alike
                raise SwarmError(f"{self.name} has not written its identity yet ({exc})\n{self.log_tail()}") from exc
        return self._peer_id

    @property
    def exit_status(self) -> int | None:
        """None while the process runs."""
        return self._process.poll()

    def log_since_restart(self) -> str:
        """What the process logged since it was last (re)started."""
        with self.log_path.open("rb") as log:
            log.seek(self._restarted_at_byte)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    def group_members(self) -> list[int]:
        """Live (non-zombie) processes still in this process's group."""
        return group_members(self.pid)

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, as a test of failover wants it (never restarted)."""
        self.stopped_on_purpose = True
        signal_group(self.pid, signal.SIGKILL)
        self._reap(timeout=STOP_GRACE_S)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the group, then SIGKILL whatever is left of it after `grace_s`."""
        self.terminate()
        self.wait_stopped(time.monotonic() + grace_s)

    def terminate(self) -> None:
        """SIGTERM the group, without waiting (a swarm signals all its processes first, then waits once)."""
        self.stopped_on_purpose = True
        if self.group_members():
            signal_group(self.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until the group is gone, then reap; SIGKILL whatever is left of it at `deadline`."""
        while self.group_members() and time.monotonic() < deadline:
            self._reap(timeout=0.1)
        if self.group_members():
            logger.warning("%s ignored SIGTERM; sending SIGKILL", self.name)
            signal_group(self.pid, signal.SIGKILL)
        self._reap(timeout=STOP_GRACE_S)

    def _reap(self, timeout: float) -> None:
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return
        deadline = time.monotonic() + timeout
        while self.group_members() and time.monotonic() < deadline:
            time.sleep(0.05)


class LocalServer(SwarmProcess):
    """A Petals server of the local swarm, on a port of its own that it keeps across restarts: peers and clients
    still dial the address the DHT gave them for its peer id. Unless another process took the port while the
    server was down (or before it first listened): a port is free to anyone until it is bound, and a test run, a
    soak or a `make run` beside this one restarts its own processes on ports it kept. The server then moves to a
    new port; its peer id stays, and its next announcement gives the DHT the new address."""

    def loaded_since_restart(self) -> bool:
        """Whether this run of the server has loaded its last block. Until then the DHT may still show the dead
        run's record under the same peer id, saying ONLINE (this run announced JOINING once it started loading)."""
        last = self.plan.end_block - 1
        return re.search(rf"Loaded .* block {last}\b", self.log_since_restart()) is not None

    def __init__(
        self, plan: ServerPlan, config: NodeConfig, name: str, work_dir: Path, dht_address: str, forks: ForkServer
    ) -> None:
        assert config.identity_path is not None
        self.plan = plan
        self.config = config
        super().__init__(
            name,
            server_command(config),
            work_dir / f"{name}.log",
            config.identity_path,
            forks,
            # Forked while the DHT starts, joins once it listens, without probing the loopback swarm first.
            env={AWAIT_PORT_VARIABLE: dht_address, LOOPBACK_SERVER_VARIABLE: "1"},
        )

    def lost_its_port(self) -> bool:
        """Whether the server is down and something else listens on its port."""
        return self.exit_status is not None and self.config.port is not None and port_is_taken(self.config.port)

    def _before_restart(self) -> None:
        if not self.lost_its_port():
            return
        taken = self.config.port
        self.config = replace(self.config, port=free_port_to_keep())
        self._command = server_command(self.config)
        logger.warning("swarm server moves port name=%s taken=%s port=%s", self.name, taken, self.config.port)


def group_members(pgid: int) -> list[int]:
    """Pids of live processes in process group `pgid`, read from /proc (zombies awaiting a reaper excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class LocalSwarm:
    """A DHT bootstrap on `127.0.0.1:dht_port` (a free port when None) and one server per plan; with
    `initial_peers`, no bootstrap of its own: the servers join that DHT (`far-mesh dht`), waiting until it listens.

    Use as a context manager, or call `start()` and `stop()`. `start()` returns once every server announces
    its blocks online in the DHT; from then on the swarm restarts any process that exits unasked (see the
    module's docstring), and `ensure_serving()` waits for such a restart or raises when the swarm gave up.
    `stop()` stops every process it started, including any added later with `start_server`.
    """

    def __init__(
        self,
        servers: Sequence[ServerPlan] = (),
        *,
        work_dir: Path | None = None,
        dht_port: int | None = None,
        initial_peers: Sequence[str] = (),
        start_timeout_s: float = 120.0,
    ) -> None:
        if initial_peers and dht_port is not None:
            raise ValueError("a swarm joins initial_peers or runs its own DHT on dht_port, not both")
        self.plans = list(servers)
        self.external_peers = tuple(initial_peers)
        """Multiaddrs of a DHT this swarm joins instead of starting its own."""
        self._owned_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="far-mesh-swarm-")) if work_dir is None else work_dir
        self.dht_port = dht_port
        self.start_timeout_s = start_timeout_s
        self.dht_process: SwarmProcess | None = None
        self.servers: list[LocalServer] = []
        self._dht_client: Any = None
        self._dht_thread: ThreadPoolExecutor | None = None
        # Every process is forked by one fork server, started on this one thread: its parent-death signal fires
        # when the thread ends (in stop()), and the processes it forked die with it.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-swarm-spawner")
        self._forks = ForkServer(self.work_dir / "forks.log", {**os.environ, **SERVER_ENVIRONMENT})
        self._supervision = _Supervision(self)

    # lifecycle

    def start(self) -> Self:
        for plan in self.plans:
            check_plan(plan)
        if self.external_peers:
            dht_host_port(self.external_peers[0])  # ValueError on an address servers could not wait for
        elif self.dht_port is not None and port_is_taken(self.dht_port):
            raise PortTaken(f"DHT port {self.dht_port} is already in use; choose another or stop what holds it")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            if not self.external_peers:
                self._start_dht()
            for plan in self.plans:
                self._launch(plan)
            self.wait_until_served(self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._supervision.start()
        logger.info(
            "local swarm ready servers=%d seconds=%.1f initial_peers=%s",
            len(self.servers),
            time.monotonic() - started,
            " ".join(self.initial_peers),
        )
        return self

    def stop(self) -> None:
        self._supervision.stop()
        self._stop_dht_client()
        processes = self._processes()
        for process in processes:  # all at once: a Procfile runner allows the whole swarm seconds to stop
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            process.wait_stopped(deadline)
        self._forks.close()
        self._spawner.shutdown()
        if self._owned_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        logger.info("local swarm stopped processes=%d", len(self.servers) + (self.dht_process is not None))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # servers

    @property
    def models(self) -> list[ModelSpec]:
        """The distinct models this swarm serves, in plan order."""
        return list(dict.fromkeys(plan.model for plan in self.plans))

    @property
    def initial_peers(self) -> list[str]:
        """Multiaddrs of the DHT bootstrap, what clients and other nodes pass as `initial_peers`."""
        if self.external_peers:
            return list(self.external_peers)
        if self.dht_process is None or self.dht_port is None:
            raise SwarmError("the swarm has not been started")
        return [f"/ip4/{LOOPBACK}/tcp/{self.dht_port}/p2p/{self.dht_process.peer_id}"]

    def start_server(self, plan: ServerPlan, *, timeout_s: float | None = None) -> LocalServer:
        """Add a server to the running swarm and wait until it serves its blocks (supervised from then on)."""
        check_plan(plan)
        self.plans.append(plan)
        server = self._launch(plan)
        self.wait_until_served(self.start_timeout_s if timeout_s is None else timeout_s, servers=[server])
        self._supervision.watch(server)
        return server

    def ensure_serving(self, timeout_s: float) -> None:
        """Return once every process runs and every restarted server serves again; SwarmError (with the logs)
        when the swarm gave up on a process, or a restart is not served within `timeout_s`."""
        self._supervision.raise_if_given_up()
        restarting = self._supervision.restarting()
        if not restarting:
            return
        logger.info("waiting for restarted swarm processes: %s", [p.name for p in restarting])
        deadline = time.monotonic() + timeout_s
        while restarting := self._supervision.restarting():
            self._supervision.raise_if_given_up()
            if time.monotonic() > deadline:
                tails = "\n".join(p.log_tail() for p in restarting)
                raise SwarmError(f"not served again after {timeout_s:.0f} s: {[p.name for p in restarting]}\n{tails}")
            time.sleep(WATCH_INTERVAL_S)

    def wait_until_served(self, timeout_s: float, servers: Sequence[LocalServer] | None = None) -> None:
        """Block until each server (all by default) is announced online in the DHT for its whole span."""
        pending = list(self.servers if servers is None else servers)
        deadline = time.monotonic() + timeout_s
        while pending:
            for process in [*pending, *([self.dht_process] if self.dht_process else [])]:
                if isinstance(process, LocalServer) and process.lost_its_port() and process.restarts < PORT_MOVES:
                    self.on_spawner(process.restart)
                elif process.exit_status is not None:
                    raise SwarmError(f"{process.name} exited with status {process.exit_status}\n{process.log_tail()}")
            # The DHT client can only be created (and queried) once the bootstrap listens.
            online = self._online_peer_spans(pending) if self._dht_listens() else set()
            pending = [s for s in pending if not _serves(online, s)]
            if not pending:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(s.log_tail() for s in pending)
                raise SwarmError(f"not served after {timeout_s:.0f} s: {[s.name for s in pending]}\n{tails}")
            time.sleep(SERVED_POLL_S)

    # internals

    def _start_dht(self) -> None:
        """Launch the DHT bootstrap with an identity made here, so its peer id is known before it listens."""
        from hivemind.p2p import P2P

        self.dht_port = self.dht_port or free_port_to_keep()
        identity = self.work_dir / "dht.identity"
        if not identity.exists():
            P2P.generate_identity(str(identity))
        command = command_line(
            "run_dht", ["--host_maddrs", f"/ip4/{LOOPBACK}/tcp/{self.dht_port}", "--identity_path", str(identity)]
        )
        self.dht_process = self.on_spawner(
            lambda: SwarmProcess(
                "dht", command, self.work_dir / "dht.log", identity, self._forks, env={LOOPBACK_SERVER_VARIABLE: "1"}
            )
        )

    def _launch(self, plan: ServerPlan) -> LocalServer:
        name = f"server{len(self.servers)}-{plan.model.model_id.replace('/', '_')}-{plan.start_block}-{plan.end_block}"
        config = NodeConfig(
            model_source=plan.model.weights_source,
            initial_peers=tuple(self.initial_peers),
            dht_prefix=plan.model.dht_prefix,
            wallet=plan.wallet,
            label=plan.label,
            blocks=(plan.start_block, plan.end_block),
            host=LOOPBACK,
            port=free_port_to_keep(),
            throughput=SERVER_THROUGHPUT,
            device="cpu",
            torch_dtype=plan.torch_dtype,
            identity_path=self.work_dir / f"{name}.identity",
            loopback_only=True,
        )
        host, port = self._dht_address()
        server = self.on_spawner(lambda: LocalServer(plan, config, name, self.work_dir, f"{host}:{port}", self._forks))
        self.servers.append(server)
        logger.info("swarm server started name=%s pid=%d", name, server.pid)
        return server

    def on_spawner(self, call: Callable[[], T]) -> T:
        """Run `call` (which starts a process) on the swarm's spawner thread, which lives until `stop()`."""
        return self._spawner.submit(call).result()

    def _processes(self) -> list[SwarmProcess]:
        return [*self.servers, *([self.dht_process] if self.dht_process else [])]

    def _dht_address(self) -> tuple[str, int]:
        if self.external_peers:
            return dht_host_port(self.external_peers[0])
        assert self.dht_port is not None
        return LOOPBACK, self.dht_port

    def _dht_listens(self) -> bool:
        if not self.external_peers and self.dht_port is None:
            return False
        host, port = self._dht_address()
        return port_is_taken(port, host)

    def module_infos(self, dht_prefix: str, num_blocks: int) -> list[Any]:
        """Petals' `RemoteModuleInfo` of blocks 0..num_blocks-1 under `dht_prefix`: who announces what, and in
        which state, as a client routing now would see it (latest=True looks past the DHT client's own cache,
        which would keep showing a server as joining).

        Runs on this swarm's private DHT thread: hivemind's futures adopt the calling thread's event loop,
        creating (and never closing) one on a thread that has none, such as the main thread of a test.
        """
        from mesh.compat import petals

        uids = [f"{dht_prefix}.{block}" for block in range(num_blocks)]
        return self._on_dht_thread(lambda: petals.utils.dht.get_remote_module_infos(self._dht(), uids, latest=True))

    def _on_dht_thread(self, call: Callable[[], T]) -> T:
        if self._dht_thread is None:
            self._dht_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-swarm-dht")
        return self._dht_thread.submit(call).result()

    def _dht(self) -> Any:
        """A client-mode hivemind DHT joined to this swarm: created once, on the DHT thread."""
        if self._dht_client is None:
            import hivemind

            with children_die_with_this_thread():  # a swarm killed outright takes its DHT client too
                self._dht_client = hivemind.DHT(
                    initial_peers=self.initial_peers,
                    client_mode=True,
                    start=True,
                    host_maddrs=[f"/ip4/{LOOPBACK}/tcp/0"],
                )
        return self._dht_client

    def _stop_dht_client(self) -> None:
        if self._dht_thread is None:
            return
        if self._dht_client is not None:
            self._on_dht_thread(self._dht_client.shutdown)
            self._dht_client = None
        self._dht_thread.shutdown()
        self._dht_thread = None

    def _online_peer_spans(self, servers: Sequence[LocalServer]) -> set[tuple[str, str, int]]:
        """(dht_prefix, peer id, block) for every block announced online, over the given servers' models."""
        from mesh.compat import petals

        online = set()
        for prefix in {s.config.dht_prefix or "" for s in servers}:
            num_blocks = max(s.plan.end_block for s in servers if (s.config.dht_prefix or "") == prefix)
            for block, info in enumerate(self.module_infos(prefix, num_blocks)):
                for peer_id, server_info in info.servers.items():
                    if server_info.state == petals.data_structures.ServerState.ONLINE:
                        online.add((prefix, peer_id.to_base58(), block))
        return online


class _Supervision:
    """The swarm's watcher: a thread that restarts processes which exit unasked, and tracks which restarted
    servers are not yet announced online again."""

    def __init__(self, swarm: LocalSwarm) -> None:
        self._swarm = swarm
        self._watched: dict[SwarmProcess, RestartPolicy] = {}
        self._due: dict[SwarmProcess, float] = {}
        """Crashed processes and when they are started again."""
        self._unserved: dict[SwarmProcess, float] = {}
        """Restarted processes not yet online again, and when they were restarted."""
        self._given_up: dict[SwarmProcess, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for process in self._swarm._processes():
            self.watch(process)
        self._thread = threading.Thread(target=self._run, name="local-swarm-supervision", daemon=True)
        self._thread.start()

    def watch(self, process: SwarmProcess) -> None:
        with self._lock:
            self._watched[process] = RestartPolicy(
                first_delay_s=RESTART_FIRST_DELAY_S,
                max_delay_s=RESTART_MAX_DELAY_S,
                limit=RESTART_LIMIT,
                window_s=RESTART_WINDOW_S,
            )

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def restarting(self) -> list[SwarmProcess]:
        with self._lock:
            return [*self._due, *self._unserved]

    def raise_if_given_up(self) -> None:
        with self._lock:
            if self._given_up:
                raise SwarmError("the local swarm gave up on: " + "\n".join(self._given_up.values()))

    def _run(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                self._look_once()
            except Exception:  # the watcher must outlive a failed DHT query or restart, never die silently
                logger.exception("local swarm supervision failed a round; trying again")

    def _look_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            watched = list(self._watched.items())
        for process, policy in watched:
            if process in self._given_up or process.stopped_on_purpose or self._stopping.is_set():
                continue
            if process not in self._due and process.exit_status is not None:
                self._crashed(process, policy, now)
            elif process in self._due and now >= self._due[process]:
                self._swarm.on_spawner(process.restart)
                with self._lock:
                    del self._due[process]
                    self._unserved[process] = now
        self._note_recovered(watched)

    def _crashed(self, process: SwarmProcess, policy: RestartPolicy, now: float) -> None:
        delay = policy.crashed()
        tail = process.log_tail()
        if delay is None:
            message = (
                f"{process.name} exited with status {process.exit_status} {RESTART_LIMIT} times within "
                f"{RESTART_WINDOW_S:.0f} s; not restarted again\n{tail}"
            )
            with self._lock:
                self._given_up[process] = message
                self._unserved.pop(process, None)
            logger.error("local swarm gave up: %s", message)
            if isinstance(process, LocalServer):
                plan = process.plan
                for block in range(plan.start_block, plan.end_block):
                    logger.error("block %d of %s has lost its server %s", block, plan.model.model_id, process.name)
            return
        logger.warning(
            "swarm process exited unexpectedly name=%s status=%s restart=%d in %.1f s\n%s",
            process.name,
            process.exit_status,
            process.restarts + 1,
            delay,
            tail,
        )
        with self._lock:
            self._unserved.pop(process, None)
            self._due[process] = now + delay

    def _note_recovered(self, watched: list[tuple[SwarmProcess, RestartPolicy]]) -> None:
        with self._lock:
            unserved = dict(self._unserved)
        if not unserved:
            return
        servers = [p for p in unserved if isinstance(p, LocalServer)]
        online = self._swarm._online_peer_spans(servers) if servers and self._swarm._dht_listens() else set()
        policies = dict(watched)
        for process, restarted_at in unserved.items():
            if isinstance(process, LocalServer):
                back = process.loaded_since_restart() and _serves(online, process)
            else:
                back = self._swarm._dht_listens()
            if back and process.exit_status is None:
                policies[process].recovered()
                with self._lock:
                    self._unserved.pop(process, None)
                logger.info(
                    "swarm process back online name=%s peer_id=%s after %.1f s",
                    process.name,
                    process.peer_id,
                    time.monotonic() - restarted_at,
                )


def _serves(online: set[tuple[str, str, int]], server: LocalServer) -> bool:
    try:
        peer_id = server.peer_id
    except SwarmError:
        return False
    prefix = server.config.dht_prefix or ""
    return all((prefix, peer_id, block) in online for block in range(server.plan.start_block, server.plan.end_block))


def check_plan(plan: ServerPlan) -> None:
    """Refuse a plan whose model is missing, whose span does not fit the model, or whose wallet is mistyped."""
    if plan.wallet is not None:
        public_name_for(plan.wallet, plan.label)
    if plan.model.dht_prefix is None:
        raise NodeRefused(f"model {plan.model.model_id} needs a dht_prefix to be served from a local swarm")
    num_blocks = model_num_blocks(plan.model)
    if not 0 <= plan.start_block < plan.end_block or (num_blocks is not None and plan.end_block > num_blocks):
        raise InvalidBlocks(
            f"blocks {plan.start_block}:{plan.end_block} do not fit {plan.model.model_id} ({num_blocks} blocks)"
        )


def split_plans(model: ModelSpec, parts: int, replicas: int = 1, wallets: Sequence[str] = ()) -> list[ServerPlan]:
    """`parts` consecutive spans covering the model, each served by `replicas` servers; wallets assigned in turn."""
    num_blocks = model_num_blocks(model)
    if num_blocks is None:
        raise NodeRefused(f"cannot split {model.model_id}: its block count is only known for a local path")
    if not 1 <= parts <= num_blocks:
        raise InvalidBlocks(f"cannot split {num_blocks} blocks of {model.model_id} into {parts} spans")
    bounds = [i * num_blocks // parts for i in range(parts + 1)]
    plans: list[ServerPlan] = []
    for replica in range(replicas):
        for start, end in zip(bounds, bounds[1:], strict=False):
            wallet = wallets[len(plans) % len(wallets)] if wallets else None
            plans.append(ServerPlan(model, start, end, wallet=wallet, label=f"local-{replica}"))
    return plans

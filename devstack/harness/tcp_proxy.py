"""A loopback TCP proxy that the soak puts between the system's processes and a server (Redis, PostgreSQL), so
the schedule can break the network between them as well as kill them.

Every fault the soak injected before this was a process dying or a server restarting: a clean refusal the
clients see at once. A network fails otherwise: a partition cuts a client's connections half-way through a reply
and refuses its reconnects, and a slow link answers late, which is where timeouts, retries and half-read replies
meet. `LoopbackProxy` forwards one loopback port to a server and takes two faults, each for a bounded time:

- `partition(seconds)`: every open connection is cut (a reset) and the port stops listening (a connect is
  refused), then it listens again on the same port;
- `slow(seconds, latency_s)`: each chunk, in either direction, is held `latency_s` before it is passed on.

It runs as a process of its own (`python -m devstack.harness.tcp_proxy PORT UPSTREAM`, one command a line on its
stdin, one answer a line on its stdout), never as a thread of the harness: the harness forks (the local swarm's
helpers), and a forked child keeps a copy of every socket its parent had, so a listening socket the proxy closed
for a partition went on accepting connections nobody served (the first soaks with a threaded proxy: half the
system's Redis connections then hung). A process started by exec inherits none.

Loopback only: it listens on 127.0.0.1 and forwards to a port on 127.0.0.1 or to a Unix socket (the embedded
PostgreSQL listens on one only; through the proxy its clients reach it over TCP), never anywhere else.
"""

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
MAX_FAULT_S = 10.0
"""The longest a partition or a slow link may last: a fault the soak puts back, never a link left broken."""
MAX_LATENCY_S = 1.0
CHUNK_BYTES = 65536
REPLY_TIMEOUT_S = MAX_FAULT_S + 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class LoopbackProxy:
    """127.0.0.1:`port` forwarded to `upstream`, a port on 127.0.0.1 or a Unix socket's path; `start()`, then
    faults (each blocking for its duration), then `stop()`."""

    def __init__(self, upstream: int | Path, port: int) -> None:
        self.upstream = upstream
        self.port = port
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def listening_on(self) -> list[tuple[str, int]]:
        """The addresses it accepts connections on now (none while partitioned)."""
        reply = self._command("where")
        return [(host, int(port)) for host, port in (item.rsplit(":", 1) for item in reply.split())]

    def url_for(self, url: str, upstream: str) -> str:
        """`url` (which names `upstream`, e.g. "127.0.0.1:6379") with this proxy's address in its place."""
        if upstream not in url:
            raise ValueError(f"{url!r} does not name {upstream!r}")
        return url.replace(upstream, f"{LOOPBACK}:{self.port}", 1)

    def start(self) -> "LoopbackProxy":
        argv = [sys.executable, "-m", "devstack.harness.tcp_proxy", str(self.port), str(self.upstream)]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, start_new_session=True
        )
        assert self._process.stdout is not None
        ready = self._process.stdout.readline().strip()
        if ready != "listening":
            self.stop()
            raise RuntimeError(f"the proxy on port {self.port} did not start: {ready or 'it exited'}")
        return self

    def stop(self) -> None:
        """Its stdin closed: it cuts every connection and exits (killed if it has not within 5 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()

    def partition(self, seconds: float) -> None:
        """Blocking for `seconds`: open connections cut, new ones refused; then it listens again."""
        _bounded(seconds, MAX_FAULT_S, "a partition")
        self._command(f"partition {seconds}")

    def slow(self, seconds: float, latency_s: float) -> None:
        """Blocking for `seconds`: every chunk either way is held `latency_s` before it is forwarded."""
        _bounded(seconds, MAX_FAULT_S, "a slow link")
        _bounded(latency_s, MAX_LATENCY_S, "a link's latency")
        self._command(f"slow {seconds} {latency_s}")

    def _command(self, line: str) -> str:
        with self._lock:
            process = self._process
            if process is None or process.stdin is None or process.stdout is None:
                raise RuntimeError(f"the proxy on port {self.port} is not running")
            process.stdin.write(line + "\n")
            process.stdin.flush()
            reply = process.stdout.readline().strip()
        status, _, rest = reply.partition(" ")
        if status != "ok":
            raise RuntimeError(f"the proxy on port {self.port} answered {line!r} with {reply or 'nothing'}")
        return rest


class _Relay:
    """The proxy itself, in its own process's event loop."""

    def __init__(self, port: int, upstream: int | Path) -> None:
        self.port = port
        self.upstream = upstream
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._slow_until = 0.0
        self._latency_s = 0.0
        self._partitioned = False
        self._placeholder = _hold_port(port)

    def where(self) -> str:
        server = self._server
        sockets = server.sockets if server is not None else ()
        return " ".join(f"{host}:{port}" for host, port in (s.getsockname()[:2] for s in sockets))

    async def listen(self) -> None:
        self._partitioned = False
        self._server = await asyncio.start_server(
            self._accept, LOOPBACK, self.port, reuse_address=True, reuse_port=True
        )

    async def partition(self, seconds: float) -> None:
        self._partitioned = True
        await self.close()
        await asyncio.sleep(seconds)
        await self.listen()

    async def slow(self, seconds: float, latency_s: float) -> None:
        self._latency_s = latency_s
        self._slow_until = time.monotonic() + seconds
        await asyncio.sleep(seconds)
        self._slow_until = 0.0

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._open):
            _abort(writer)
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._partitioned:  # accepted in the instant before the port closed
            _abort(writer)
            return
        try:
            if isinstance(self.upstream, Path):
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            else:
                up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream)
        except OSError:  # the server is down: the client sees its connection close, as it would the server's
            _abort(writer)
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._open.discard(end)
                _abort(end)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction until either end closes; closing the other end too, so neither side hangs half-open."""
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                if time.monotonic() < self._slow_until:
                    await asyncio.sleep(self._latency_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _abort(writer)


async def _serve(port: int, upstream: int | Path) -> None:
    """Listen, say so, then one command a line from stdin until it closes; each answered with one line."""
    relay = _Relay(port, upstream)
    await relay.listen()
    loop = asyncio.get_running_loop()
    print("listening", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, *args = line.split()
        if command == "partition":
            await relay.partition(float(args[0]))
            print("ok", flush=True)
        elif command == "slow":
            await relay.slow(float(args[0]), float(args[1]))
            print("ok", flush=True)
        elif command == "where":
            print(f"ok {relay.where()}", flush=True)
        else:
            print(f"error: unknown command {command!r}", flush=True)
    await relay.close()


def _hold_port(port: int) -> socket.socket:
    """A socket bound to `port` that never listens, so the port stays this proxy's while a partition has closed its
    listening socket: a connect meanwhile is refused, and no client on the machine is given the port as its own
    source port (which, with nothing listening there, would connect a client retrying the port to itself). The
    listening socket shares the port with it (SO_REUSEPORT)."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((LOOPBACK, port))
    except OSError:
        held.close()
        raise
    return held


def _abort(writer: asyncio.StreamWriter) -> None:
    """Cut the connection at once (a reset, not a polite close): what a partition does to a client mid-reply."""
    if not writer.transport.is_closing():
        writer.transport.abort()


def _bounded(value: float, most: float, what: str) -> None:
    if not 0 <= value <= most:
        raise ValueError(f"{what} lasts 0 to {most} s, not {value}")


def main(argv: list[str]) -> None:
    port, upstream = int(argv[0]), argv[1]
    try:
        asyncio.run(_serve(port, int(upstream) if upstream.isdigit() else Path(upstream)))
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])

"""A loopback TCP proxy that the soak puts between the system's processes and a server (Redis, PostgreSQL), so
the schedule can break the network between them as well as kill them.

Every fault the soak injected before this was a process dying or a server restarting: a clean refusal the
clients see at once. A network fails otherwise: a partition leaves a client's connections open and silent or cut
half-way through a reply, and a slow link answers late, which is where timeouts, retries and half-read replies
meet. `LoopbackProxy` forwards one loopback port to another in a thread of its own (its own event loop, so the
processes reach their server while the harness's own loop is busy, and from the synchronous code that starts
the system) and takes two faults, each for a bounded time:

- `partition(seconds)`: every open connection is cut and the port stops listening (a connect is refused), then
  it listens again on the same port;
- `slow(seconds, latency_s)`: each chunk, in either direction, is held `latency_s` before it is passed on.

Loopback only: it listens on 127.0.0.1 and forwards to a port on 127.0.0.1 or to a Unix socket (the embedded
PostgreSQL listens on one only; through the proxy its clients reach it over TCP), never anywhere else.
"""

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
MAX_FAULT_S = 10.0
"""The longest a partition or a slow link may last: a fault the soak puts back, never a link left broken."""
MAX_LATENCY_S = 1.0
CHUNK_BYTES = 65536
T = TypeVar("T")


class LoopbackProxy:
    """127.0.0.1:`port` forwarded to `upstream`, a port on 127.0.0.1 or a Unix socket's path; `start()`, then
    faults, then `stop()`."""

    def __init__(self, upstream: int | Path, port: int) -> None:
        self.upstream = upstream
        self.port = port
        self.connections = 0
        """Connections accepted so far (a test's and a report's number)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy:{port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._placeholder: socket.socket | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._slow_until = 0.0
        self._latency_s = 0.0
        self._partitioned_until = 0.0

    @property
    def listening_on(self) -> list[tuple[str, int]]:
        """The addresses it accepts connections on now (none while partitioned)."""
        server = self._server
        return [sock.getsockname()[:2] for sock in server.sockets] if server is not None else []

    def url_for(self, url: str, upstream: str) -> str:
        """`url` (which names `upstream`, e.g. "127.0.0.1:6379") with this proxy's address in its place."""
        if upstream not in url:
            raise ValueError(f"{url!r} does not name {upstream!r}")
        return url.replace(upstream, f"{LOOPBACK}:{self.port}", 1)

    def start(self) -> "LoopbackProxy":
        self._placeholder = _hold_port(self.port)
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        if self._placeholder is not None:
            self._placeholder.close()

    def partition(self, seconds: float) -> None:
        """Blocking for `seconds`: open connections cut, new ones refused; then it listens again."""
        _bounded(seconds, MAX_FAULT_S, "a partition")
        self._partitioned_until = time.monotonic() + seconds
        self._call(self._close(listening=True))
        time.sleep(seconds)
        self._call(self._listen())

    def slow(self, seconds: float, latency_s: float) -> None:
        """Blocking for `seconds`: every chunk either way is held `latency_s` before it is forwarded."""
        _bounded(seconds, MAX_FAULT_S, "a slow link")
        _bounded(latency_s, MAX_LATENCY_S, "a link's latency")
        self._latency_s = latency_s
        self._slow_until = time.monotonic() + seconds
        time.sleep(seconds)
        self._slow_until = 0.0

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, LOOPBACK, self.port, reuse_address=True, reuse_port=True
        )

    async def _close(self, *, listening: bool) -> None:
        if listening and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._open):
            _abort(writer)
        self._open.clear()

    async def _shutdown(self) -> None:
        """Cut everything and wait for each connection's task to finish, so none is left pending on the loop."""
        await self._close(listening=True)
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if time.monotonic() < self._partitioned_until:  # accepted in the instant before the port closed
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


def _hold_port(port: int) -> socket.socket:
    """A socket bound to `port` that never listens, so the port stays this proxy's while a partition has closed its
    listening socket: a connect meanwhile is refused, and no outgoing connection of any process on the machine
    takes the port as its source port (the first soak with the proxy lost its Redis link that way: "address
    already in use" when the partition ended). The listening socket shares the port with it (SO_REUSEPORT)."""
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

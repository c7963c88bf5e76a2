"""A TCP proxy on loopback that can drop every connection through it at once, as a flaky network would.

`cut()` resets the client side (SO_LINGER 0, so the client reads ECONNRESET, not a polite end of stream) and
closes the upstream side (so the gateway sees its client leave). Connections opened afterwards pass normally.
"""

import socket
import struct
import threading
from types import TracebackType
from typing import Self


class DroppingProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.cuts = 0
        self._drop_next_answer = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._spawn(self._accept_forever)
        return self

    def cut(self) -> int:
        """Drop every open connection; the number dropped."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            try:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.shutdown(socket.SHUT_RD)  # wakes its pump without a FIN; close() then sends the RST
            except OSError:
                pass
            client.close()
            _close(upstream)
        self.cuts += len(pairs)
        return len(pairs)

    def drop_next_answer(self) -> None:
        """The next connection forwards its request, then is reset when the answer's first bytes arrive: the
        server acted on the request, and the client never learns how it answered."""
        self._drop_next_answer.set()

    def stop(self) -> None:
        _close(self._listener)
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_forever(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            drop = self._drop_next_answer.is_set()
            self._drop_next_answer.clear()
            self._spawn(_pump, client, upstream)
            self._spawn(_pump, upstream, client, drop)


def _pump(source: socket.socket, sink: socket.socket, reset_sink_instead: bool = False) -> None:
    try:
        while data := source.recv(65536):
            if reset_sink_instead:
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

"""The soak's loopback proxy breaks a link the ways a network does and puts it back: a partition cuts the open
connections and refuses new ones for its duration, a slow link holds every chunk, neither lasts past its bound,
and it never listens or forwards beyond loopback."""

import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.harness.tcp_proxy import MAX_FAULT_S, LoopbackProxy
from mesh.ports import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def proxy() -> Iterator[LoopbackProxy]:
    with _EchoServer(("127.0.0.1", 0), _Echo) as upstream:
        serving = threading.Thread(target=upstream.serve_forever, args=(0.05,), daemon=True)
        serving.start()
        started = LoopbackProxy(upstream.server_address[1], free_port()).start()
        try:
            yield started
        finally:
            started.stop()
            upstream.shutdown()


def _connect(proxy: LoopbackProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def _round_trip(connection: socket.socket, payload: bytes = b"ping") -> bytes:
    connection.sendall(payload)
    return connection.recv(4096)


def _in_background(fault: threading.Thread) -> threading.Thread:
    fault.start()
    time.sleep(0.1)  # the fault is in place
    return fault


def test_it_forwards_both_ways_on_loopback_only(proxy: LoopbackProxy) -> None:
    with _connect(proxy) as connection:
        assert _round_trip(connection) == b"ping"
    assert proxy.listening_on == [("127.0.0.1", proxy.port)]
    with pytest.raises(ValueError, match="does not name"):
        proxy.url_for("redis://10.0.0.5:6379/0", "127.0.0.1:6379")
    assert proxy.url_for("redis://127.0.0.1:6379/0", "127.0.0.1:6379") == f"redis://127.0.0.1:{proxy.port}/0"


def test_it_reaches_a_server_listening_on_a_unix_socket_over_tcp(tmp_path: Path) -> None:
    path = tmp_path / "server.sock"
    with socketserver.ThreadingUnixStreamServer(str(path), _Echo) as upstream:
        upstream.daemon_threads = True
        serving = threading.Thread(target=upstream.serve_forever, args=(0.05,), daemon=True)
        serving.start()
        proxy = LoopbackProxy(path, free_port()).start()
        try:
            with _connect(proxy) as connection:
                assert _round_trip(connection) == b"ping"
        finally:
            proxy.stop()
            upstream.shutdown()


def test_a_partition_cuts_open_connections_refuses_new_ones_and_heals(proxy: LoopbackProxy) -> None:
    forked = os.fork()  # the harness forks (the swarm's helpers): a copy of its sockets must not keep the link up
    if forked == 0:
        time.sleep(5)
        os._exit(0)
    try:
        _partition_and_heal(proxy)
    finally:
        os.kill(forked, signal.SIGKILL)
        os.waitpid(forked, 0)


def _partition_and_heal(proxy: LoopbackProxy) -> None:
    with _connect(proxy) as open_before:
        assert _round_trip(open_before) == b"ping"
        fault = _in_background(threading.Thread(target=proxy.partition, args=(0.3,)))
        try:
            assert _round_trip(open_before) == b""  # cut: reset or closed, never answered
        except ConnectionError:
            pass
        with pytest.raises(ConnectionRefusedError):
            _connect(proxy)
        with socket.socket() as squatter, pytest.raises(OSError):  # the port stays the proxy's: it listens again
            squatter.bind(("127.0.0.1", proxy.port))
        fault.join()
    with _connect(proxy) as after:
        assert _round_trip(after) == b"ping"


def test_a_slow_link_holds_each_chunk_for_its_duration_only(proxy: LoopbackProxy) -> None:
    with _connect(proxy) as connection:
        fault = _in_background(threading.Thread(target=proxy.slow, args=(0.45, 0.15)))
        began = time.monotonic()
        assert _round_trip(connection) == b"ping"
        assert time.monotonic() - began >= 0.3  # the request's chunk and the reply's, each held 0.15 s
        fault.join()
        began = time.monotonic()
        assert _round_trip(connection) == b"ping"
        assert time.monotonic() - began < 0.15


def test_a_fault_longer_than_its_bound_is_refused(proxy: LoopbackProxy) -> None:
    with pytest.raises(ValueError, match="partition"):
        proxy.partition(MAX_FAULT_S + 1)
    with pytest.raises(ValueError, match="latency"):
        proxy.slow(1.0, 5.0)
    with _connect(proxy) as connection:
        assert _round_trip(connection) == b"ping"

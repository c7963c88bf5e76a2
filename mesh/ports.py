"""Loopback ports: finding a free one, and telling whether one is taken. The one home of these helpers: the node
launcher and the local swarm use them, and so do the dev stack, the tests and the benchmarks (rooms above)."""

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_KEPT_PORT = 10_000
"""Kept ports are drawn from here up to the kernel's ephemeral range: above the well-known and registered
services people run on a development machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_to_keep(*, attempts: int = 50, rng: random.Random | None = None) -> int:
    """A free port on 127.0.0.1 for a process that must get it back when it is restarted.

    `free_port()` hands out a port from the kernel's ephemeral range, the range every outgoing connection's
    local port is drawn from: while a crashed server is down, any client's new connection (a Redis pool's, an
    HTTP client's) may take its port and hold it for hours, and the restarted server can then never listen on
    it again. A port below that range is never taken that way.
    """
    low = _ephemeral_range()[0]
    if low - LOWEST_KEPT_PORT < attempts:  # an unusual range leaves no room below it: the kernel's choice
        return free_port()
    draw = rng or random.SystemRandom()
    for _ in range(attempts):
        port = draw.randrange(LOWEST_KEPT_PORT, low)
        if _bindable(port):
            return port
    return free_port()


def port_is_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):  # not Linux: the range IANA suggests, which most other systems use
        return 49152, 65535


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens on it, else any free port: a second `make run` (or anything else on
    :8200) must not stop a process that only needs to be reachable, and the start-up summary prints the URL."""
    return free_port() if port_is_taken(preferred) else preferred

import random
import socket
from pathlib import Path

import pytest

from mesh import ports
from mesh.ports import LOWEST_KEPT_PORT, free_port_to_keep


def test_a_port_to_keep_lies_below_the_range_outgoing_connections_draw_from() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])

    port = free_port_to_keep()

    assert LOWEST_KEPT_PORT <= port < low
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free, as promised


def test_a_port_something_listens_on_is_passed_over() -> None:
    first = free_port_to_keep(rng=random.Random(7))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()

        assert free_port_to_keep(rng=random.Random(7)) != first


def test_a_range_that_leaves_no_room_below_it_falls_back_to_the_kernels_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text(f"{LOWEST_KEPT_PORT + 10}\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", narrow)

    assert free_port_to_keep() >= LOWEST_KEPT_PORT + 10

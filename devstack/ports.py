"""Loopback ports, for the dev stack and the tests: the code lives in `mesh.ports`, since the node launcher and
the local swarm need it too and `mesh` may not import `devstack`."""

from mesh.ports import free_port, port_is_taken

__all__ = ["free_port", "port_is_taken", "port_or_free"]


def port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens on it, else any free port: a second `make run` (or anything else on
    :8200) must not stop a process that only needs to be reachable, and the start-up summary prints the URL."""
    return free_port() if port_is_taken(preferred) else preferred

"""Loopback ports, for the dev stack and the tests: the code lives in `mesh.ports`, since the node launcher and
the local swarm need it too and `mesh` may not import `devstack`."""

from mesh.ports import free_port, port_is_taken

__all__ = ["free_port", "port_is_taken"]

"""Signalling process groups, for the dev stack and the tests: the code lives in `mesh.process_groups`, since
the local swarm stops its Petals servers that way and `mesh` may not import `devstack`."""

from mesh.process_groups import signal_group

__all__ = ["signal_group"]

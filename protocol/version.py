"""The coordinator's version: one source, the installed distribution's metadata (set in pyproject.toml)."""

from importlib.metadata import version

DISTRIBUTION = "far-mesh-coordinator"
VERSION = version(DISTRIBUTION)

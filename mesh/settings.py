"""Settings of the mesh room's commands (`far-mesh models`, `far-mesh swarm`, `far-mesh node`)."""

from pathlib import Path

from pydantic import Field

from protocol.settings import CommonSettings

DEFAULT_CACHE_DIR = Path("~/.cache/far-mesh")


class MeshSettings(CommonSettings):
    far_mesh_cache_dir: Path = Field(
        default=DEFAULT_CACHE_DIR,
        description="Where generated tiny models and converted real ones (<dir>/models/<name>) and swarm work files "
        "live",
    )

    @property
    def cache_dir(self) -> Path:
        return self.far_mesh_cache_dir.expanduser()

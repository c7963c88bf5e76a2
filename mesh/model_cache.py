"""Model directories made on this machine under `<cache>/models/<name>`, each made once and replaced whole.

The tiny generated models (`mesh.tiny_models`) and the models converted from GGUF (`mesh.gguf_checkpoint`) are
both written here. A directory carries, in `FINGERPRINT_FILE`, a digest of everything that determined its files
(a recipe, a source file's checksum, the library versions); a directory with the expected digest is reused as it
is, any other is made again. A directory is written into a temporary sibling and renamed into place, so a
reader, or a second process making the same model, sees either no model or a complete one, never half.
"""

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

FINGERPRINT_FILE = "far-mesh-recipe.json"


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def recorded(path: Path) -> dict[str, Any] | None:
    """What the directory at `path` recorded of its making, or None when it has no readable record."""
    try:
        record = json.loads((path / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def fingerprint_of(path: Path) -> str | None:
    record = recorded(path)
    value = record.get("fingerprint") if record else None
    return str(value) if value is not None else None


def ensure_model_dir(
    target: Path, fingerprint: str, write: Callable[[Path], Mapping[str, Any]], record: Mapping[str, Any]
) -> bool:
    """Make `target` with `write(staging_dir)` unless it already carries `fingerprint`; True when it was made.

    `write` returns facts to keep next to the fingerprint (they join `record` in `FINGERPRINT_FILE`), read back
    with `recorded()` by whoever serves the model.
    """
    if fingerprint_of(target) == fingerprint:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        facts = write(staging)
        (staging / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fingerprint, **record, **facts}))
        if fingerprint_of(target) == fingerprint:
            return False  # another process (a parallel test run, a second server) made it meanwhile: keep theirs
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same model first; theirs is as good as ours.
            if fingerprint_of(target) != fingerprint:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True

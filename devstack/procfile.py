"""Reading the Procfile, so `far-mesh dev` runs exactly the commands production runs."""

import shlex
from pathlib import Path


class ProcfileError(ValueError):
    """The Procfile is missing a process type, or a line is not `name: command`."""


def read_procfile(path: Path) -> dict[str, list[str]]:
    """Process type -> argv, in file order."""
    processes: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip().isidentifier() or not command.strip():
            raise ProcfileError(f"{path}:{number}: expected 'name: command', got {line!r}")
        processes[name.strip()] = shlex.split(command)
    return processes


def commands_for(path: Path, names: list[str]) -> dict[str, list[str]]:
    """The argv of each named process type; raises when one is missing."""
    processes = read_procfile(path)
    missing = [name for name in names if name not in processes]
    if missing:
        raise ProcfileError(f"{path} has no {', '.join(missing)} line")
    return {name: processes[name] for name in names}

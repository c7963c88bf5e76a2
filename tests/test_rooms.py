"""The rooms' import rules (README, "The rooms"; pyproject's [tool.importlinter]) hold: a module that imports
across a wall fails here, in CI, not in a review. A new room is forbidden to every other until it is placed on
a layer and allowed by name."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# What each room may import from the rooms on the layers below its own (the README's "may import" column).
# cli, devstack, bench and the tests may import every room below them.
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": set(),
    "mesh": {"protocol"},
    "telemetry": set(),
    "probes": set(),
    "streams": set(),
    "schema": {"protocol"},
    "chain": {"protocol"},
    "gateway": {"protocol", "schema", "telemetry"},
    "workers": {"protocol", "mesh", "probes", "telemetry"},
    "accounting": {"protocol", "schema", "chain", "probes", "streams", "telemetry"},
    "payouts": {"protocol", "schema", "chain"},
    "portal": {"protocol", "schema"},
    "verifier": {"protocol", "schema", "probes", "streams", "telemetry"},
}
MAY_IMPORT_EVERY_ROOM_BELOW = {"cli", "devstack", "bench", "tests"}


def import_linter() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["importlinter"]
    return config


def layers() -> list[set[str]]:
    """The layers contract's layers, top first."""
    (contract,) = [c for c in import_linter()["contracts"] if c["type"] == "layers"]
    assert "containers" not in contract, "the layers are the top-level rooms themselves"
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def top_level_packages() -> set[str]:
    """Every folder at the repository's root that holds Python: a room, whatever its name."""
    return {
        path.name
        for path in REPO.iterdir()
        if path.is_dir() and not path.name.startswith(".") and any(path.glob("*.py"))
    } | {path.stem for path in REPO.glob("*.py")}


def test_every_import_contract_between_the_rooms_is_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "import-linter is a dev dependency: `make install` installs it"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " 0 broken" in result.stdout


def test_every_room_sits_on_one_layer() -> None:
    # import-linter checks only the rooms a contract names, and takes a package that is not a root package for
    # an external one that any room may import: a room missing here would be outside every wall.
    placed = [room for layer in layers() for room in layer]
    assert len(placed) == len(set(placed)), "a room sits on one layer only"
    assert set(import_linter()["root_packages"]) == set(placed)
    assert top_level_packages() <= set(placed), "place the new room on a layer in pyproject's layers contract"
    assert set(MAY_IMPORT) | MAY_IMPORT_EVERY_ROOM_BELOW == set(placed)


def test_each_room_may_import_exactly_what_its_table_allows() -> None:
    # The layers contract allows a room every room below it; the forbidden contracts take away what it may not
    # use. What is left must be its table's entry, so a room added to a lower layer is forbidden to the rooms
    # above it until a forbidden contract or the table says otherwise.
    forbidden: dict[str, set[str]] = {}
    for contract in import_linter()["contracts"]:
        if contract["type"] == "forbidden":
            for source in contract["source_modules"]:
                forbidden.setdefault(source, set()).update(contract["forbidden_modules"])
    all_layers = layers()
    for depth, layer in enumerate(all_layers):
        below = {room for lower in all_layers[depth + 1 :] for room in lower}
        for room in layer:
            allowed = below - forbidden.get(room, set())
            expected = below if room in MAY_IMPORT_EVERY_ROOM_BELOW else MAY_IMPORT[room]
            assert allowed == expected, f"{room} may import {sorted(allowed)}, its table says {sorted(expected)}"


def test_the_readme_says_what_each_room_may_import() -> None:
    # The README's rooms table is where a reader learns the rules: its "may import" column (the rooms it names,
    # before any external packages) must be this test's table.
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)/` \|.*\| ([^|]*) \|$", readme, flags=re.MULTILINE)
    rooms = set(MAY_IMPORT) | MAY_IMPORT_EVERY_ROOM_BELOW
    table = {room: set(re.findall(r"[a-z_]+", may_import)) & rooms for room, may_import in rows if room in MAY_IMPORT}
    assert table == MAY_IMPORT

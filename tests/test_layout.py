"""The tests are laid out to be found: a test module is a leaf that nothing imports, so what tests share lives in
tests/fixtures/<room>.py (fixtures, and the helpers that go with them) or a folder's helpers.py, and moving or
deleting a test module never breaks another."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def is_test_module(module: str) -> bool:
    return module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_module_under_tests_imports_a_test_module() -> None:
    offenders = {
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in TESTS.rglob("*.py")
        for module in imported_modules(path)
        if is_test_module(module)
    }
    assert not offenders, "move what they share into a helpers.py or tests/fixtures/: " + "; ".join(sorted(offenders))

"""The tests are laid out to be found: a test module is a leaf that nothing imports, so what tests share lives in
tests/fixtures/<room>.py (fixtures, and the helpers that go with them) or a folder's helpers.py, and moving or
deleting a test module never breaks another."""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# `from tests.a.b import x, y` (parenthesised over lines, or not) and `import tests.a.b`; a regex, not ast: parsing
# every test module cost 2 s of the suite for what one pass over the text finds.
FROM_IMPORT = re.compile(r"^\s*from\s+(tests(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]*)", re.MULTILINE)
PLAIN_IMPORT = re.compile(r"^\s*import\s+(tests(?:\.\w+)+)", re.MULTILINE)


def imported_modules(text: str) -> set[str]:
    """Each module under tests/ that `text` imports, and each name it imports from one (which may be a module)."""
    names = set(PLAIN_IMPORT.findall(text))
    for module, imported in FROM_IMPORT.findall(text):
        names.add(module)
        for name in re.findall(r"(\w+)(?:\s+as\s+\w+)?", re.sub(r"#[^\n]*", "", imported)):
            names.add(f"{module}.{name}")
    return names


def is_test_module(module: str) -> bool:
    return module.rsplit(".", 1)[-1].startswith("test_")


def test_the_scan_finds_each_way_of_importing_a_test_module() -> None:
    text = "from tests.a.test_b import c\nfrom tests.a import (\n    helpers,\n    test_d,\n)\nimport tests.e.test_f\n"
    assert {m for m in imported_modules(text) if is_test_module(m)} == {
        "tests.a.test_b",
        "tests.a.test_d",
        "tests.e.test_f",
    }


def test_no_module_under_tests_imports_a_test_module() -> None:
    offenders = {
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in TESTS.rglob("*.py")
        for module in imported_modules(path.read_text())
        if is_test_module(module)
    }
    assert not offenders, "move what they share into a helpers.py or tests/fixtures/: " + "; ".join(sorted(offenders))

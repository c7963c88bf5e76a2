"""Every repository path a document names exists: the README, docs/*.md, deploy/README.md and the SDKs' READMEs
name files, folders, migrations and tests, and a move that leaves a document behind fails here.

What counts as a path: a markdown link to a relative target (resolved from the document's folder), and every
whitespace-separated word of a backticked span whose first part is a top-level entry of the repository that git
does not ignore (`gateway/sse.py`, `schema/0014`, `pyproject.toml`, `.venv/bin/python bench/bench_worker.py`
checks `bench/bench_worker.py`). Not paths: URLs, HTTP routes (`/v1/models`), `~/...` and environment-relative
names (`.cache/devstack/`, `FAR_MESH_CACHE_DIR/...`), names with placeholders (`<...>`, `{...}`, `$...`, `…`),
and bare file names (`fees.py`) whose folder the prose gives. A shell glob (`chain/artifacts/*.json`) must match
something; `schema/NNNN` names the migration numbered NNNN; `tests/x.py::test_name` the test function in x.py."""

import ast
import fnmatch
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [REPO / "README.md", REPO / "deploy" / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("sdk/*/README.md")]
)
PLACEHOLDERS = ("<", ">", "{", "}", "$", "…", "...", "|", "(", ")", "=", "[", "]")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
MIGRATION = re.compile(r"schema/\d{4}")


def ignored_patterns() -> list[str]:
    lines = (REPO / ".gitignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "!"))]


def is_ignored(path: str) -> bool:
    """Whether .gitignore ignores `path` (its patterns' simple forms: anchored `/x/`, any-depth `x/`, `*.x`)."""
    parts = Path(path).parts
    for pattern in ignored_patterns():
        anchored = pattern.startswith("/") or "/" in pattern.strip("/")
        pattern = pattern.strip("/")
        for depth in range(1, len(parts) + 1):
            if anchored and fnmatch.fnmatch("/".join(parts[:depth]), pattern):
                return True
            if not anchored and fnmatch.fnmatch(parts[depth - 1], pattern):
                return True
    return False


def top_level_entries() -> set[str]:
    return {entry.name for entry in REPO.iterdir() if entry.name != ".git" and not is_ignored(entry.name)}


def named_paths(doc: Path) -> set[str]:
    """The repository paths `doc` names, relative to the repository's root."""
    text = doc.read_text()
    paths = set()
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        paths.add((doc.parent / target).resolve().relative_to(REPO).as_posix())
    top = top_level_entries()
    for span in CODE.findall(text):
        for word in span.split():
            word = word.strip("\"',;:.").removeprefix("./") if "::" not in word else word
            if any(mark in word for mark in PLACEHOLDERS) or word.split("/")[0] not in top:
                continue
            if is_ignored(word.split("::")[0]):
                continue
            paths.add(word)
    return paths


def exists(path: str) -> bool:
    file, _, test_name = path.partition("::")
    if test_name:
        source = REPO / file
        if not source.is_file():
            return False
        functions = {
            node.name
            for node in ast.walk(ast.parse(source.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        return test_name.split("::")[-1].split("[")[0] in functions
    if "*" in path or "?" in path:
        return any(REPO.glob(path))
    if MIGRATION.fullmatch(path):
        return any(REPO.glob(path + "_*.sql"))
    return (REPO / path).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(REPO).as_posix())
def test_every_path_a_document_names_exists(doc: Path) -> None:
    missing = sorted(path for path in named_paths(doc) if not exists(path))
    assert not missing, f"{doc.relative_to(REPO)} names paths that do not exist: {missing}"


def test_the_documents_name_paths() -> None:
    # The rules above find what they should: a change that made them find nothing would pass every document.
    named = named_paths(REPO / "README.md")
    assert {"tests/test_rooms.py", "docs/architecture.md", "pyproject.toml"} <= named
    assert not {path for path in named if path.startswith((".cache", ".venv", "artifacts"))}

"""The Dockerfiles, checked without a Docker engine: what they copy, run, expose and install."""

import fnmatch
import re
import tomllib
from typing import Any

import pytest

from tests.deploy.manifests import (
    DOCKERFILES,
    REPO,
    copy_sources,
    dockerfile,
    exec_form,
    require_room_commands,
    subcommands,
)

HEAVY = {"torch", "petals", "hivemind", "transformers", "tokenizers", "bitsandbytes", "accelerate", "peft"}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerignore_keeps(path: str) -> bool:
    """Whether .dockerignore (deny everything, then re-include) lets `path` into the build context."""
    kept = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            kept = negate
    return kept


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_path_an_image_copies_exists_and_is_in_the_build_context(image: str) -> None:
    sources = [s for i in dockerfile(DOCKERFILES[image]) if i.name == "COPY" for s in copy_sources(i)]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{image}: COPY {source} names a path that does not exist"
        assert dockerignore_keeps(source), f"{image}: .dockerignore keeps {source} out of the build context"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_package_the_project_installs_is_copied_into_the_image(image: str) -> None:
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {s for i in dockerfile(DOCKERFILES[image]) if i.name == "COPY" for s in copy_sources(i)}
    missing = {pattern.rstrip("*") for pattern in includes} - copied
    assert not missing, f"{image} does not COPY packages that pip would install: {sorted(missing)}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_runs_a_far_mesh_subcommand_that_exists(image: str) -> None:
    instructions = dockerfile(DOCKERFILES[image])
    entrypoint = exec_form(next(i.args for i in reversed(instructions) if i.name == "ENTRYPOINT"))
    command = exec_form(next(i.args for i in reversed(instructions) if i.name == "CMD"))
    assert entrypoint == ["far-mesh"]
    require_room_commands(command[0])
    assert command[0] in subcommands(), f"{image}: CMD runs `far-mesh {command[0]}`, which build_parser() lacks"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_runs_as_a_non_root_user_from_a_pinned_base(image: str) -> None:
    instructions = dockerfile(DOCKERFILES[image])
    users = [i.args for i in instructions if i.name == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    base = next(i.args for i in instructions if i.name == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    reference = base.split("=", 1)[1]
    assert "@sha256:" in reference or re.search(r":\d+\.\d+\.\d+-", reference), f"{image}: unpinned base {reference}"
    assert all(i.args.split()[0] == "${PYTHON_IMAGE}" for i in instructions if i.name == "FROM")


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_has_a_healthcheck_and_bakes_in_no_secret(image: str) -> None:
    instructions = dockerfile(DOCKERFILES[image])
    assert any(i.name == "HEALTHCHECK" for i in instructions)
    for instruction in instructions:
        if instruction.name in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|POSTGRES_URL|REDIS_URL", instruction.args), instruction


def test_the_light_image_installs_no_torch_petals_or_hivemind() -> None:
    instructions = dockerfile(DOCKERFILES["light"])
    runs = " ".join(i.args for i in instructions if i.name == "RUN")
    assert "[mesh]" not in runs and "petals" not in runs
    light = {re.split(r"[<>=\[ ;]", requirement)[0].lower() for requirement in pyproject()["project"]["dependencies"]}
    assert not light & HEAVY, f"the light dependency set pulls in {sorted(light & HEAVY)}"


def test_the_mesh_image_installs_petals_as_the_makefile_does() -> None:
    runs = " ".join(i.args for i in dockerfile(DOCKERFILES["mesh"]) if i.name == "RUN")
    makefile = (REPO / "Makefile").read_text()
    petals = re.search(r"petals==[\w.]+", makefile)
    assert petals is not None
    assert f"--no-deps -c requirements/constraints.txt {petals.group(0)}" in runs
    assert "['optional-dependencies']['mesh']" in runs, "the mesh image installs the `mesh` extra"
    # torch comes from TORCH_INDEX_URL (CPU or CUDA build) at exactly the version the constraints pin.
    assert "torch==" in (REPO / "requirements/constraints.txt").read_text()
    assert "grep -i '^torch==' requirements/constraints.txt" in runs


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dependencies_install_from_the_manifests_before_any_source_is_copied(image: str) -> None:
    # A code change must reuse the dependency layers: nothing of ours is copied before they are installed, and
    # the project itself is installed last without touching them.
    build = dockerfile(DOCKERFILES[image])
    build = build[: next(n for n, i in enumerate(build) if i.name == "FROM" and "runtime" in i.args)]
    deps = next(n for n, i in enumerate(build) if i.name == "RUN" and "-r /tmp/requirements.txt" in i.args)
    assert "tomllib" in build[deps].args and "['project']" in build[deps].args, "read from pyproject.toml"
    before = {s for i in build[:deps] if i.name == "COPY" for s in copy_sources(i)}
    assert before == {"requirements/constraints.txt", "pyproject.toml"}, before
    packages = {p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= {s for i in build[deps:] if i.name == "COPY" for s in copy_sources(i)}
    after = [i.args for i in build[deps + 1 :] if i.name == "RUN"]
    assert after and all("pip install --no-deps" in args and "-r " not in args for args in after)

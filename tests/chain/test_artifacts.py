from typing import Any

import pytest

from chain.artifacts import ARTIFACTS_DIR, CONTRACTS, compile_sources, load_artifact, render_artifact


@pytest.fixture(scope="module")
def compiled() -> dict[str, Any]:
    """One compile of the sources for the module (solc-js takes seconds of CPU per compile)."""
    return compile_sources()


def test_the_committed_artifacts_are_what_the_sources_compile_to(compiled: dict[str, Any]) -> None:
    for name in CONTRACTS:
        committed = (ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8")
        assert committed == render_artifact(name, compiled), f"run `far-mesh chain compile` and commit {name}.json"


def test_the_compiler_is_the_pinned_solc_targeting_ganaches_hardfork(compiled: dict[str, Any]) -> None:
    assert compiled["compiler"].startswith("0.8.37+")
    assert compiled["settings"]["evmVersion"] == "shanghai"


def test_an_artifact_carries_abi_and_creation_bytecode() -> None:
    token = load_artifact("FarToken")
    names = {entry.get("name") for entry in token.abi}
    assert {"transfer", "transferFrom", "approve", "balanceOf", "decimals", "Transfer"} <= names
    assert token.bytecode.startswith("0x60") and len(token.bytecode) > 1000

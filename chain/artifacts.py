"""The compiled contracts: ABI and creation bytecode, committed under `artifacts/` so that deploying and paying
need no Node.js; `far-mesh chain compile` regenerates them from `contracts/` with solc-js (the npm package,
offline), and a test checks that the committed files are what the sources compile to.
"""

import json
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CHAIN_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = CHAIN_DIR / "artifacts"
CONTRACTS = ("FarToken", "FarBatchTransfer", "FarDeposit")


class CompilerMissing(RuntimeError):
    """solc-js is not installed (chain/node_modules): `make install` runs `npm ci` in chain/."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


def compile_sources() -> dict[str, Any]:
    """Compile every contract in `contracts/` with solc-js; the JSON compile.js prints."""
    if not (CHAIN_DIR / "node_modules" / "solc").is_dir():
        raise CompilerMissing(f"solc-js is not installed: run `npm ci` in {CHAIN_DIR} (make install does)")
    done = subprocess.run(
        ["node", str(CHAIN_DIR / "compile.js")], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"solc failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def render_artifact(name: str, compiled: dict[str, Any]) -> str:
    """One artefact file's text: stable key order, so a recompile of unchanged sources is byte-identical."""
    contract = compiled["contracts"][name]
    document = {
        "contractName": name,
        "compiler": compiled["compiler"],
        "settings": compiled["settings"],
        "abi": contract["abi"],
        "bytecode": contract["bytecode"],
    }
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def write_artifacts(compiled: dict[str, Any]) -> list[Path]:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    paths = []
    for name in CONTRACTS:
        path = ARTIFACTS_DIR / f"{name}.json"
        path.write_text(render_artifact(name, compiled), encoding="utf-8")
        paths.append(path)
    load_artifact.cache_clear()
    return paths


@cache
def load_artifact(name: str) -> Artifact:
    document = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return Artifact(name=name, abi=document["abi"], bytecode=document["bytecode"])

"""Reading the deployment files the way Docker and Kubernetes would, for the tests beside this module."""

import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"light": REPO / "Dockerfile.light", "mesh": REPO / "Dockerfile.mesh"}


@dataclass(frozen=True)
class Process:
    """One workload in the manifests, tied to its Procfile line, its settings class and its image."""

    procfile: str
    settings: str
    image: str
    port_field: str | None
    """The settings field holding the port it serves (HTTP or /metrics); None for a run-once Job."""

    def settings_class(self) -> type[CommonSettings]:
        module, _, name = self.settings.partition(":")
        cls: type[CommonSettings] = getattr(importlib.import_module(module), name)
        return cls


PROCESSES = {
    "far-mesh-gateway": Process("web", "gateway.settings:GatewaySettings", "light", "gateway_port"),
    "far-mesh-worker": Process("worker", "workers.settings:WorkerSettings", "mesh", "far_mesh_worker_metrics_port"),
    "far-mesh-accounting": Process(
        "accounting", "accounting.settings:AccountingSettings", "light", "accounting_metrics_port"
    ),
    "far-mesh-migrate": Process("release", "schema.settings:LedgerSettings", "light", None),
}
"""The mapping every drift test starts from; a workload missing here fails `test_every_workload_is_a_known_process`."""

COMMAND_ROOMS = {"gateway": "gateway", "worker": "workers", "accounting": "accounting", "migrate": "schema"}
"""Which room registers each subcommand the images and manifests run."""


def procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return {
        name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines if line.strip())
    }


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return objects(docs, "Deployment") + objects(docs, "Job")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container_env(docs: list[dict[str, Any]], container: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom in order (later wins), then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            assert source["secretRef"]["name"] == secret["metadata"]["name"], "envFrom names an unknown Secret"
            env.update(secret["stringData"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", f"<{variable['name']} from the downward API>")
    return env


def settings_env_names(cls: type[CommonSettings]) -> set[str]:
    return {name.upper() for name in cls.model_fields}


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            name, _, args = line.strip().partition(" ")
            out.append(Instruction(name.upper(), args.strip()))
    return out


def copy_sources(instruction: Instruction) -> list[str]:
    """The build-context paths a COPY reads (none for COPY --from=<stage>)."""
    words = shlex.split(instruction.args)
    if any(word.startswith("--from") for word in words):
        return []
    return [word for word in words if not word.startswith("--")][:-1]


def exec_form(args: str) -> list[str]:
    import json

    parsed: list[str] = json.loads(args)
    return parsed

"""Reading the deployment files the way Docker and Kubernetes would, for the tests beside this module."""

import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_parser
from protocol.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"light": REPO / "Dockerfile.light", "mesh": REPO / "Dockerfile.mesh"}


@dataclass(frozen=True)
class Process:
    """One process in the manifests, tied to its Procfile line, its settings class and its image."""

    workload: str
    container: str
    procfile: str
    settings: str
    image: str
    port_field: str | None
    """The settings field holding the port it serves (HTTP or /metrics); None for a run-once step."""
    init: bool = False
    """Run as an init container of `workload`, to completion, before its main container starts."""

    def settings_class(self) -> type[CommonSettings]:
        module, _, name = self.settings.partition(":")
        cls: type[CommonSettings] = getattr(importlib.import_module(module), name)
        return cls


PROCESSES = {
    "gateway": Process(
        "far-mesh-gateway", "gateway", "web", "gateway.settings:GatewaySettings", "light", "gateway_port"
    ),
    "worker": Process(
        "far-mesh-worker", "worker", "worker", "workers.settings:WorkerSettings", "mesh", "worker_metrics_port"
    ),
    "accounting": Process(
        "far-mesh-accounting",
        "accounting",
        "accounting",
        "accounting.settings:AccountingSettings",
        "light",
        "accounting_metrics_port",
    ),
    "portal": Process("far-mesh-portal", "portal", "portal", "portal.settings:PortalSettings", "light", None),
    "payouts": Process(
        "far-mesh-payouts",
        "payouts",
        "payouts",
        "payouts.settings:PayoutSettings",
        "light",
        "payout_metrics_port",
    ),
    "deposits": Process(
        "far-mesh-deposits",
        "deposits",
        "deposits",
        "accounting.chain_settings:DepositSettings",
        "light",
        "deposit_metrics_port",
    ),
    "ledger": Process(
        "far-mesh-ledger-reconcile",
        "ledger",
        "ledger",
        "accounting.chain_settings:ReconcileSettings",
        "light",
        "ledger_metrics_port",
    ),
    # The Procfile's `far-mesh accounting --migrate` runs as two containers of the accounting pod (`manifest_command`).
    "migrate": Process(
        "far-mesh-accounting", "migrate", "accounting", "schema.settings:LedgerSettings", "light", None, init=True
    ),
    "verifier": Process(
        "far-mesh-verifier",
        "verifier",
        "verifier",
        "verifier.settings:VerifierSettings",
        "mesh",
        "verifier_metrics_port",
    ),
}
"""Every far-mesh process the manifests run; a container missing here fails `test_every_container_is_known`."""

HELPER_CONTAINERS = {
    *((f"far-mesh-{name}", "wait-for-migrations") for name in ("gateway", "payouts", "deposits", "verifier")),
    ("far-mesh-ledger-reconcile", "wait-for-migrations"),
    ("far-mesh-dht", "dht"),
}
"""Containers that run no Procfile line: the migration waits (`far-mesh migrate --wait`), and the DHT bootstrap
(`far-mesh dht`, whose identity path only exists in the pod)."""

COMMAND_ROOMS = {
    "gateway": "gateway",
    "worker": "workers",
    "accounting": "accounting",
    "migrate": "schema",
    "dht": "mesh",
    "portal": "portal",
    "payouts": "payouts",
    "deposits": "accounting",
    "ledger": "accounting",
    "verifier": "verifier",
}
"""Which room registers each subcommand the images and manifests run."""


def procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return {
        name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines if line.strip())
    }


MIGRATE_FLAG = "--migrate"


def manifest_command(name: str) -> str:
    """The command the manifests run for `PROCESSES[name]`: its Procfile line, except that the accounting line's
    `--migrate` is the accounting pod's init container `migrate` (`far-mesh migrate`), ahead of the consumer."""
    argv = shlex.split(procfile()[PROCESSES[name].procfile])
    if name == "migrate":
        assert MIGRATE_FLAG in argv, "the Procfile's accounting line no longer migrates"
        return "far-mesh migrate"
    return " ".join(arg for arg in argv if arg != MIGRATE_FLAG)


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return objects(docs, "Deployment") + objects(docs, "StatefulSet") + objects(docs, "Job")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    containers: list[dict[str, Any]] = spec.get("initContainers", []) + spec["containers"]
    return containers


def container_of(docs: list[dict[str, Any]], workload_name: str, container_name: str) -> dict[str, Any]:
    workload = next(w for w in workloads(docs) if w["metadata"]["name"] == workload_name)
    [found] = [c for c in all_containers(workload) if c["name"] == container_name]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def container_env(
    docs: list[dict[str, Any]], container: dict[str, Any], secrets: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom in order (later wins), then env in order, with
    `$(NAME)` in a value expanded from the variables defined before it, as the kubelet does."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), variable["value"])
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, f"{name} reads Secret {ref['name']}, which the template lacks"
            data = secrets[ref["name"]]["stringData"]
            assert ref["key"] in data or ref.get("optional"), f"{name}: Secret {ref['name']} has no key {ref['key']}"
            if ref["key"] in data:
                env[name] = data[ref["key"]]
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[name] = one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            env[name] = f"<{name} from the downward API>"
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


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)  # type: ignore[arg-type]


def require_room_commands(command: str) -> None:
    """A room still being written has no commands.py yet: say so instead of failing the whole suite."""
    room = COMMAND_ROOMS[command]
    if importlib.util.find_spec(f"{room}.commands") is None:
        pytest.skip(f"{room}/commands.py does not exist yet, so `far-mesh {command}` cannot be checked")

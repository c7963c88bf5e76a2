"""The manifests against the code: commands, settings, ports and Redis keys come from one source, or fail here.

Each workload's environment is rebuilt as Kubernetes would give it (ConfigMaps, then the Secret template's
placeholders, then `env`) and handed to that process's own settings class.
"""

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from arq.constants import default_queue_name

from protocol import keys
from protocol.settings import CommonSettings
from tests.deploy.manifests import (
    DOCKERFILES,
    PROCESSES,
    container_env,
    dockerfile,
    exec_form,
    one,
    pod_spec,
    procfile,
    settings_env_names,
    workloads,
)
from tests.deploy.test_dockerfiles import require_room_commands, subcommands
from tests.fixtures.deploy import KUSTOMIZATIONS
from workers import metrics as worker_metrics

Docs = dict[str, list[dict[str, Any]]]

IMAGE_ENV = {
    word.split("=")[0]
    for path in DOCKERFILES.values()
    for i in dockerfile(path)
    if i.name == "ENV"
    for word in i.args.split()
}
"""Variables the images themselves define (PATH, HF_HOME, FAR_MESH_HEALTHCHECK_URL...): not settings."""


def settings_for(
    rendered: Docs, kustomization: str, workload_name: str, secret: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[CommonSettings, dict[str, str]]:
    """The process's settings, validated from exactly the environment its container would get."""
    docs = rendered[kustomization]
    workload = next(w for w in workloads(docs) if w["metadata"]["name"] == workload_name)
    env = container_env(docs, pod_spec(workload)["containers"][0], secret)
    cls = PROCESSES[workload_name].settings_class()
    for name in settings_env_names(cls):
        monkeypatch.delenv(name, raising=False)  # nothing from the test machine may fill a gap
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls.from_env(), env


def container(docs: list[dict[str, Any]], workload_name: str) -> dict[str, Any]:
    workload = next(w for w in workloads(docs) if w["metadata"]["name"] == workload_name)
    only: dict[str, Any] = pod_spec(workload)["containers"][0]
    return only


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_workload_is_a_known_process_running_its_procfile_command(rendered: Docs, kustomization: str) -> None:
    lines = procfile()
    names = {w["metadata"]["name"] for w in workloads(rendered[kustomization])}
    assert names == set(PROCESSES)
    for name, process in PROCESSES.items():
        command = container(rendered[kustomization], name)["command"]
        assert " ".join(command) == lines[process.procfile], (
            f"{name} runs {command}, Procfile says {lines[process.procfile]}"
        )


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_every_subcommand_the_manifests_run_exists(rendered: Docs, name: str) -> None:
    subcommand = container(rendered["base"], name)["command"][1]
    require_room_commands(subcommand)
    assert subcommand in subcommands()


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_each_workload_uses_the_image_built_for_it(rendered: Docs, image: str) -> None:
    for name, process in PROCESSES.items():
        reference = container(rendered["base"], name)["image"]
        assert (f"far-mesh-{image}" in reference) == (process.image == image), f"{name} runs {reference}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_each_process_accepts_the_environment_its_manifest_gives_it(
    rendered: Docs, kustomization: str, name: str, secret_template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = settings_for(rendered, kustomization, name, secret_template, monkeypatch)
    known = settings_env_names(PROCESSES[name].settings_class()) | IMAGE_ENV | set(secret_template["stringData"])
    unknown = sorted(set(env) - known)
    assert not unknown, f"{name} is given variables its settings class does not read (renamed?): {unknown}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_ports_probes_and_scrape_annotations_follow_the_settings(
    rendered: Docs, kustomization: str, secret_template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[kustomization]
    ports = {
        name: getattr(settings_for(rendered, kustomization, name, secret_template, monkeypatch)[0], process.port_field)
        for name, process in PROCESSES.items()
        if process.port_field
    }
    for name, port in ports.items():
        deployment = one(docs, "Deployment", name)
        declared = container(docs, name)["ports"]
        assert [p["containerPort"] for p in declared] == [port], name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    service = one(docs, "Service", "far-mesh-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == container(docs, "far-mesh-gateway")["ports"][0]["name"]


def default_port(name: str) -> int:
    field = PROCESSES[name].port_field
    assert field is not None
    port: int = PROCESSES[name].settings_class().model_fields[field].default
    return port


@pytest.mark.parametrize("name", [name for name, process in PROCESSES.items() if process.port_field])
def test_each_image_exposes_the_default_port_of_every_process_it_runs(name: str) -> None:
    path = DOCKERFILES[PROCESSES[name].image]
    exposed = {int(p) for i in dockerfile(path) if i.name == "EXPOSE" for p in i.args.split()}
    assert default_port(name) in exposed


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_each_image_healthcheck_targets_the_port_of_the_process_it_runs_by_default(image: str) -> None:
    instructions = dockerfile(DOCKERFILES[image])
    subcommand = exec_form(next(i.args for i in reversed(instructions) if i.name == "CMD"))[0]
    [name] = [
        n for n, p in PROCESSES.items() if p.image == image and procfile()[p.procfile] == f"far-mesh {subcommand}"
    ]
    url = re.search(r"FAR_MESH_HEALTHCHECK_URL=(\S+)", " ".join(i.args for i in instructions if i.name == "ENV"))
    assert url is not None
    assert urlsplit(url.group(1)).port == default_port(name)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_grace_periods_cover_each_processes_shutdown(
    rendered: Docs, kustomization: str, secret_template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[kustomization]
    gateway, _ = settings_for(rendered, kustomization, "far-mesh-gateway", secret_template, monkeypatch)
    spec = pod_spec(one(docs, "Deployment", "far-mesh-gateway"))
    pre_stop = container(docs, "far-mesh-gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = gateway.gateway_shutdown_drain_s  # type: ignore[attr-defined]
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    worker, _ = settings_for(rendered, kustomization, "far-mesh-worker", secret_template, monkeypatch)
    # Hand-back takes one lease TTL; the rest is room for Petals sessions to close.
    lease = worker.far_mesh_lease_ttl_s  # type: ignore[attr-defined]
    assert pod_spec(one(docs, "Deployment", "far-mesh-worker"))["terminationGracePeriodSeconds"] >= 10 * lease + 60
    accounting, _ = settings_for(rendered, kustomization, "far-mesh-accounting", secret_template, monkeypatch)
    retry = accounting.accounting_retry_max_s  # type: ignore[attr-defined]
    assert pod_spec(one(docs, "Deployment", "far-mesh-accounting"))["terminationGracePeriodSeconds"] >= 3 * retry


def triggers(docs: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    scaled = one(docs, "ScaledObject", target)
    found: list[dict[str, Any]] = scaled["spec"]["triggers"]
    return found


def test_accounting_scales_on_the_exact_usage_stream_and_group_the_code_uses(
    rendered: Docs, secret_template: dict[str, Any]
) -> None:
    [trigger] = triggers(rendered["overlays/production"], "far-mesh-accounting")
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert metadata["stream"] == keys.USAGE_STREAM
    assert metadata["consumerGroup"] == keys.USAGE_CONSUMER_GROUP
    assert "lagCount" in metadata  # the group's lag, not its pending count or the stream's length
    redis_url = urlsplit(secret_template["stringData"]["REDIS_URL"])
    host, _, port = metadata["address"].partition(":")
    assert host.split(".")[0] == redis_url.hostname and int(port) == (redis_url.port or 6379)
    assert metadata["databaseIndex"] == (redis_url.path.strip("/") or "0")
    auth = one(rendered["overlays/production"], "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= set(secret_template["stringData"])


def test_workers_scale_on_the_queue_depth_metric_the_workers_export(
    rendered: Docs, secret_template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["overlays/production"]
    [trigger] = triggers(docs, "far-mesh-worker")
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    exported = {metric.name for metric in worker_metrics.REGISTRY.collect()}
    used = set(re.findall(r"\b(far_mesh_worker_\w+)\b", query))
    assert used and used <= exported, f"the query reads {used}; the workers export {exported}"
    assert set(re.findall(r"by \((\w+)\)", query)) <= set(worker_metrics.QUEUE_DEPTH._labelnames)
    assert f'namespace="{one(docs, "Namespace", "far-mesh")["metadata"]["name"]}"' in query
    worker, _ = settings_for(rendered, "overlays/production", "far-mesh-worker", secret_template, monkeypatch)
    assert int(trigger["metadata"]["threshold"]) == worker.far_mesh_worker_max_jobs  # type: ignore[attr-defined]


def test_no_trigger_reads_an_arq_queue_as_a_list(rendered: Docs) -> None:
    # arq queues are sorted sets: KEDA's redis list scaler (LLEN) would fail on them with WRONGTYPE.
    assert keys.queue_for("m").startswith(default_queue_name)
    for kustomization in KUSTOMIZATIONS:
        for scaled in [d for d in rendered[kustomization] if d["kind"] == "ScaledObject"]:
            for trigger in scaled["spec"]["triggers"]:
                if trigger["type"] in ("redis", "redis-cluster", "redis-sentinel"):
                    assert not trigger["metadata"].get("listName", "").startswith(keys.ARQ_QUEUE_PREFIX)

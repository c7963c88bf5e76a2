"""The manifests against the code: commands, settings, ports and Redis keys come from one source, or fail here.

Each process's environment is rebuilt as Kubernetes would give it (ConfigMaps, then `env` with the Secret
template's values and `$(NAME)` expanded) and handed to that process's own settings class.
"""

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from arq.constants import default_queue_name

from protocol import keys
from protocol.settings import CommonSettings, SettingsError
from tests.deploy.manifests import (
    DOCKERFILES,
    HELPER_CONTAINERS,
    PROCESSES,
    all_containers,
    container_env,
    container_of,
    dockerfile,
    exec_form,
    manifest_command,
    one,
    pod_spec,
    require_room_commands,
    settings_env_names,
    subcommands,
    workloads,
)
from tests.fixtures.deploy import KUSTOMIZATIONS
from workers import metrics as worker_metrics

Docs = dict[str, list[dict[str, Any]]]
Secrets = dict[str, dict[str, Any]]

IMAGE_ENV = {
    word.split("=")[0]
    for path in DOCKERFILES.values()
    for i in dockerfile(path)
    if i.name == "ENV"
    for word in i.args.split()
}
"""Variables the images themselves define (PATH, HF_HOME, FAR_MESH_HEALTHCHECK_URL...): not settings."""
LIBRARY_ENV = {"HUGGING_FACE_HUB_TOKEN", "FAR_MESH_DHT_PEER_ID"}
"""Read by a library (huggingface-hub), or only the input of another variable's `$(...)` (the DHT's peer id)."""
A_PEER_ID = "QmYY6kpyEuikpQSwe6ENjMRbDBBKhSQoCmFL2Au9E5fN7S"


def configured(secrets: Secrets) -> Secrets:
    """The template with what an operator must fill in filled: a real-looking DHT peer id."""
    filled = {name: {**secret, "stringData": dict(secret["stringData"])} for name, secret in secrets.items()}
    filled["far-mesh-dht"]["stringData"]["peer-id"] = A_PEER_ID
    return filled


def env_of(rendered: Docs, kustomization: str, name: str, secrets: Secrets) -> dict[str, str]:
    process = PROCESSES[name]
    docs = rendered[kustomization]
    return container_env(docs, container_of(docs, process.workload, process.container), secrets)


def settings_for(
    rendered: Docs, kustomization: str, name: str, secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> tuple[CommonSettings, dict[str, str]]:
    """The process's settings, validated from exactly the environment its container would get."""
    env = env_of(rendered, kustomization, name, secrets)
    cls = PROCESSES[name].settings_class()
    for variable in settings_env_names(cls):
        monkeypatch.delenv(variable, raising=False)  # nothing from the test machine may fill a gap
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return cls.from_env(), env


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_is_a_known_process_running_its_procfile_command(rendered: Docs, kustomization: str) -> None:
    docs = rendered[kustomization]
    found = {(w["metadata"]["name"], c["name"]) for w in workloads(docs) for c in all_containers(w)}
    assert found == {(p.workload, p.container) for p in PROCESSES.values()} | HELPER_CONTAINERS
    for name, process in PROCESSES.items():
        command = container_of(docs, process.workload, process.container)["command"]
        expected = manifest_command(name)
        assert " ".join(command) == expected, f"{name} runs {command}, the Procfile says {expected}"
        workload = one(docs, "Deployment", process.workload)
        in_init = process.container in {c["name"] for c in pod_spec(workload).get("initContainers", [])}
        assert in_init == process.init, name


WAITING_FOR_MIGRATIONS = ("gateway", "payouts", "deposits", "ledger-reconcile", "verifier")
"""What reads the ledger and starts beside accounting on an upgrade: each waits for the migrations of its image
(the payer once halted for good on a table a migration still to come creates)."""


@pytest.mark.parametrize("name", WAITING_FOR_MIGRATIONS)
def test_migrations_run_before_the_consumer_and_the_ledgers_readers_wait_for_them(rendered: Docs, name: str) -> None:
    docs = rendered["base"]
    assert not [w for w in workloads(docs) if w["kind"] == "Job"], "a Job's immutable template blocks upgrades"
    accounting = pod_spec(one(docs, "Deployment", "far-mesh-accounting"))
    assert [c["name"] for c in accounting["initContainers"]] == ["migrate"]
    reader = pod_spec(one(docs, "Deployment", f"far-mesh-{name}"))
    [wait] = reader["initContainers"]
    assert wait["name"] == "wait-for-migrations" and wait["command"] == ["far-mesh", "migrate", "--wait"]
    assert wait["image"] == reader["containers"][0]["image"], "it must wait for the migrations of its own image"


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_every_subcommand_the_manifests_run_exists(rendered: Docs, name: str) -> None:
    process = PROCESSES[name]
    subcommand = container_of(rendered["base"], process.workload, process.container)["command"][1]
    require_room_commands(subcommand)
    assert subcommand in subcommands()


def test_the_dht_bootstrap_runs_far_mesh_dht_with_the_identity_from_its_secret(rendered: Docs) -> None:
    dht = one(rendered["base"], "StatefulSet", "far-mesh-dht")
    [container] = pod_spec(dht)["containers"]
    command = container["command"]
    assert command[:2] == ["far-mesh", "dht"] and "dht" in subcommands()
    identity = command[command.index("--identity") + 1]
    [mount] = [m for m in container["volumeMounts"] if identity.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in pod_spec(dht)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "far-mesh-dht" and mount["readOnly"] is True
    assert [item["path"] for item in volume["secret"]["items"]] == [identity.rsplit("/", 1)[1]]
    port = int(command[command.index("--port") + 1])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    # It checks its key against the peer id the workers dial, read from the same Secret.
    assert command[command.index("--expect-peer-id") + 1] == "$(FAR_MESH_DHT_PEER_ID)"
    [peer_id] = [v for v in container["env"] if v["name"] == "FAR_MESH_DHT_PEER_ID"]
    assert peer_id["valueFrom"]["secretKeyRef"] == {"name": "far-mesh-dht", "key": "peer-id"}
    worker = container_of(rendered["base"], "far-mesh-worker", "worker")
    assert peer_id in worker["env"]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_each_container_uses_the_image_built_for_it(rendered: Docs, image: str) -> None:
    for name, process in PROCESSES.items():
        reference = container_of(rendered["base"], process.workload, process.container)["image"]
        assert (f"far-mesh-{image}" in reference) == (process.image == image), f"{name} runs {reference}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_each_process_accepts_the_environment_its_manifest_gives_it(
    rendered: Docs, kustomization: str, name: str, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = settings_for(rendered, kustomization, name, configured(secret_template), monkeypatch)
    known = settings_env_names(PROCESSES[name].settings_class()) | IMAGE_ENV | LIBRARY_ENV
    unknown = sorted(set(env) - known)
    assert not unknown, f"{name} is given variables its settings class does not read (renamed?): {unknown}"


def test_a_worker_given_the_templates_placeholder_peer_id_refuses_to_start_naming_the_variable(
    rendered: Docs, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingsError, match=r"FAR_MESH_DHT_BOOTSTRAP: .*placeholder"):
        settings_for(rendered, "overlays/production", "worker", secret_template, monkeypatch)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_workers_bootstrap_from_the_dht_statefulset_by_its_stable_name(
    rendered: Docs, kustomization: str, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[kustomization]
    worker, _ = settings_for(rendered, kustomization, "worker", configured(secret_template), monkeypatch)
    dht = one(docs, "StatefulSet", "far-mesh-dht")
    port = dht["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    stable_name = f"{dht['metadata']['name']}-0.{dht['spec']['serviceName']}"
    assert worker.initial_peers == [f"/dns4/{stable_name}/tcp/{port}/p2p/{A_PEER_ID}"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_ports_probes_and_scrape_annotations_follow_the_settings(
    rendered: Docs, kustomization: str, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[kustomization]
    secrets = configured(secret_template)
    for name, process in PROCESSES.items():
        if not process.port_field:
            continue
        settings, _ = settings_for(rendered, kustomization, name, secrets, monkeypatch)
        metrics_port = getattr(settings, "gateway_metrics_port", None) or getattr(settings, process.port_field)
        declared = {p["name"]: p["containerPort"] for p in container_of(docs, process.workload, name)["ports"]}
        assert declared["metrics"] == metrics_port, name
        if name == "gateway":
            assert declared["http"] == settings.gateway_port  # type: ignore[attr-defined]
        annotations = one(docs, "Deployment", process.workload)["spec"]["template"]["metadata"]["annotations"]
        assert (
            annotations["prometheus.io/port"] == str(metrics_port) and annotations["prometheus.io/path"] == "/metrics"
        )


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
    [name] = [n for n, p in PROCESSES.items() if p.image == image and manifest_command(n) == f"far-mesh {subcommand}"]
    url = re.search(r"FAR_MESH_HEALTHCHECK_URL=(\S+)", " ".join(i.args for i in instructions if i.name == "ENV"))
    assert url is not None
    assert urlsplit(url.group(1)).port == default_port(name)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_grace_periods_cover_each_processes_shutdown(
    rendered: Docs, kustomization: str, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[kustomization]
    secrets = configured(secret_template)
    gateway, _ = settings_for(rendered, kustomization, "gateway", secrets, monkeypatch)
    spec = pod_spec(one(docs, "Deployment", "far-mesh-gateway"))
    pre_stop = container_of(docs, "far-mesh-gateway", "gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = gateway.gateway_shutdown_drain_s  # type: ignore[attr-defined]
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    worker, _ = settings_for(rendered, kustomization, "worker", secrets, monkeypatch)
    # Hand-back takes one lease TTL; the rest is room for Petals sessions to close.
    lease = worker.worker_lease_ttl_s  # type: ignore[attr-defined]
    assert pod_spec(one(docs, "Deployment", "far-mesh-worker"))["terminationGracePeriodSeconds"] >= 10 * lease + 60
    accounting, _ = settings_for(rendered, kustomization, "accounting", secrets, monkeypatch)
    retry = accounting.accounting_retry_max_s  # type: ignore[attr-defined]
    assert pod_spec(one(docs, "Deployment", "far-mesh-accounting"))["terminationGracePeriodSeconds"] >= 3 * retry


def triggers(docs: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    scaled = one(docs, "ScaledObject", target)
    found: list[dict[str, Any]] = scaled["spec"]["triggers"]
    return found


def test_accounting_scales_on_the_exact_usage_stream_and_group_the_code_uses(
    rendered: Docs, secret_template: Secrets
) -> None:
    docs = rendered["overlays/production"]
    [trigger] = triggers(docs, "far-mesh-accounting")
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert metadata["stream"] == keys.USAGE_STREAM
    assert metadata["consumerGroup"] == keys.USAGE_CONSUMER_GROUP
    assert "lagCount" in metadata  # the group's lag, not its pending count or the stream's length
    redis = secret_template["far-mesh-redis"]["stringData"]
    assert metadata["databaseIndex"] == (urlsplit(redis["REDIS_URL"]).path.strip("/") or "0")


def test_the_accounting_trigger_names_no_redis_host_and_reads_the_address_beside_redis_url(
    rendered: Docs, secret_template: Secrets
) -> None:
    docs = rendered["overlays/production"]
    [trigger] = triggers(docs, "far-mesh-accounting")
    assert not {"address", "host", "port", "addressFromEnv", "hostFromEnv"} & set(trigger["metadata"])
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"address", "password"}
    secret = secret_template[refs["address"]["name"]]["stringData"]
    url = urlsplit(secret["REDIS_URL"])
    assert secret[refs["address"]["key"]] == f"{url.hostname}:{url.port or 6379}"
    assert secret[refs["password"]["key"]] == url.password
    # The same Secret the processes take REDIS_URL from: one place to change Redis.
    gateway = container_of(docs, "far-mesh-gateway", "gateway")
    [redis_url] = [v for v in gateway["env"] if v["name"] == "REDIS_URL"]
    assert redis_url["valueFrom"]["secretKeyRef"]["name"] == refs["address"]["name"]


def test_workers_scale_per_model_on_the_queue_depth_metric_the_workers_export(
    rendered: Docs, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["overlays/production"]
    worker, _ = settings_for(rendered, "overlays/production", "worker", configured(secret_template), monkeypatch)
    exported = {metric.name for metric in worker_metrics.REGISTRY.collect()}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for trigger in triggers(docs, "far-mesh-worker"):
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        used = set(re.findall(r"\b(far_mesh_worker_\w+)\b", query))
        assert used and used <= exported, f"the query reads {used}; the workers export {exported}"
        assert "sum" not in query, "summing over models over-provisions: one trigger per model"
        assert f'namespace="{one(docs, "Namespace", "far-mesh")["metadata"]["name"]}"' in query
        [model] = re.findall(r'model_id="([^"]+)"', query)
        by_model.setdefault(model, []).append(trigger)
        # A worker runs WORKER_MAX_JOBS jobs of each model: that model's depth over it is its replicas.
        assert int(trigger["metadata"]["threshold"]) == worker.worker_max_jobs  # type: ignore[attr-defined]
    assert "model_id" in worker_metrics.QUEUE_DEPTH._labelnames
    served = [m.model_id for m in worker.served_models]  # type: ignore[attr-defined]
    assert sorted(by_model) == sorted(served) and all(len(t) == 1 for t in by_model.values())


def test_no_trigger_reads_an_arq_queue_as_a_list(rendered: Docs) -> None:
    # arq queues are sorted sets: KEDA's redis list scaler (LLEN) would fail on them with WRONGTYPE.
    assert keys.queue_for("m").startswith(default_queue_name)
    for kustomization in KUSTOMIZATIONS:
        for scaled in [d for d in rendered[kustomization] if d["kind"] == "ScaledObject"]:
            for trigger in scaled["spec"]["triggers"]:
                if trigger["type"] in ("redis", "redis-cluster", "redis-sentinel"):
                    assert not trigger["metadata"].get("listName", "").startswith(keys.ARQ_QUEUE_PREFIX)


def test_workers_get_the_hugging_face_token_for_gated_models_from_its_secret(
    rendered: Docs, secret_template: Secrets
) -> None:
    worker = container_of(rendered["base"], "far-mesh-worker", "worker")
    [token] = [v for v in worker["env"] if v["name"] == "HUGGING_FACE_HUB_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["key"] in secret_template[ref["name"]]["stringData"]
    assert ref["optional"] is True, "an open model needs no token: the Secret must not be required"
    assert "HUGGING_FACE_HUB_TOKEN" in env_of(rendered, "base", "worker", secret_template)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_worker_samples_spot_checks_with_the_one_secret_of_the_fleet(
    rendered: Docs, kustomization: str, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, env = settings_for(rendered, kustomization, "worker", configured(secret_template), monkeypatch)
    shared = secret_template["far-mesh-verification"]["stringData"]["WORKER_VERIFY_SAMPLING_SECRET"]
    assert env["WORKER_VERIFY_SAMPLING_SECRET"] == shared
    secret = getattr(worker, "worker_verify_sampling_secret", None)
    assert secret is not None and secret.get_secret_value() == shared, "without it each replica samples alone"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_portal_shows_buyers_the_deposit_contract_and_chain_the_watcher_credits(
    rendered: Docs, kustomization: str, secret_template: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = configured(secret_template)
    portal, _ = settings_for(rendered, kustomization, "portal", secrets, monkeypatch)
    watcher, _ = settings_for(rendered, kustomization, "deposits", secrets, monkeypatch)
    payer, _ = settings_for(rendered, kustomization, "payouts", secrets, monkeypatch)
    shown = (portal.chain_id, portal.deposit_contract_address, portal.chain_token_address)  # type: ignore[attr-defined]
    credited = (watcher.chain_id, watcher.deposit_contract_address)  # type: ignore[attr-defined]
    assert shown == (*credited, payer.chain_token_address)  # type: ignore[attr-defined]

"""Every rendered manifest against its schema (CRDs included), and the namespaces, selectors and labels that make
the objects find each other once applied."""

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.deploy.manifests import REPO, all_containers, objects, one, pod_labels, pod_spec, selects, workloads
from tests.fixtures.deploy import K8S, KUSTOMIZATIONS

Docs = dict[str, list[dict[str, Any]]]

NAMESPACE = "far-mesh"
SCHEMAS = REPO / "deploy" / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.yaml",
}
"""The custom resources the manifests may use, each with the CRD schema kept in deploy/schemas/."""
CLUSTER_SCOPED = {"Namespace"}
KUBE_PROMETHEUS_STACK_RELEASE = "kube-prometheus-stack"
"""The Helm release name kube-prometheus-stack's default podMonitorSelector asks for (`release: <name>`)."""


def is_custom(doc: dict[str, Any]) -> bool:
    return bool(doc["apiVersion"].split("/")[0].endswith((".sh", ".com")))


@pytest.fixture(autouse=True, scope="module")
def _schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads and parses its schema files, a definitions file of megabytes among them, for every
    object it validates: here each file is read once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            kubernetes_validate.utils, "schema_contents", functools.cache(kubernetes_validate.utils.schema_contents)
        )
        yield


def validate(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def crd_validator(doc: dict[str, Any]) -> jsonschema.Draft7Validator:
    key = (doc["apiVersion"], doc["kind"])
    assert key in CRD_SCHEMAS, f"{doc['kind']} {doc['apiVersion']} has no schema in deploy/schemas/"
    schema = yaml.safe_load((SCHEMAS / CRD_SCHEMAS[key]).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in crd_validator(doc).iter_errors(doc)]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_built_in_object_matches_the_kubernetes_schema(rendered: Docs, kustomization: str) -> None:
    built_in = [doc for doc in rendered[kustomization] if not is_custom(doc)]
    assert len(built_in) >= 15
    for doc in built_in:
        validate(doc)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_custom_resource_matches_its_crd_schema(rendered: Docs, kustomization: str) -> None:
    for doc in [doc for doc in rendered[kustomization] if is_custom(doc)]:
        assert not crd_errors(doc), f"{doc['kind']} {doc['metadata']['name']}: {crd_errors(doc)}"


@pytest.mark.parametrize(
    ("kind", "name", "mistake", "complaint"),
    [
        ("ScaledObject", "far-mesh-worker", lambda d: d["spec"].update(minReplicas=1), "minReplicas"),
        ("ScaledObject", "far-mesh-worker", lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=16), "16"),
        ("ScaledObject", "far-mesh-accounting", lambda d: d["spec"]["triggers"][0].pop("metadata"), "metadata"),
        ("TriggerAuthentication", "far-mesh-redis", lambda d: d["spec"]["secretTargetRef"][0].pop("key"), "key"),
        (
            "PodMonitor",
            "far-mesh-worker",
            lambda d: d["spec"]["podMetricsEndpoints"][0].update(intervall="9s"),
            "inter",
        ),
        ("PodMonitor", "far-mesh-worker", lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="15"), "15"),
    ],
)
def test_the_crd_schemas_reject_what_the_api_server_would(
    rendered: Docs, kind: str, name: str, mistake: Any, complaint: str
) -> None:
    doc = copy.deepcopy(one(rendered["overlays/production"], kind, name))
    assert not crd_errors(doc)
    mistake(doc)
    assert any(complaint in error for error in crd_errors(doc)), crd_errors(doc)


def test_the_schema_check_rejects_a_misspelt_field(rendered: Docs) -> None:
    service = dict(one(rendered["base"], "Service", "far-mesh-gateway"))
    service["spec"] = {**service["spec"], "prots": service["spec"]["ports"]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, latest_version(), strict=True)


def test_the_secret_template_matches_the_schema_and_holds_only_placeholders(
    secret_template: dict[str, dict[str, Any]],
) -> None:
    for name, secret in secret_template.items():
        validate(secret)
        assert secret["metadata"]["namespace"] == NAMESPACE, name
        for key, value in secret["stringData"].items():
            # REDIS_ADDRESS is REDIS_URL's host:port (test_drift checks they agree), not a credential.
            assert "CHANGE_ME" in value or key == "REDIS_ADDRESS", f"{name}/{key} holds a value, not a placeholder"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_kustomization_ships_a_secret(rendered: Docs, kustomization: str) -> None:
    # Applying a rendered Secret would overwrite the real one with placeholders.
    assert not objects(rendered[kustomization], "Secret")


def test_the_secret_template_is_outside_every_kustomization() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        assert "secret.template" not in path.read_text(), path


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_namespaced_object_lands_in_the_far_mesh_namespace(rendered: Docs, kustomization: str) -> None:
    # Components add objects after the base's namespace transformer ran: each overlay must set it again, or
    # `kubectl apply -k` puts ScaledObjects and PodMonitors wherever the context points, where they find nothing.
    docs = rendered[kustomization]
    one(docs, "Namespace", NAMESPACE)
    misplaced = [
        f"{doc['kind']}/{doc['metadata']['name']} in {doc['metadata'].get('namespace')}"
        for doc in docs
        if doc["kind"] not in CLUSTER_SCOPED and doc["metadata"].get("namespace") != NAMESPACE
    ]
    assert not misplaced


def test_the_production_overlay_places_its_components_objects_in_the_namespace(rendered: Docs) -> None:
    docs = rendered["overlays/production"]
    for kind in ("ScaledObject", "TriggerAuthentication", "PodMonitor"):
        assert objects(docs, kind), kind
        assert {doc["metadata"]["namespace"] for doc in objects(docs, kind)} == {NAMESPACE}, kind


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_workload_selects_its_own_pods(rendered: Docs, kustomization: str) -> None:
    for workload in workloads(rendered[kustomization]):
        if workload["kind"] != "Job":
            assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels(workload)), workload["metadata"]


def selected(docs: list[dict[str, Any]], selector: dict[str, str]) -> list[str]:
    return [w["metadata"]["name"] for w in workloads(docs) if selects(selector, pod_labels(w))]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_service_and_disruption_budget_selects_exactly_one_workload_on_a_port_it_has(
    rendered: Docs, kustomization: str
) -> None:
    docs = rendered[kustomization]
    for service in objects(docs, "Service"):
        [name] = selected(docs, service["spec"]["selector"])
        ports = {p["name"] for c in all_containers(one(docs, *kind_of(docs, name))) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']} targets {port['targetPort']}"
    for budget in objects(docs, "PodDisruptionBudget"):
        assert len(selected(docs, budget["spec"]["selector"]["matchLabels"])) == 1, budget["metadata"]["name"]


def kind_of(docs: list[dict[str, Any]], name: str) -> tuple[str, str]:
    [workload] = [w for w in workloads(docs) if w["metadata"]["name"] == name]
    return workload["kind"], name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_dht_bootstrap_has_the_headless_service_its_stable_name_needs(rendered: Docs, kustomization: str) -> None:
    docs = rendered[kustomization]
    dht = one(docs, "StatefulSet", "far-mesh-dht")
    service = one(docs, "Service", dht["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert selected(docs, service["spec"]["selector"]) == ["far-mesh-dht"]
    assert dht["spec"]["replicas"] == 1


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_workload_is_bounded_probed_and_unprivileged(rendered: Docs, kustomization: str) -> None:
    for workload in workloads(rendered[kustomization]):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in all_containers(workload):
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        for container in spec["containers"]:
            name = f"{workload['metadata']['name']}/{container['name']}"
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = container[probe].get("httpGet") or container[probe]["tcpSocket"]
                assert action["port"] in ports, f"{name} {probe}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_deployment_has_a_disruption_budget_and_one_autoscaler_at_most(
    rendered: Docs, kustomization: str
) -> None:
    docs = rendered[kustomization]
    for deployment in objects(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        budgets = [
            b
            for b in objects(docs, "PodDisruptionBudget")
            if selects(b["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(budgets) == 1, f"{name} has {len(budgets)} PodDisruptionBudgets"
        hpas = [h for h in objects(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
        scaled = [s for s in objects(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
        # KEDA makes its own HPA for a ScaledObject; a second one would fight it.
        assert len(hpas) + len(scaled) <= 1, f"{name} has {len(hpas)} HPAs and {len(scaled)} ScaledObjects"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_payer_runs_alone_and_is_replaced_not_rolled(rendered: Docs, kustomization: str) -> None:
    # One treasury, one nonce sequence: a second pod would only wait for the advisory lock, and a rolling update
    # would start the new payer while the old one still holds it.
    docs = rendered[kustomization]
    payer = one(docs, "Deployment", "far-mesh-payouts")
    assert payer["spec"]["replicas"] == 1
    assert payer["spec"]["strategy"] == {"type": "Recreate"}
    targets = {o["spec"]["scaleTargetRef"]["name"] for o in objects(docs, "HorizontalPodAutoscaler")}
    targets |= {o["spec"]["scaleTargetRef"]["name"] for o in objects(docs, "ScaledObject")}
    assert "far-mesh-payouts" not in targets, "an autoscaler would add payers that only wait for the lock"


def test_the_gateway_is_autoscaled_on_cpu_in_every_kustomization(rendered: Docs) -> None:
    for kustomization in KUSTOMIZATIONS:
        hpa = one(rendered[kustomization], "HorizontalPodAutoscaler", "far-mesh-gateway")
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_production_autoscales_workers_and_accounting_with_keda(rendered: Docs) -> None:
    docs = rendered["overlays/production"]
    deployments = {d["metadata"]["name"] for d in objects(docs, "Deployment")}
    assert (
        {s["spec"]["scaleTargetRef"]["name"] for s in objects(docs, "ScaledObject")}
        == {
            "far-mesh-worker",
            "far-mesh-accounting",
        }
        <= deployments
    )
    for scaled in objects(docs, "ScaledObject"):
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        for trigger in scaled["spec"]["triggers"]:
            if "authenticationRef" in trigger:
                one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_the_trigger_authentication_reads_keys_the_secret_template_has(
    rendered: Docs, secret_template: dict[str, dict[str, Any]]
) -> None:
    for auth in objects(rendered["overlays/production"], "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secret_template[ref["name"]]["stringData"], ref


def test_every_deployment_is_scraped_by_one_podmonitor_on_a_port_it_has(rendered: Docs) -> None:
    docs = rendered["overlays/production"]
    monitors = objects(docs, "PodMonitor")
    exporting = [
        d
        for d in objects(docs, "Deployment")
        if "prometheus.io/port" in d["spec"]["template"]["metadata"].get("annotations", {})
    ]
    assert len(monitors) == len(exporting) >= 3
    for deployment in exporting:
        mine = [m for m in monitors if selects(m["spec"]["selector"]["matchLabels"], pod_labels(deployment))]
        assert len(mine) == 1, deployment["metadata"]["name"]
        ports = {p["name"] for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in mine[0]["spec"]["podMetricsEndpoints"]} <= ports


def test_podmonitors_carry_the_label_a_default_kube_prometheus_stack_selects(rendered: Docs) -> None:
    for monitor in objects(rendered["overlays/production"], "PodMonitor"):
        assert monitor["metadata"].get("labels", {}).get("release") == KUBE_PROMETHEUS_STACK_RELEASE, monitor


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_component_has_its_own_network_policy_behind_a_default_deny(rendered: Docs, kustomization: str) -> None:
    docs = rendered[kustomization]
    policies = objects(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        mine = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels(workload))]
        assert len(mine) == 1, f"{name} is selected by {len(mine)} component NetworkPolicies"
        policy = mine[0]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, name
        ports = {p["name"] for c in all_containers(workload) for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                assert port["port"] in ports, f"{name}'s policy admits {port['port']}, which its pod lacks"
    for policy in policies:
        if policy not in deny:
            assert selected(docs, policy["spec"]["podSelector"]["matchLabels"]), policy["metadata"]["name"]


def test_the_ingress_example_keeps_server_sent_events_unbuffered_with_long_timeouts(rendered: Docs) -> None:
    example = yaml.safe_load((K8S / "examples" / "ingress-nginx.yaml").read_text())
    validate(example)
    annotations = example["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    service = one(rendered["base"], "Service", "far-mesh-gateway")
    backends = [p["backend"]["service"] for r in example["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b["name"] == service["metadata"]["name"] for b in backends)
    assert {b["port"]["name"] for b in backends} <= {p["name"] for p in service["spec"]["ports"]}


def test_the_readme_states_the_minimum_kubernetes_version_the_manifests_need(rendered: Docs) -> None:
    # The gateway's preStop `sleep` action is GA (on by default) from Kubernetes 1.30.
    assert one(rendered["base"], "Deployment", "far-mesh-gateway")["spec"]["template"]["spec"]["containers"][0][
        "lifecycle"
    ]["preStop"]["sleep"]
    assert "Kubernetes 1.30" in (REPO / "deploy" / "README.md").read_text()


def test_the_schemas_directory_documents_every_schema_it_keeps() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    assert {p.name for p in SCHEMAS.glob("*.yaml")} == set(CRD_SCHEMAS.values())
    assert all(name in readme for name in CRD_SCHEMAS.values())
    assert all(Path(SCHEMAS / name).is_file() for name in CRD_SCHEMAS.values())

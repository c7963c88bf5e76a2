"""Every rendered manifest against the Kubernetes schemas, CRDs structurally, and the shape each workload needs."""

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from tests.deploy.manifests import objects, one, pod_spec, workloads
from tests.fixtures.deploy import K8S, KUSTOMIZATIONS

Docs = dict[str, list[dict[str, Any]]]

# CRDs: kubernetes-validate carries only the built-in schemas, so these are checked structurally below.
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def validate(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_built_in_object_matches_the_kubernetes_schema(rendered: Docs, kustomization: str) -> None:
    built_in = [doc for doc in rendered[kustomization] if not doc["apiVersion"].startswith(CRD_GROUPS)]
    assert len(built_in) >= 10
    for doc in built_in:
        validate(doc)


def test_the_schema_check_rejects_a_misspelt_field(rendered: Docs) -> None:
    service = dict(one(rendered["base"], "Service", "far-mesh-gateway"))
    service["spec"] = {**service["spec"], "prots": service["spec"]["ports"]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, latest_version(), strict=True)


def test_the_secret_template_matches_the_schema_and_holds_only_placeholders(secret_template: dict[str, Any]) -> None:
    validate(secret_template)
    assert all("CHANGE_ME" in value for value in secret_template["stringData"].values())


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_kustomization_ships_a_secret(rendered: Docs, kustomization: str) -> None:
    # Applying a rendered Secret would overwrite the real one with placeholders.
    assert not objects(rendered[kustomization], "Secret")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_custom_resources_have_the_fields_their_operators_require(rendered: Docs, kustomization: str) -> None:
    docs = rendered[kustomization]
    deployments = {d["metadata"]["name"] for d in objects(docs, "Deployment")}
    for scaled in objects(docs, "ScaledObject"):
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] and trigger["metadata"]
            # KEDA rejects trigger metadata that is not a string (a bare 5000 or true).
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
            if "authenticationRef" in trigger:
                one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    for auth in objects(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
    for monitor in objects(docs, "PodMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        target = one(docs, "Deployment", monitor["metadata"]["name"])
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for c in pod_spec(target)["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_workload_is_bounded_probed_and_unprivileged(rendered: Docs, kustomization: str) -> None:
    for workload in workloads(rendered[kustomization]):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            if workload["kind"] == "Deployment":
                ports = {p["name"] for p in container.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert container[probe]["httpGet"]["port"] in ports, f"{name} {probe}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_deployment_has_a_disruption_budget_and_one_autoscaler_at_most(
    rendered: Docs, kustomization: str
) -> None:
    docs = rendered[kustomization]
    for deployment in objects(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [
            b
            for b in objects(docs, "PodDisruptionBudget")
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1, f"{name} has {len(budgets)} PodDisruptionBudgets"
        hpas = [h for h in objects(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
        scaled = [s for s in objects(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
        # KEDA makes its own HPA for a ScaledObject; a second one would fight it.
        assert len(hpas) + len(scaled) <= 1, f"{name} has {len(hpas)} HPAs and {len(scaled)} ScaledObjects"
    for service in objects(docs, "Service"):
        matched = [
            d
            for d in objects(docs, "Deployment")
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} Deployments"


def test_the_gateway_is_autoscaled_on_cpu_in_every_kustomization(rendered: Docs) -> None:
    for kustomization in KUSTOMIZATIONS:
        hpa = one(rendered[kustomization], "HorizontalPodAutoscaler", "far-mesh-gateway")
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_production_autoscales_workers_and_accounting_with_keda(rendered: Docs) -> None:
    docs = rendered["overlays/production"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in objects(docs, "ScaledObject")} == {
        "far-mesh-worker",
        "far-mesh-accounting",
    }
    assert len(objects(docs, "PodMonitor")) == len(objects(docs, "Deployment"))


def test_the_secret_template_is_outside_every_kustomization() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        assert "secret.template" not in path.read_text(), path

"""The alerts and the Grafana dashboard name only metrics the processes export, and reach Prometheus and Grafana."""

import json
import re
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

import accounting.metrics  # noqa: F401 - registers the accounting metrics in the default registry
import payouts.metrics  # noqa: F401 - and the payer's
from gateway.metrics import GatewayMetrics
from tests.deploy.manifests import objects, one
from tests.fixtures.deploy import K8S
from workers import metrics as worker_metrics

Docs = dict[str, list[dict[str, Any]]]

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
DASHBOARD = K8S / "components" / "prometheus-operator" / "dashboards" / "far-mesh.json"
ALERTS_THE_ISSUE_ASKS_FOR = {
    "FarMeshQueueGrowing",
    "FarMeshJobsFailing",
    "FarMeshConsumerLagging",
    "FarMeshDeadLetters",
    "FarMeshPayoutsFailing",
    "FarMeshSwarmCoverageIncomplete",
}


def exported() -> set[str]:
    """Every series name our registries expose, with the suffixes Prometheus sees (`_total`, `_bucket`...)."""
    names: set[str] = set()
    registries: list[CollectorRegistry] = [REGISTRY, worker_metrics.REGISTRY, GatewayMetrics().registry]
    for registry in registries:
        for family in registry.collect():
            if family.name.startswith("far_"):
                names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def metrics_named(expr: str) -> set[str]:
    return set(re.findall(r"\b(far_[a-z_]+)\b", expr))


def balanced(expr: str) -> bool:
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def alerts(rendered: Docs) -> list[dict[str, Any]]:
    [rule] = objects(rendered["overlays/production"], "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_every_alert_names_only_exported_metrics_and_says_what_to_do(rendered: Docs) -> None:
    known = exported()
    found = alerts(rendered)
    assert ALERTS_THE_ISSUE_ASKS_FOR <= {a["alert"] for a in found}
    for alert in found:
        named = metrics_named(alert["expr"])
        assert named and named <= known, f"{alert['alert']} reads {sorted(named - known)}, which nothing exports"
        assert balanced(alert["expr"]), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_the_rules_reach_a_default_kube_prometheus_stack(rendered: Docs) -> None:
    [rule] = objects(rendered["overlays/production"], "PrometheusRule")
    assert rule["metadata"]["namespace"] == "far-mesh"
    monitor = one(rendered["overlays/production"], "PodMonitor", "far-mesh-gateway")
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert metrics_named(expr) and metrics_named(expr) <= known, f"{expr} reads {metrics_named(expr) - known}"
        assert balanced(expr), expr
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize("family", ["far_gateway_", "far_mesh_worker_", "far_accounting_"])
def test_the_dashboard_covers_every_process(family: str) -> None:
    assert family in DASHBOARD.read_text()


def test_the_dashboard_ships_as_a_configmap_the_grafana_sidecar_loads(rendered: Docs) -> None:
    [config] = [c for c in objects(rendered["overlays/production"], "ConfigMap") if "grafana" in c["metadata"]["name"]]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["far-mesh.json"]) == json.loads(DASHBOARD.read_text())


def test_the_check_catches_a_metric_nobody_exports() -> None:
    assert not metrics_named("rate(far_gateway_made_up_total[5m])") <= exported()


def test_the_dashboard_shows_latency_queue_wait_far_billed_and_swarm_coverage() -> None:
    wanted = {
        "far_gateway_request_duration_seconds_bucket",
        "far_mesh_worker_queue_wait_seconds_bucket",
        "far_accounting_far_billed_total",
        "far_accounting_swarm_coverage",
    }
    assert wanted <= exported()
    assert wanted <= metrics_named(DASHBOARD.read_text())

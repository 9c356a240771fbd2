"""Monitoring objects through the running operator on a real kube-apiserver: without the Prometheus
Operator's CRDs the ServiceMonitor and PrometheusRule are skipped and a Condition and a Warning Event
say so (the Service and the dashboard ConfigMap are applied anyway); with them (served through
discovery) they are applied; what the spec stops asking for is deleted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from controlplane import MONITORING_CRDS, monitoring_crd
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from kubernetes.client.exceptions import ApiException

os.environ.setdefault("REDIS_MESSAGING_RESYNC_SECONDS", "1")

SPEC = {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                       "prometheusRule": {"enabled": True},
                       "grafanaDashboard": {"enabled": True}}}


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def monitoring_crds(kube_api: client.ApiClient) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(kube_api)
    for kind, plural in MONITORING_CRDS.items():
        ext.create_custom_resource_definition(monitoring_crd(kind, plural))

    def served() -> bool:
        found = Api(kube_api).raw("GET", "/apis/monitoring.coreos.com/v1")
        return {r["kind"] for r in found["resources"]} >= set(MONITORING_CRDS)

    eventually(served, what="monitoring.coreos.com/v1 served")
    try:
        yield
    finally:
        for plural in MONITORING_CRDS.values():
            try:
                ext.delete_custom_resource_definition(f"{plural}.monitoring.coreos.com")
            except ApiException as exc:
                if exc.status != 404:
                    raise
        # Gone before the next test: a CRD that disappears later would make Kopf re-scan meanwhile.
        eventually(lambda: not _monitoring_served(Api(kube_api)), timeout=60, what="monitoring CRDs removed")


def _monitoring_served(api: Api) -> bool:
    try:
        api.raw("GET", "/apis/monitoring.coreos.com/v1")
    except (ApiException, AssertionError):
        return False
    return True


def custom(api: Api, namespace: str, plural: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.custom.list_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, plural)["items"]
    return items


def test_without_the_crds_monitoring_is_skipped_and_said(api: Api, namespace: str, operator_kubeconfig: Any) -> None:
    if _monitoring_served(api):
        pytest.skip("another test of this session left monitoring.coreos.com/v1 served")
    with operator_running(namespace):
        api.create(namespace, rmsg("orders", SPEC))
        cond = eventually(lambda: (c := api.condition(namespace, "orders", "MonitoringReady")) and c,
                          what="MonitoringReady condition")
        assert cond["status"] == "False"
        assert cond["reason"] == "MonitoringCRDsMissing"
        assert "PrometheusRule, ServiceMonitor skipped" in cond["message"]
        eventually(lambda: any(e.reason == "MonitoringCRDsMissing" and e.type == "Warning"
                               for e in api.events(namespace, "orders")), what="Warning event")
        service = api.core.read_namespaced_service("orders-metrics", namespace)
        assert service.spec.ports[0].name == "metrics"
        dashboard = api.core.read_namespaced_config_map("orders-dashboard", namespace)
        assert dashboard.metadata.labels["grafana_dashboard"] == "1"
        # Still ready to serve: a missing CRD is not a failure of the resource.
        assert (api.condition(namespace, "orders", "Degraded") or {}).get("reason") != "MonitoringCRDsMissing"


def test_with_the_crds_monitoring_objects_are_applied_and_pruned(api: Api, namespace: str, operator_kubeconfig: Any,
                                                                 monitoring_crds: None) -> None:
    with operator_running(namespace):
        api.create(namespace, rmsg("orders", SPEC))
        cond = eventually(lambda: (c := api.condition(namespace, "orders", "MonitoringReady"))
                          and c["status"] == "True" and c, timeout=30, what="MonitoringReady=True")
        assert cond["reason"] == "Applied"
        (sm,) = custom(api, namespace, "servicemonitors")
        assert sm["metadata"]["name"] == "orders"
        assert sm["metadata"]["labels"]["release"] == "prom"
        assert sm["metadata"]["ownerReferences"][0]["kind"] == "RedisMessaging"
        (rule,) = custom(api, namespace, "prometheusrules")
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert {"RedisMessagingNoMaster", "RedisMessagingSentinelQuorumLost"} <= alerts

        # The spec stops asking for the rule and the dashboard: both are deleted.
        api.patch(namespace, "orders", {"spec": {"monitoring": {"prometheusRule": {"enabled": False},
                                                                "grafanaDashboard": {"enabled": False}}}})
        eventually(lambda: not custom(api, namespace, "prometheusrules"), timeout=30, what="PrometheusRule deleted")

        def dashboard_gone() -> bool:
            names = {c.metadata.name for c in api.core.list_namespaced_config_map(namespace).items}
            return "orders-dashboard" not in names

        eventually(dashboard_gone, timeout=30, what="dashboard deleted")
        assert [s["metadata"]["name"] for s in custom(api, namespace, "servicemonitors")] == ["orders"]
        assert {c.metadata.name for c in api.core.list_namespaced_config_map(namespace).items} >= {"orders-config"}

"""Monitoring objects: the alerts are valid PromQL (parsed by a real parser, promql-parser, the Rust
PromQL parser with Prometheus's type rules), scoped to their resource, built on metric names that
exist, and the scrape path (Service, ServiceMonitor, exporter ports) fits together."""

from __future__ import annotations

import json
from typing import Any

import pytest

from redis_messaging.api import models
from redis_messaging.builders import monitoring, names
from redis_messaging.builders.names import Owner
from redis_messaging.metrics import OperatorMetrics
from redis_messaging.modes import build

promql = pytest.importorskip("promql_parser", reason="dev dependency promql-parser (pip install promql-parser)")

OWNER = Owner(name="orders", namespace="shop", uid="uid-1")
ODD_STREAM = 'odd "stream" \\ {{ name }}'

ALL_ON = {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
          "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
          "grafanaDashboard": {"enabled": True}}


def autoscaled(name: str, metric: str) -> dict[str, Any]:
    return {"name": name, "autoscale": {"target": {"name": f"w{len(name)}-worker"}, "metric": metric,
                                        "backlogPerReplica": 250, "maxReplicas": 8}}


SPECS: dict[str, dict[str, Any]] = {
    "sentinel, no streams": {"monitoring": ALL_ON},
    "sentinel, one replica": {"monitoring": ALL_ON, "redis": {"replicas": 1}},
    "sentinel, autoscaled groups": {"monitoring": ALL_ON, "streams": [
        {"name": "orders", "groups": [autoscaled("billing", "backlog"), autoscaled("audit", "lag"),
                                      autoscaled("mail", "pending"), {"name": "manual", "maxDeliveries": 5}]},
        {"name": ODD_STREAM, "groups": [autoscaled('g"1', "backlog")]},
    ]},
    "cluster": {"mode": "cluster", "monitoring": ALL_ON, "streams": [
        {"name": "orders", "groups": [autoscaled("billing", "backlog")]}]},
}


def spec_of(title: str) -> models.RedisMessagingSpec:
    return models.parse_spec(SPECS[title])


def rules(spec: models.RedisMessagingSpec) -> list[dict[str, Any]]:
    rule = monitoring.prometheus_rule(spec, OWNER)
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            found.append(node)

    promql.walk(promql.parse(expr), visit)
    return found


def matchers(selector: Any) -> dict[str, str]:
    return {m.name: m.value for m in selector.matchers.matchers if str(m.op) == "MatchOp.Equal"}


def dashboard_exprs(spec: models.RedisMessagingSpec) -> list[str]:
    cm = monitoring.dashboard(spec, OWNER)
    (text,) = cm["data"].values()
    board = json.loads(text)
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


# ---------------------------------------------------------------------------------------------
# PromQL


def test_the_parser_refuses_bad_promql() -> None:
    """The check below can fail: syntax and type errors are refused."""
    for bad in ("sum(rate(x[5m])", "rate(x)", "x[5m] > 1", "nosuchfunction(x)", 'x{a="1"} >'):
        with pytest.raises(ValueError):  # noqa: PT011 (the parser raises ValueError with its message)
            promql.parse(bad)


@pytest.mark.parametrize("title", list(SPECS))
def test_every_alert_expression_is_valid_promql(title: str) -> None:
    spec = spec_of(title)
    for rule in rules(spec):
        try:
            promql.parse(rule["expr"])
        except ValueError as exc:
            pytest.fail(f"{rule['alert']}: {exc}: {rule['expr']}")


@pytest.mark.parametrize("title", list(SPECS))
def test_every_dashboard_query_is_valid_promql(title: str) -> None:
    for expr in dashboard_exprs(spec_of(title)):
        try:
            promql.parse(expr)
        except ValueError as exc:
            pytest.fail(f"{exc}: {expr}")


@pytest.mark.parametrize("title", list(SPECS))
def test_every_selector_is_scoped_to_the_resource(title: str) -> None:
    """No alert may fire for, or be silenced by, another resource's series."""
    spec = spec_of(title)
    exprs = [r["expr"] for r in rules(spec)] + dashboard_exprs(spec)
    for expr in exprs:
        for sel in selectors(expr):
            labels = matchers(sel)
            assert labels.get("namespace") == OWNER.namespace, (sel.name, expr)
            if sel.name.startswith("redis_messaging_"):
                assert labels.get("resource") == OWNER.name, expr
            else:
                assert labels.get("service") == monitoring.metrics_service_name(OWNER), expr


def test_stream_and_group_names_survive_quoting() -> None:
    spec = spec_of("sentinel, autoscaled groups")
    backlog = [r for r in rules(spec) if r["alert"] == "RedisMessagingConsumerBacklogAboveTarget"]
    assert len(backlog) == 4  # one per autoscaled group, none for the manual one
    seen = {(matchers(s)["stream"], matchers(s)["group"]) for r in backlog for s in selectors(r["expr"])}
    assert seen == {("orders", "billing"), ("orders", "audit"), ("orders", "mail"), (ODD_STREAM, 'g"1')}
    odd = next(r for r in backlog if 'g\\"1' in r["expr"])
    assert "{{ name }}" not in odd["annotations"]["description"]  # no template action from a user's name


def test_backlog_alert_counts_the_metric_the_autoscaler_uses() -> None:
    spec = spec_of("sentinel, autoscaled groups")
    by_group = {matchers(selectors(r["expr"])[0])["group"]: r for r in rules(spec)
                if r["alert"] == "RedisMessagingConsumerBacklogAboveTarget"}

    def metrics_in(rule: dict[str, Any]) -> set[str]:
        return {s.name for s in selectors(rule["expr"])}

    assert metrics_in(by_group["billing"]) == {"redis_messaging_group_lag", "redis_messaging_group_pending",
                                               "redis_messaging_group_current_replicas"}
    assert "redis_messaging_group_pending" not in metrics_in(by_group["audit"])
    assert "redis_messaging_group_lag" not in metrics_in(by_group["mail"])
    assert "* 250" in by_group["billing"]["expr"]
    assert by_group["billing"]["for"] == "10m"


def test_operator_metric_names_exist() -> None:
    """Alerts and panels use the names the operator exports (metrics.py), not guesses."""
    registered = {f.name for f in OperatorMetrics().registry.families()}
    spec = spec_of("sentinel, autoscaled groups")
    used = {s.name for e in [r["expr"] for r in rules(spec)] + dashboard_exprs(spec) for s in selectors(e)
            if s.name.startswith("redis_messaging_")}
    assert used
    assert used <= registered, used - registered


# ---------------------------------------------------------------------------------------------
# The alerts that matter


def test_dead_letters_are_a_rule_group_of_their_own_only_when_a_group_dead_letters() -> None:
    groups = {g["name"].rsplit(".", 1)[-1]: g["rules"]
              for g in monitoring.prometheus_rule(spec_of("sentinel, autoscaled groups"), OWNER)["spec"]["groups"]}
    [rule] = groups["dead-letters"]
    assert rule["alert"] == "RedisMessagingDeadLetters"
    assert rule["expr"].startswith("increase(redis_messaging_group_dead_lettered_total{")
    assert "dead-letter stream" in rule["annotations"]["description"]
    assert "RedisMessagingDeadLetters" not in {r["alert"] for r in rules(spec_of("cluster"))}


def test_sentinel_mode_alerts() -> None:
    names_ = {r["alert"] for r in rules(spec_of("sentinel, autoscaled groups"))}
    assert {
        "RedisMessagingNoMaster", "RedisMessagingSplitBrain", "RedisMessagingReplicationBroken",
        "RedisMessagingSentinelNotMonitoring", "RedisMessagingSentinelDisagreement",
        "RedisMessagingSentinelQuorumLost", "RedisMessagingMemoryNearMax", "RedisMessagingMemoryFull",
        "RedisMessagingConsumerBacklogAboveTarget", "RedisMessagingOrphanedPending",
    } <= names_
    assert "RedisMessagingClusterStateNotOk" not in names_


def test_cluster_mode_alerts() -> None:
    names_ = {r["alert"] for r in rules(spec_of("cluster"))}
    assert {"RedisMessagingClusterStateNotOk", "RedisMessagingClusterSlotsUnserved", "RedisMessagingReplicationBroken",
            "RedisMessagingMemoryNearMax", "RedisMessagingConsumerBacklogAboveTarget"} <= names_
    assert not {n for n in names_ if "Sentinel" in n or n in ("RedisMessagingNoMaster", "RedisMessagingSplitBrain")}


def test_every_alert_has_severity_for_and_words() -> None:
    for title in SPECS:
        for rule in rules(spec_of(title)):
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["for"]
            assert rule["annotations"]["summary"]
            assert rule["annotations"]["description"]
            assert rule["labels"]["namespace"] == OWNER.namespace


def test_no_master_alert_fires_when_no_series_is_left() -> None:
    # count() of nothing is nothing: the `or vector(0)` makes "every pod gone" an alert, not silence.
    rule = next(r for r in rules(spec_of("sentinel, no streams")) if r["alert"] == "RedisMessagingNoMaster")
    assert "or vector(0)" in rule["expr"]


# ---------------------------------------------------------------------------------------------
# Scraping fits together


def test_service_monitor_scrapes_every_exporter() -> None:
    spec = spec_of("sentinel, no streams")
    objs = {(o["kind"], o["metadata"]["name"]): o for o in monitoring.build(spec, OWNER)}
    service = objs[("Service", "orders-metrics")]
    sm = objs[("ServiceMonitor", "orders")]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}
    (endpoint,) = sm["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"]
    workloads = [o for o in build(spec, OWNER, password="x") if o["kind"] == "StatefulSet"]
    assert {w["metadata"]["name"] for w in workloads} == {"orders-redis", "orders-sentinel"}
    for sts in workloads:
        template = sts["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        exporter = next(c for c in template["spec"]["containers"] if c["name"] == "exporter")
        assert {"name": port["targetPort"], "containerPort": port["port"], "protocol": "TCP"} in exporter["ports"]
    sentinel_exporter = next(c for c in workloads[1]["spec"]["template"]["spec"]["containers"]
                             if c["name"] == "exporter")
    addr = next(e["value"] for e in sentinel_exporter["env"] if e["name"] == "REDIS_ADDR")
    assert addr == f"redis://127.0.0.1:{names.SENTINEL_PORT}"


def test_dashboard_configmap_is_picked_up_by_the_grafana_sidecar() -> None:
    cm = monitoring.dashboard(spec_of("sentinel, autoscaled groups"), OWNER)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    assert key.endswith(".json")
    board = json.loads(cm["data"][key])
    assert board["uid"]
    assert board["title"].endswith("shop/orders")
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    titles = {p["title"] for p in board["panels"]}
    assert {"Group lag", "Group pending", "Consumer replicas", "Memory used / maxmemory"} <= titles


def test_nothing_is_built_unless_asked() -> None:
    assert monitoring.build(models.parse_spec({}), OWNER) == []
    only_dashboard = models.parse_spec({"monitoring": {"grafanaDashboard": {"enabled": True}}})
    assert [o["kind"] for o in monitoring.build(only_dashboard, OWNER)] == ["ConfigMap"]


def test_kinds_the_api_server_does_not_serve_are_skipped_and_said() -> None:
    spec = spec_of("sentinel, no streams")
    asked: list[str] = []

    def none_served(api_version: str) -> frozenset[str]:
        asked.append(api_version)
        return frozenset()

    chosen = monitoring.children(spec, OWNER, none_served)
    assert asked == ["monitoring.coreos.com/v1"]
    assert chosen.requested
    assert chosen.skipped == ["PrometheusRule", "ServiceMonitor"]
    assert [o["kind"] for o in chosen.objects] == ["Service", "ConfigMap"]
    served = monitoring.children(spec, OWNER, lambda _: frozenset({"ServiceMonitor", "PrometheusRule", "PodMonitor"}))
    assert served.skipped == []
    assert [o["kind"] for o in served.objects] == ["Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"]
    # Discovery is not even asked when no Prometheus Operator kind is wanted.
    asked.clear()
    monitoring.children(models.parse_spec({}), OWNER, none_served)
    assert asked == []


def test_monitoring_objects_are_deterministic_and_owned() -> None:
    spec = spec_of("sentinel, autoscaled groups")
    one, two = monitoring.build(spec, OWNER), monitoring.build(spec, OWNER)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    for obj in one:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert obj["metadata"]["labels"][names.LABEL_COMPONENT] == monitoring.COMPONENT_METRICS

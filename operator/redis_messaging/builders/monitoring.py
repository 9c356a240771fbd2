"""Monitoring objects: a metrics Service with a ServiceMonitor for the exporter sidecars, a
PrometheusRule with the alerts that matter for messaging, and a Grafana dashboard ConfigMap.

Pure functions of the spec, like every builder. ServiceMonitor and PrometheusRule are kinds of the
Prometheus Operator (``monitoring.coreos.com/v1``) that a cluster may not serve: :func:`children`
takes the set of kinds the API server serves and says which requested objects it had to leave out.

Where the series come from:

* ``redis_*`` from the redis_exporter sidecars (redis pods and, for ``redis_sentinel_*``, Sentinel
  pods), scraped through the ``<name>-metrics`` Service: the Prometheus Operator gives them the
  labels ``namespace``, ``service``, ``pod`` and ``container``.
* ``redis_messaging_*`` from the operator itself (:mod:`redis_messaging.metrics`), labelled
  ``namespace`` and ``resource`` by the operator. Whatever scrapes the operator must keep those
  labels as they are (``honorLabels: true``), or Prometheus renames ``namespace`` to
  ``exported_namespace`` and the stream alerts never match.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis_messaging.api.models import Autoscale, Group, RedisMessagingSpec, Stream
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner

Obj = dict[str, Any]

API_VERSION = "monitoring.coreos.com/v1"
MONITORING_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
COMPONENT_METRICS = "metrics"
METRICS_PORT_NAME = "metrics"
DASHBOARD_KEY_SUFFIX = "-redis-messaging.json"
OPERATOR_METRICS_PREFIX = "redis_messaging"
CLUSTER_SLOTS = 16384


def metrics_service_name(owner: Owner) -> str:
    return f"{owner.name}-metrics"


def dashboard_name(owner: Owner) -> str:
    return f"{owner.name}-dashboard"


def _meta(owner: Owner, name: str, extra_labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**(extra_labels or {}), **names.common_labels(owner, COMPONENT_METRICS)},
        "ownerReferences": [owner.owner_reference()],
    }


# ---------------------------------------------------------------------------------------------
# Scraping


def metrics_service(owner: Owner) -> Obj:
    """Headless: one endpoint per pod with an exporter (redis, Sentinel and shard pods alike; pods
    without a ``metrics`` port are no endpoint of it)."""
    selector = {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: owner.name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, metrics_service_name(owner)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # a replica that is not ready is what the alerts are about
            "selector": selector,
            "ports": [{"name": METRICS_PORT_NAME, "port": names.EXPORTER_PORT,
                       "targetPort": METRICS_PORT_NAME, "protocol": "TCP"}],
        },
    }


def service_monitor(spec: RedisMessagingSpec, owner: Owner) -> Obj:
    sm = spec.monitoring.service_monitor
    return {
        "apiVersion": API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": _meta(owner, owner.name, dict(sm.labels)),
        "spec": {
            "selector": {"matchLabels": names.selector_labels(owner, COMPONENT_METRICS)},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": METRICS_PORT_NAME, "interval": sm.interval, "path": "/metrics"}],
            # app_kubernetes_io_component (redis | sentinel | shard) and the role label on every series
            "podTargetLabels": [names.LABEL_COMPONENT, names.LABEL_ROLE],
        },
    }


# ---------------------------------------------------------------------------------------------
# Alerts


def lit(value: str) -> str:
    """A PromQL string literal (label values may be any stream or group name)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def text(value: str) -> str:
    """A user-given name inside an alert annotation (a Go template): never an action."""
    return value.replace("{{", "{ {").replace("}}", "} }")


def verbatim(value: str) -> str:
    """A user-given name as an alert label value (rule labels are Go templates too): rendered exactly,
    each ``{{`` written as the action that prints it."""
    return value.replace("{{", '{{"{{"}}')


def selector(**labels: str) -> str:
    return "{" + ", ".join(f"{k}={lit(v)}" for k, v in labels.items()) + "}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    # What tells apart the rules of one name (rendered once per group): Prometheus and promtool take two
    # rules with the same name and labels for duplicates.
    labels: tuple[tuple[str, str], ...] = ()

    def rule(self, owner: Owner) -> Obj:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "namespace": owner.namespace, "redis_messaging": owner.name,
                       **{k: verbatim(v) for k, v in self.labels}},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def _redis_selector(owner: Owner, **extra: str) -> str:
    return selector(namespace=owner.namespace, service=metrics_service_name(owner), **extra)


def _operator_selector(owner: Owner, **extra: str) -> str:
    return selector(namespace=owner.namespace, resource=owner.name, **extra)


def availability_alerts(spec: RedisMessagingSpec, owner: Owner) -> list[Alert]:
    r = _redis_selector(owner)
    who = f"{owner.namespace}/{owner.name}"
    out = [
        Alert("RedisMessagingExporterDown", f"up{r} == 0", "5m", "warning",
              f"{who}: a redis exporter is not scraped",
              "Prometheus cannot scrape {{ $labels.pod }}: the pod is gone or not running."),
        Alert("RedisMessagingRedisDown", f"redis_up{r} == 0", "1m", "critical",
              f"{who}: a Redis process does not answer",
              "The exporter of {{ $labels.pod }} cannot reach its Redis or Sentinel process."),
        Alert("RedisMessagingReplicationBroken", f"redis_master_link_up{r} == 0", "2m", "critical",
              f"{who}: a replica lost its master",
              "{{ $labels.pod }} has no replication link to {{ $labels.master_host }} for 2 minutes: it serves "
              "stale reads and cannot take over without losing data."),
        Alert("RedisMessagingReplicaLagging",
              f"redis_connected_slave_lag_seconds{r} > {spec.redis.min_replicas_max_lag}", "2m", "warning",
              f"{who}: a replica lags behind the master",
              "A replica of {{ $labels.pod }} last acknowledged {{ $value }}s ago; past min-replicas-max-lag "
              "the master refuses writes."),
    ]
    if spec.mode == "sentinel":
        masters = f'redis_instance_info{_redis_selector(owner, role="master")}'
        out += [
            Alert("RedisMessagingNoMaster", f"(count({masters}) or vector(0)) < 1", "1m", "critical",
                  f"{who}: no Redis master",
                  "No Redis pod reports the master role: writes are refused until Sentinel or the operator "
                  "promotes a replica."),
            Alert("RedisMessagingSplitBrain", f"count({masters}) > 1", "1m", "critical",
                  f"{who}: more than one Redis master",
                  "{{ $value }} pods report the master role; writes to the stale one will be lost."),
        ]
        if spec.redis.replicas > 1:
            out.append(Alert(
                "RedisMessagingReplicasMissing",
                f"sum(redis_connected_slaves{r}) < {spec.redis.replicas - 1}", "5m", "warning",
                f"{who}: replicas missing",
                f"The master has {{{{ $value }}}} connected replicas of {spec.redis.replicas - 1}.",
            ))
    else:
        # The nodes run with cluster-require-full-coverage no (modes/cluster/scripts.py): slots whose master
        # is lost leave cluster_state ok and the other slots served. cluster_state:fail is a node cut off
        # from the majority of the masters; the lost slots are counted by cluster_slots_ok.
        out += [
            Alert("RedisMessagingClusterStateNotOk", f"redis_cluster_state{r} == 0", "1m", "critical",
                  f"{who}: Redis Cluster state is not ok",
                  "{{ $labels.pod }} reports cluster_state:fail: it cannot reach a majority of the masters and "
                  "refuses every command."),
            Alert("RedisMessagingClusterSlotsUnserved", f"redis_cluster_slots_ok{r} < {CLUSTER_SLOTS}", "1m",
                  "critical", f"{who}: Redis Cluster slots without a serving master",
                  f"{{{{ $labels.pod }}}} sees {{{{ $value }}}} of the {CLUSTER_SLOTS} slots served: commands on the "
                  "keys of the others are refused (their master is unreachable and no replica took over, or they "
                  "are not assigned). The cluster state stays ok: the other slots are served."),
        ]
    return out


def sentinel_alerts(spec: RedisMessagingSpec, owner: Owner) -> list[Alert]:
    if spec.mode != "sentinel" or not spec.monitoring.exporter.enabled:
        return []
    r = _redis_selector(owner)
    m = _redis_selector(owner, master_name=owner.master_name)
    who = f"{owner.namespace}/{owner.name}"
    return [
        Alert("RedisMessagingSentinelNotMonitoring",
              f"redis_sentinel_masters{r} unless on (pod) redis_sentinel_master_status{m}", "2m", "critical",
              f"{who}: a Sentinel does not monitor the master",
              f"Sentinel {{{{ $labels.pod }}}} monitors no master named {owner.master_name}: it takes no part "
              "in failure detection or failover."),
        Alert("RedisMessagingSentinelDisagreement",
              f"count(count by (master_address) (redis_sentinel_master_status{m})) > 1", "2m", "warning",
              f"{who}: Sentinels disagree on the master",
              "The Sentinels name {{ $value }} different master addresses."),
        Alert("RedisMessagingSentinelMasterDown", f"redis_sentinel_master_status{m} == 0", "1m", "critical",
              f"{who}: Sentinel sees the master down",
              "Sentinel {{ $labels.pod }} reports the master {{ $labels.master_address }} as "
              "{{ $labels.master_status }}."),
        Alert("RedisMessagingSentinelQuorumLost", f"redis_sentinel_master_ckquorum_status{m} == 0", "2m",
              "critical", f"{who}: Sentinels cannot fail over",
              "SENTINEL CKQUORUM on {{ $labels.pod }}: {{ $labels.message }}"),
        Alert("RedisMessagingSentinelsMissing",
              f"max(redis_sentinel_master_ok_sentinels{m}) < {spec.sentinel.replicas}", "5m", "warning",
              f"{who}: Sentinels missing",
              f"{{{{ $value }}}} of {spec.sentinel.replicas} Sentinels are up and known to each other."),
    ]


def memory_alerts(owner: Owner) -> list[Alert]:
    r = _redis_selector(owner)
    ratio = f"redis_memory_used_bytes{r} / (redis_memory_max_bytes{r} > 0)"
    who = f"{owner.namespace}/{owner.name}"
    return [
        Alert("RedisMessagingMemoryNearMax", f"{ratio} > 0.85", "5m", "warning",
              f"{who}: memory near maxmemory",
              "{{ $labels.pod }} uses {{ $value | humanizePercentage }} of maxmemory; with noeviction writes "
              "are refused when it is full. Trim streams (retention) or grow maxmemory."),
        Alert("RedisMessagingMemoryFull", f"{ratio} > 0.95", "2m", "critical",
              f"{who}: memory at maxmemory",
              "{{ $labels.pod }} uses {{ $value | humanizePercentage }} of maxmemory: producers are about to "
              "get OOM errors."),
    ]


def _group_backlog(owner: Owner, stream: Stream, group: Group, autoscale: Autoscale) -> str:
    """The group's metric (as its autoscaler counts it) above target x replicas (at least one)."""
    sel = _operator_selector(owner, stream=stream.name, group=group.name)
    p = OPERATOR_METRICS_PREFIX
    by = "namespace, resource, stream, group"
    if autoscale.metric == "lag":
        value = f"{p}_group_lag{sel}"
    elif autoscale.metric == "pending":
        value = f"{p}_group_pending{sel}"
    else:
        value = f"{p}_group_lag{sel} + {p}_group_pending{sel}"
    replicas = f"clamp_min(max by ({by}) ({p}_group_current_replicas{sel}), 1)"
    target = f"{replicas} * {autoscale.backlog_per_replica}"
    return f"max by ({by}) ({value}) > on ({by}) {target}"


def stream_alerts(spec: RedisMessagingSpec, owner: Owner) -> list[Alert]:
    o = _operator_selector(owner)
    p = OPERATOR_METRICS_PREFIX
    who = f"{owner.namespace}/{owner.name}"
    out = []
    for stream in spec.streams:
        for group in stream.groups:
            auto = group.autoscale
            if auto is None:
                continue
            out.append(Alert(
                "RedisMessagingConsumerBacklogAboveTarget", _group_backlog(owner, stream, group, auto), "10m",
                "warning", f"{who}: consumers of {text(stream.name)}/{text(group.name)} fall behind",
                f"The {auto.metric} per replica of group {text(group.name)} on stream {text(stream.name)} is above "
                f"its target of {auto.backlog_per_replica} for 10 minutes: the workload "
                f"{auto.target.kind}/{auto.target.name} is at its maximum or cannot keep up.",
                labels=(("stream", stream.name), ("group", group.name)),
            ))
    out += [
        Alert("RedisMessagingAutoscaleLimited",
              f"{p}_group_desired_replicas{o} > {p}_group_current_replicas{o}", "10m", "warning",
              f"{who}: a consumer workload does not reach the replicas asked for",
              "Group {{ $labels.group }} of stream {{ $labels.stream }} wants more replicas than its workload "
              "has for 10 minutes (scale patch refused, another autoscaler, or pods that cannot start)."),
        Alert("RedisMessagingOrphanedPending", f"{p}_group_orphaned_pending{o} > 0", "15m", "warning",
              f"{who}: pending entries without a consumer",
              "{{ $value }} entries of group {{ $labels.group }} on stream {{ $labels.stream }} belong to "
              "consumers whose pod is gone and no live consumer could take them."),
        Alert("RedisMessagingReconcileFailing", f"rate({p}_reconcile_errors_total{o}[10m]) > 0", "15m", "warning",
              f"{who}: reconcile passes fail",
              "The operator's passes over this resource keep failing; see its Events and the operator log."),
    ]
    return out


def dead_letter_alerts(spec: RedisMessagingSpec, owner: Owner) -> list[Alert]:
    """Entries moved to a dead-letter stream: a consumer fails on them (only when a group dead-letters)."""
    if not any(g.max_deliveries is not None for s in spec.streams for g in s.groups):
        return []
    p = OPERATOR_METRICS_PREFIX
    return [Alert(
        "RedisMessagingDeadLetters", f"increase({p}_group_dead_lettered_total{_operator_selector(owner)}[15m]) > 0",
        "0m", "warning", f"{owner.namespace}/{owner.name}: entries were dead-lettered",
        "About {{ $value | humanize }} entries of group {{ $labels.group }} on stream {{ $labels.stream }} were "
        "delivered more than maxDeliveries times without being acknowledged in the last 15 minutes and were "
        "moved to the group's dead-letter stream (status.streams[].groups[].deadLetterStream): consumers fail "
        "on them. Read them there (fields dead-letter.*, then the entry's own), fix the consumer, then add "
        "them to the stream again or delete them.",
    )]


def alerts(spec: RedisMessagingSpec, owner: Owner) -> list[Alert]:
    return [*availability_alerts(spec, owner), *sentinel_alerts(spec, owner), *memory_alerts(owner),
            *stream_alerts(spec, owner), *dead_letter_alerts(spec, owner)]


def prometheus_rule(spec: RedisMessagingSpec, owner: Owner) -> Obj:
    groups: dict[str, list[Alert]] = {
        "availability": availability_alerts(spec, owner) + sentinel_alerts(spec, owner),
        "memory": memory_alerts(owner),
        "streams": stream_alerts(spec, owner),
        "dead-letters": dead_letter_alerts(spec, owner),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": _meta(owner, owner.name, dict(spec.monitoring.prometheus_rule.labels)),
        "spec": {"groups": [
            {"name": f"redis-messaging.{owner.namespace}.{owner.name}.{title}",
             "rules": [a.rule(owner) for a in rules]}
            for title, rules in groups.items() if rules
        ]},
    }


# ---------------------------------------------------------------------------------------------
# Dashboard


def _panel(title: str, exprs: Iterable[tuple[str, str]], x: int, y: int, *, unit: str = "short",
           kind: str = "timeseries", w: int = 12, h: int = 8) -> Obj:
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(exprs)],
    }


def dashboard_panels(spec: RedisMessagingSpec, owner: Owner) -> list[Obj]:
    r = _redis_selector(owner)
    o = _operator_selector(owner)
    p = OPERATOR_METRICS_PREFIX
    panels = [
        _panel("Masters", [(f'count(redis_instance_info{_redis_selector(owner, role="master")}) or vector(0)',
                            "masters")], 0, 0, kind="stat", w=6, h=4),
        _panel("Redis up", [(f"sum(redis_up{r})", "up")], 6, 0, kind="stat", w=6, h=4),
        _panel("Replication links up", [(f"sum(redis_master_link_up{r})", "links up")], 12, 0, kind="stat",
               w=6, h=4),
        _panel("Reconcile errors / s", [(f"sum(rate({p}_reconcile_errors_total{o}[5m]))", "errors")], 18, 0,
               kind="stat", w=6, h=4),
        _panel("Commands / s", [(f"sum by (pod) (rate(redis_commands_processed_total{r}[1m]))", "{{pod}}")],
               0, 4, unit="ops"),
        _panel("Memory used / maxmemory",
               [(f"redis_memory_used_bytes{r} / (redis_memory_max_bytes{r} > 0)", "{{pod}}")], 12, 4,
               unit="percentunit"),
        _panel("Connected clients", [(f"redis_connected_clients{r}", "{{pod}}")], 0, 12),
        _panel("Replica lag (s)", [(f"redis_connected_slave_lag_seconds{r}", "{{pod}} -> {{slave_ip}}")], 12, 12,
               unit="s"),
        _panel("Group lag", [(f"{p}_group_lag{o}", "{{stream}}/{{group}}")], 0, 20),
        _panel("Group pending", [(f"{p}_group_pending{o}", "{{stream}}/{{group}}"),
                                 (f"{p}_group_orphaned_pending{o}", "{{stream}}/{{group}} orphaned")], 12, 20),
        _panel("Consumer replicas", [(f"{p}_group_current_replicas{o}", "{{stream}}/{{group}} current"),
                                     (f"{p}_group_desired_replicas{o}", "{{stream}}/{{group}} desired")], 0, 28),
        _panel("Stream length", [(f"{p}_stream_length{o}", "{{stream}}")], 12, 28),
    ]
    if spec.mode == "sentinel":
        m = _redis_selector(owner, master_name=owner.master_name)
        panels.append(_panel("Sentinels: master seen", [
            (f"count by (master_address) (redis_sentinel_master_status{m})", "{{master_address}}")], 0, 36))
    else:
        panels += [_panel("Cluster state ok", [(f"redis_cluster_state{r}", "{{pod}}")], 0, 36),
                   _panel("Cluster slots served", [(f"redis_cluster_slots_ok{r}", "{{pod}}")], 12, 36)]
    return panels


def dashboard(spec: RedisMessagingSpec, owner: Owner) -> Obj:
    board = {
        "title": f"Redis messaging: {owner.namespace}/{owner.name}",
        "uid": f"rmsg-{owner.namespace}-{owner.name}"[:40],
        "tags": ["redis", "redis-messaging"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        ]},
        "panels": [dict(panel, id=i + 1) for i, panel in enumerate(dashboard_panels(spec, owner))],
    }
    labels = dict(spec.monitoring.grafana_dashboard.labels)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, dashboard_name(owner), labels),
        "data": {f"{owner.namespace}-{owner.name}{DASHBOARD_KEY_SUFFIX}":
                 json.dumps(board, indent=1, sort_keys=True)},
    }


# ---------------------------------------------------------------------------------------------
# What to apply


def build(spec: RedisMessagingSpec, owner: Owner) -> list[Obj]:
    """Every monitoring object the spec asks for, in apply order (CRD kinds included)."""
    mon = spec.monitoring
    out: list[Obj] = []
    if mon.service_monitor.enabled:
        out += [metrics_service(owner), service_monitor(spec, owner)]
    if mon.prometheus_rule.enabled:
        out.append(prometheus_rule(spec, owner))
    if mon.grafana_dashboard.enabled:
        out.append(dashboard(spec, owner))
    return out


@dataclass(frozen=True)
class Selected:
    objects: list[Obj]
    skipped: list[str]  # kinds asked for that the API server does not serve
    requested: bool  # any object of a monitoring.coreos.com kind was asked for


def children(spec: RedisMessagingSpec, owner: Owner, served: Callable[[str], frozenset[str]]) -> Selected:
    """The monitoring objects to apply, given ``served(api_version)`` (the kinds the API server serves;
    only called when a Prometheus Operator kind is asked for)."""
    wanted = build(spec, owner)
    needs = [o for o in wanted if o["kind"] in MONITORING_KINDS]
    kinds = served(API_VERSION) if needs else frozenset()
    objects = [o for o in wanted if o["kind"] not in MONITORING_KINDS or o["kind"] in kinds]
    skipped = sorted({o["kind"] for o in needs if o["kind"] not in kinds})
    return Selected(objects, skipped, bool(needs))

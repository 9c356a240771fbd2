"""Monitoring as a user's Prometheus sees it (E2E_BACKEND=local only): the exporter sidecars run (the
redis_exporter binary of .ci/build-monitoring.sh), the operator's pod serves its metrics, and a
Prometheus configured from the ServiceMonitors and PrometheusRules as the Prometheus Operator would
configure it (prometheus.py) scrapes them all. On a healthy resource no alert fires; a consumer group
that falls behind, and a killed master, fire their alerts for real.

Only the scrape and evaluation intervals (1 s) and every alert's ``for`` (2 s) are shortened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PLURAL, Cluster, eventually, resource
from localcluster import OPERATOR_NAMESPACE
from prometheus import LocalPrometheus

NAME = "orders"
STREAM, GROUP, WORKER = "orders", "billing", "billing-worker"
PER_REPLICA = 10
SPEC: dict[str, Any] = {
    "mode": "sentinel",
    "image": "redis:7.2",
    "redis": {"replicas": 3},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 3000},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "streams": [{"name": STREAM, "groups": [{"name": GROUP, "startId": "0", "autoscale": {
        "target": {"kind": "Deployment", "name": WORKER}, "minReplicas": 1, "maxReplicas": 1,
        "backlogPerReplica": PER_REPLICA}}]}],
}
# Consumers that consume nothing: an image the local cluster does not play runs no process, so the
# group's backlog only grows.
WORKER_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": WORKER},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": WORKER}}, "template": {
        "metadata": {"labels": {"app": WORKER}},
        "spec": {"containers": [{"name": "worker", "image": "registry.invalid/idle-consumer:1"}]}}},
}
# every target a Sentinel-mode resource and the chart give: 3 Redis and 3 Sentinel exporters, the operator
TARGETS = 7


def firing(prometheus: Any, alert: str, **labels: str) -> list[dict[str, str]]:
    return [lbl for state, lbl in prometheus.alert_states().get(alert, [])
            if state == "firing" and all(lbl.get(k) == v for k, v in labels.items())]


def test_alerts_fire_for_real_on_the_local_cluster(cluster: Cluster, namespace: str, local_cluster: Any,
                                                  tmp_path: Path) -> None:
    if local_cluster.runner.images.exporter is None:
        pytest.skip("no redis_exporter built: bash .ci/build-monitoring.sh")
    cluster.apply(namespace, WORKER_DEPLOYMENT)
    cluster.apply(namespace, resource(NAME, SPEC))
    eventually(lambda: (c := cluster.condition(namespace, NAME, "Ready")) and c["status"] == "True",
               timeout=180, interval=1, what="Ready")
    eventually(lambda: (c := cluster.condition(namespace, NAME, "MonitoringReady")) and c["status"] == "True",
               timeout=60, interval=1, what="MonitoringReady (ServiceMonitor and PrometheusRule created)")
    master = str(cluster.get(namespace, PLURAL, NAME)["status"]["master"])

    local = LocalPrometheus(local_cluster.api, local_cluster.kubeconfig, tmp_path / "prometheus",
                            [namespace, OPERATOR_NAMESPACE], interval="1s", rule_for="2s")
    server = local.start()
    try:
        def all_up() -> list[dict[str, Any]] | None:
            active = server.api("targets")["activeTargets"]
            return active if len(active) == TARGETS and all(t["health"] == "up" for t in active) else None

        targets = eventually(all_up, timeout=60, interval=1, what=f"{TARGETS} targets up")
        jobs = sorted({t["labels"]["job"] for t in targets})
        eventually(server.rules_evaluated, timeout=30, interval=1, what="every rule evaluated without error")
        # the exporters' series with the target labels the alerts select on, the operator's with the
        # resource's namespace (honorLabels)
        assert server.query(f'redis_up{{namespace="{namespace}", pod="{master}"}} == 1'), "redis_up of the master"
        eventually(lambda: server.query(f'redis_messaging_group_lag{{namespace="{namespace}", resource="{NAME}"}}'),
                   timeout=60, interval=1, what="the operator's group metrics, with the resource's namespace")
        time.sleep(5)  # a few evaluations of a healthy resource
        quiet = {name: alerts for name, alerts in server.alert_states().items()
                 if any(state == "firing" for state, _ in alerts)}
        assert not quiet, f"alerts firing on a healthy resource: {quiet}"

        # 1. a consumer group falls behind: entries its consumer never reads
        began = time.monotonic()
        cluster.redis_cli(namespace, master, "EVAL",
                          f"for i = 1, {PER_REPLICA * 5} do redis.call('XADD', KEYS[1], '*', 'n', i) end return 1",
                          "1", STREAM)
        eventually(lambda: firing(server, "RedisMessagingConsumerBacklogAboveTarget", stream=STREAM, group=GROUP),
                   timeout=90, interval=1, what="RedisMessagingConsumerBacklogAboveTarget firing")
        behind = time.monotonic() - began

        # 2. the master's Redis killed, and kept down (its exporter keeps answering)
        began = time.monotonic()
        worker = local_cluster.runner.worker(namespace, master)
        worker.hold("redis")
        try:
            worker.kill_container("redis")
            eventually(lambda: firing(server, "RedisMessagingRedisDown", pod=master), timeout=90, interval=1,
                       what=f"RedisMessagingRedisDown firing for {master}")
            down = time.monotonic() - began
        finally:
            worker.release("redis")
        print(f"\n[e2e] monitoring on the local cluster: {TARGETS} targets up ({', '.join(jobs)}); no alert on a "
              f"healthy resource; ConsumerBacklogAboveTarget firing {behind:.1f}s after the backlog, "
              f"RedisDown {down:.1f}s after the master's Redis was killed (scrape 1s, for 2s)")
    finally:
        local.stop()

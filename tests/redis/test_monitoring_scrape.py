"""The exporter sidecar and the alerts against real processes: redis-server and redis-sentinel started
from the rendered configuration (tests/redis/sentinel_env.py, cluster_env.py), with auth and the
exporter's own ACL user; the real redis_exporter (.ci/build-monitoring.sh) run as the pod builder
renders its container (its environment, its init container's password file; tests/support/
monitoring_tools.py: start_exporter); the operator's own metrics served by its real endpoint after its
autoscaler measured, decided and reclaimed on the real master; and a real Prometheus server scraping
them all as the ServiceMonitor would, evaluating the rendered PrometheusRule.

What is asserted:

* every metric name the rendered alerts and Grafana dashboard read is in the real scrapes of the mode
  they are rendered for, with every label they select on, group by, match on or print, and every label
  value they select (monitoring_tools.verify); the table of what was verified is printed;
* at rest no alert is pending or firing, but those the test caused on purpose (the operator's
  orphaned entries and failing passes);
* failures made for real are seen: a Redis process killed (RedisDown, ReplicasMissing), an exporter
  killed (ExporterDown), two of three Sentinels killed (SentinelsMissing, SentinelQuorumLost); in Cluster
  mode a whole shard killed (ClusterStateNotOk). An alert is pending as soon as its expression matches:
  that is what is waited for (their ``for`` is minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from cluster_env import ClusterEnv, heal_until
from monitoring_tools import (
    Binaries,
    ExporterPod,
    Prometheus,
    Scrape,
    binaries,
    free_port,
    http_get,
    redis_server_or_skip,
    rules_yaml,
    running,
    sanitised,
    start_exporter,
    verify,
    wait_for,
)
from sentinel_env import SentinelEnv, sentinel_knows_all

from redis_messaging import metrics, modes
from redis_messaging.api import models
from redis_messaging.autoscale.loop import Autoscaler
from redis_messaging.builders import config, monitoring, names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.addresses import MapAddresses
from redis_messaging.redis.nodes import Node, Placement, Pools
from redis_messaging.redis.streams import ensure_groups
from redis_messaging.runtime.operator import Operator
from redis_messaging.settings import OperatorSettings

pytestmark = pytest.mark.redis

PASSWORD = "default-Pa55word-monitoring"
EXPORTER_PASSWORD = "exporter-Pa55word-monitoring"
OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
MONITORING = {"exporter": {"enabled": True}, "serviceMonitor": {"enabled": True},
              "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}
REDIS_CONFIG = {"maxmemory": "64mb", "repl-diskless-sync-delay": "0"}


def autoscaled(name: str, metric: str) -> dict[str, Any]:
    return {"name": name, "startId": "0",
            "autoscale": {"target": {"name": f"{name}-worker"}, "metric": metric, "backlogPerReplica": 100}}


STREAMS = [{"name": "orders", "groups": [autoscaled("billing", "backlog"), autoscaled("audit", "lag"),
                                         autoscaled("mail", "pending")]}]
SENTINEL_SPEC = models.parse_spec({
    "mode": "sentinel", "auth": {"enabled": True}, "monitoring": MONITORING,
    "redis": {"replicas": 3, "config": REDIS_CONFIG},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 2000},
    "streams": STREAMS,
})
CLUSTER_SPEC = models.parse_spec({
    "mode": "cluster", "auth": {"enabled": True}, "monitoring": MONITORING,
    "cluster": {"shards": 3, "replicasPerShard": 1, "nodeTimeout": 2000},
    "redis": {"config": REDIS_CONFIG},
    "streams": STREAMS,
})
LIVE_POD = "billing-worker-live"  # a consumer whose pod exists; the others' pods are gone


def mount_users(root: Path, env: dict[str, str]) -> Path:
    """The projected users volume of every pod: the exporter's password (Secret <name>-exporter)."""
    users = root / "users"
    users.mkdir(parents=True, exist_ok=True)
    secret = users / "exporter"
    secret.write_text(EXPORTER_PASSWORD)
    secret.chmod(0o600)
    env["RMSG_USERS_DIR"] = str(users)
    return users


# -- the operator --------------------------------------------------------------------------------------
class ConsumersKube:
    """The API server as the autoscaler sees it: the consumer Deployments (one replica each), the pods
    (only LIVE_POD), and what it writes (scales, Events, status) kept."""

    def __init__(self) -> None:
        self.scaled: list[tuple[str, int]] = []
        self.events: list[str] = []

    def get_scale(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return {"spec": {"replicas": 1}, "status": {"replicas": 1, "selector": f"app={name}"}}

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.scaled.append((name, replicas))
        return {}

    def list_metadata(self, kind: str, namespace: str, selector: str | None = None, fields: str | None = None
                      ) -> list[dict[str, Any]]:
        return [{"metadata": {"name": LIVE_POD, "namespace": namespace}}]

    def event(self, involved: Any, *, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append(f"{reason}: {message}")

    def patch_status(self, *_: Any) -> dict[str, Any]:
        return {}

    def annotate(self, *_: Any) -> dict[str, Any]:
        return {}


class BrokenKube:
    """An API server that answers every request with an error: the reconcile pass fails."""

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any, **__: Any) -> Any:
            raise KubeError(503, "ServiceUnavailable", f"{name}: the API server is unavailable")
        return fail


def resource_body(spec: models.RedisMessagingSpec) -> dict[str, Any]:
    return {"apiVersion": models.API_VERSION, "kind": models.KIND,
            "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid, "generation": 1},
            "spec": spec.model_dump(by_alias=True, exclude_none=True)}


def consume(client: redis.Redis, group: str, consumer: str, count: int) -> int:
    reply: Any = client.xreadgroup(group, consumer, {"orders": ">"}, count=count)
    return sum(len(entries) for _, entries in reply)


def operator_at_work(registry: metrics.OperatorMetrics, spec: models.RedisMessagingSpec, placement: Placement
                     ) -> Autoscaler:
    """The operator's autoscaler on the real master, the way its loop runs it: entries waiting, consumers
    of gone pods holding some (claimed back for the live consumer in billing; in audit nobody is left to
    take them: orphaned), one tick (measure, decide, reclaim, report)."""
    master = placement.node_of("orders")
    client = redis.Redis(host=master.address[0], port=master.address[1], password=PASSWORD, decode_responses=True,
                         socket_timeout=5)
    try:
        for stream in spec.streams:
            ensure_groups(client, stream)
        for i in range(60):
            client.xadd("orders", {"n": str(i)})
        assert consume(client, "billing", LIVE_POD, 20) == 20
        assert consume(client, "billing", "billing-worker-gone", 10) == 10
        assert consume(client, "audit", "audit-worker-gone", 10) == 10
    finally:
        client.close()
    kube = ConsumersKube()
    autoscaler = Autoscaler(cast(Kube, kube), Pools(timeout=5), metrics=registry, status_interval=0,
                            reclaim_interval=0, reread_interval=0)
    autoscaler.place(resource_body(spec), OWNER, spec, PASSWORD, placement, {}, {"orders": 0})

    def reclaimed() -> bool:  # RECLAIM_MIN_IDLE_MS: entries delivered less than a second ago are not claimed
        autoscaler.tick((OWNER.namespace, OWNER.name))
        return any("PendingReclaimed" in e for e in kube.events)

    wait_for(reclaimed, timeout=15, what="the billing entries of the gone consumer claimed back", interval=0.5)
    return autoscaler


@contextlib.contextmanager
def failing_passes(registry: metrics.OperatorMetrics, spec: models.RedisMessagingSpec) -> Iterator[Any]:
    """The operator's controller of the resource, whose reconcile passes (run as the pass scheduler runs
    them) meet an API server that answers nothing but errors: each fails, and is counted. Its series
    stay while the controller lives: closing it forgets the resource's metrics, as a deletion does."""
    op = Operator(OperatorSettings(metrics_port=0), cast(Kube, BrokenKube()), MapAddresses({}), registry=registry,
                  cache_reads=False)
    op.observe("ADDED", resource_body(spec))
    controller = op.controller(OWNER.namespace, OWNER.name)
    assert controller is not None

    def fail() -> None:
        with pytest.raises(KubeError):
            controller.run_pass()

    try:
        yield fail
    finally:
        op.stop(timeout=5)


@contextlib.contextmanager
def operator_endpoint(registry: metrics.OperatorMetrics) -> Iterator[str]:
    """The operator's /metrics (metrics.serve, its aiohttp endpoint) on a loopback port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="operator-metrics", daemon=True)
    thread.start()
    port = free_port()
    runner = asyncio.run_coroutine_threadsafe(metrics.serve(registry.registry, port, host="127.0.0.1"), loop).result(10)
    assert runner is not None, "the operator's metrics endpoint did not listen"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def refused_to_the_exporter(env: SentinelEnv | ClusterEnv) -> dict[str, list[str]]:
    """What each process refused the exporter's user (ACL LOG, read as the default user): the exporter
    scrapes with nothing but what its rules grant, or every scrape is an error and a log entry."""
    out: dict[str, list[str]] = {}
    for name in env.pod_names:
        entries = env.client(name).execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
        for entry in entries:
            fields = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else dict(entry)
            if fields.get("username") == config.EXPORTER_USER:
                out.setdefault(name, []).append(f"{fields.get('reason')} {fields.get('object')}")
    return out


# -- what the alerts say -------------------------------------------------------------------------------
def active(prometheus: Prometheus) -> dict[str, list[tuple[str, dict[str, str]]]]:
    return {name: alerts for name, alerts in prometheus.alert_states().items() if alerts}


def wait_alerts(prometheus: Prometheus, expected: dict[str, dict[str, str]], *, timeout: float) -> None:
    """Until each alert of ``expected`` is pending or firing for a series with those labels."""

    def seen() -> bool:
        now = active(prometheus)
        return all(any(match.items() <= labels.items() for _, labels in now.get(name, []))
                   for name, match in expected.items())

    try:
        wait_for(seen, timeout=timeout, what=f"alerts {sorted(expected)}", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; active: {active(prometheus)}\n{prometheus.log_tail()}") from None


def target_labels(pod: str, component: str, role: str) -> dict[str, str]:
    """What the ServiceMonitor's scrape gives each series of a pod's exporter (Prometheus Operator)."""
    return {"namespace": OWNER.namespace, "service": monitoring.metrics_service_name(OWNER), "pod": pod,
            "container": "exporter", "endpoint": monitoring.METRICS_PORT_NAME,
            sanitised(names.LABEL_COMPONENT): component, sanitised(names.LABEL_ROLE): role}


def report(title: str, verified: Any, scrapes: dict[str, Scrape], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n== {title}: what the rendered alerts and dashboard read, found in the real scrapes "
              f"({len(scrapes)} exporters + the operator)")
        print(verified.table())


# -- Sentinel mode -------------------------------------------------------------------------------------
@pytest.fixture
def tools() -> Binaries:
    found = binaries()
    redis_server_or_skip()
    return found


def test_sentinel_mode_scrapes_and_alerts(tools: Binaries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    spec = SENTINEL_SPEC
    objects = modes.build(spec, OWNER, password=PASSWORD)
    exporters: dict[str, ExporterPod] = {}
    registry = metrics.OperatorMetrics()
    with SentinelEnv(spec, OWNER, tmp_path / "pods", password=PASSWORD) as env, \
            operator_endpoint(registry) as operator_target, failing_passes(registry, spec) as failing_pass:
        users = {name: mount_users(env.pod(name).root, env.pod(name).env) for name in env.pod_names}
        env.start()
        master = env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        for name in env.sentinel_pods:
            env.wait_ready(name, timeout=30)
            wait_for(lambda n=name: sentinel_knows_all(env, n), timeout=30, what=f"{name} knows every process")
        try:
            for name in env.pod_names:
                pod = env.pod(name)
                sts = OWNER.redis_sts if pod.kind == "redis" else OWNER.sentinel_sts
                exporters[name] = start_exporter(tools.redis_exporter, objects, sts, pod=name,
                                                 namespace=OWNER.namespace, ip=pod.ip, root=pod.root,
                                                 users_dir=users[name])
            scrapes = {name: e.scrape() for name, e in exporters.items()}
            for name, scrape in scrapes.items():
                assert scrape.values("redis_up") == [1.0], f"{name}: the exporter cannot log in\n" + \
                    exporters[name].log.read_text()
            assert refused_to_the_exporter(env) == {}

            autoscaler = operator_at_work(registry, spec, Placement(Node(master, env.address(master))))
            failing_pass()
            operator = Scrape.parse(http_get(f"http://{operator_target}/metrics"))

            merged = Scrape()
            for scrape in scrapes.values():
                merged = merged.merge(scrape)
            verified = verify(spec, OWNER, merged, operator)
            report("Sentinel mode", verified, scrapes, capsys)
            assert not verified.problems, "\n".join(verified.problems)
            # what the alerts rely on, per kind of pod
            for name in env.redis_pods:
                role = "master" if name == master else "slave"
                assert scrapes[name].values("redis_instance_info", role=role) == [1.0], name
                assert scrapes[name].values("redis_memory_max_bytes") == [64 * 1024 * 1024], name
                if name != master:
                    assert scrapes[name].values("redis_master_link_up") == [1.0], name
            assert scrapes[master].values("redis_connected_slaves") == [2.0]
            for name in env.sentinel_pods:
                ours = {"master_name": OWNER.master_name}
                assert scrapes[name].values("redis_sentinel_master_ok_sentinels", **ours) == [3.0]
                assert scrapes[name].values("redis_sentinel_master_ckquorum_status", **ours) == [1.0]
                assert not scrapes[name].values("redis_instance_info", role="master"), \
                    f"{name}: a Sentinel counted as a Redis master"
            assert operator.values("redis_messaging_group_orphaned_pending", group="audit") == [10.0]
            assert operator.values("redis_messaging_group_orphaned_pending", group="billing") == [0.0]
            assert operator.values("redis_messaging_group_pending", group="billing") == [30.0]
            assert operator.values("redis_messaging_reconcile_errors_total") == [1.0]

            roles = {name: "master" if name == master else "replica" for name in env.redis_pods}
            targets = [(f"{e.ip}:{e.port}", target_labels(name, env.pod(name).kind, roles.get(name, "")))
                       for name, e in exporters.items()]
            prometheus = Prometheus(tools.prometheus, tmp_path / "prometheus", rules_yaml(spec, OWNER), targets,
                                    operator_target)
            with running(prometheus):
                wait_for(prometheus.targets_up, timeout=30, what="every target scraped")
                wait_for(prometheus.rules_evaluated, timeout=30, what="every rule evaluated")
                failing_pass()  # a second failure: a rate above zero
                wait_alerts(prometheus, {"RedisMessagingOrphanedPending": {"group": "audit"},
                                         "RedisMessagingReconcileFailing": {"resource": OWNER.name}}, timeout=30)
                at_rest = active(prometheus)
                assert set(at_rest) == {"RedisMessagingOrphanedPending", "RedisMessagingReconcileFailing"}, at_rest
                assert [labels["group"] for _, labels in at_rest["RedisMessagingOrphanedPending"]] == ["audit"]
                (masters,) = prometheus.query(
                    f'count(redis_instance_info{{namespace="{OWNER.namespace}", role="master"}})')
                assert masters["value"][1] == "1"

                # A replica's Redis killed: its exporter answers redis_up 0, the master has one replica left.
                replica = next(n for n in env.redis_pods if n != master)
                env.kill(replica)
                wait_alerts(prometheus, {"RedisMessagingRedisDown": {"pod": replica},
                                         "RedisMessagingReplicasMissing": {}}, timeout=30)
                # Its exporter killed: Prometheus scrapes nothing there.
                exporters[replica].stop()
                wait_alerts(prometheus, {"RedisMessagingExporterDown": {"pod": replica}}, timeout=30)
                # Two Sentinels of three killed: the last one sees them down and no quorum to fail over.
                for name in env.sentinel_pods[1:]:
                    env.kill(name)
                wait_alerts(prometheus, {"RedisMessagingSentinelsMissing": {},
                                         "RedisMessagingSentinelQuorumLost": {"pod": env.sentinel_pods[0]},
                                         "RedisMessagingRedisDown": {"pod": env.sentinel_pods[1]}}, timeout=45)
                now = active(prometheus)
                for quiet in ("RedisMessagingNoMaster", "RedisMessagingSplitBrain",
                              "RedisMessagingSentinelDisagreement", "RedisMessagingSentinelMasterDown"):
                    assert quiet not in now, (quiet, now[quiet])
            autoscaler.clear()
        finally:
            for e in exporters.values():
                e.stop()


# -- Cluster mode --------------------------------------------------------------------------------------
def shard_masters(env: ClusterEnv) -> Placement:
    """Where the operator measures the streams: the master of each shard, with the slots it serves."""
    text = str(env.client(env.pod_names[0]).execute_command("CLUSTER", "NODES"))
    served = []
    for node in cl.parse_nodes(text):
        if node.is_master and node.slots:
            pod = env.pod_at(node.hostname or node.ip)
            shard = OWNER.shard(env.pod(pod).shard)
            served.append((Node(pod, env.address(pod), shard), node.slots))
    placement = Placement.sharded(served)
    assert placement is not None
    return placement


def test_cluster_mode_scrapes_and_alerts(tools: Binaries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    spec = CLUSTER_SPEC
    objects = modes.build(spec, OWNER, password=PASSWORD)
    exporters: dict[str, ExporterPod] = {}
    registry = metrics.OperatorMetrics()
    with ClusterEnv(spec, OWNER, tmp_path / "pods", password=PASSWORD) as env, \
            operator_endpoint(registry) as operator_target, failing_passes(registry, spec) as failing_pass:
        users = {name: mount_users(env.pod(name).root, env.pod(name).env) for name in env.pod_names}
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=1.0), spec, OWNER, PASSWORD, timeout=60, env=env)
        try:
            for name in env.pod_names:
                pod = env.pod(name)
                exporters[name] = start_exporter(tools.redis_exporter, objects, OWNER.shard(pod.shard), pod=name,
                                                 namespace=OWNER.namespace, ip=pod.ip, root=pod.root,
                                                 users_dir=users[name])
            scrapes = {name: e.scrape() for name, e in exporters.items()}
            for name, scrape in scrapes.items():
                assert scrape.values("redis_up") == [1.0], f"{name}: the exporter cannot log in\n" + \
                    exporters[name].log.read_text()
                assert scrape.values("redis_cluster_state") == [1.0], name
            assert refused_to_the_exporter(env) == {}

            placement = shard_masters(env)
            autoscaler = operator_at_work(registry, spec, placement)
            failing_pass()
            operator = Scrape.parse(http_get(f"http://{operator_target}/metrics"))

            merged = Scrape()
            for scrape in scrapes.values():
                merged = merged.merge(scrape)
            verified = verify(spec, OWNER, merged, operator)
            report("Cluster mode", verified, scrapes, capsys)
            assert not verified.problems, "\n".join(verified.problems)
            masters = {n.name for n in placement.nodes()}
            for name, scrape in scrapes.items():
                role = "master" if name in masters else "slave"
                assert scrape.values("redis_instance_info", role=role) == [1.0], name
                if name not in masters:
                    assert scrape.values("redis_master_link_up") == [1.0], name

            roles = {name: "master" if name in masters else "replica" for name in env.pod_names}
            targets = [(f"{e.ip}:{e.port}", target_labels(name, names.COMPONENT_SHARD, roles[name]))
                       for name, e in exporters.items()]
            prometheus = Prometheus(tools.prometheus, tmp_path / "prometheus", rules_yaml(spec, OWNER), targets,
                                    operator_target)
            with running(prometheus):
                wait_for(prometheus.targets_up, timeout=30, what="every target scraped")
                wait_for(prometheus.rules_evaluated, timeout=30, what="every rule evaluated")
                failing_pass()
                wait_alerts(prometheus, {"RedisMessagingOrphanedPending": {"group": "audit"},
                                         "RedisMessagingReconcileFailing": {"resource": OWNER.name}}, timeout=30)
                at_rest = active(prometheus)
                assert set(at_rest) == {"RedisMessagingOrphanedPending", "RedisMessagingReconcileFailing"}, at_rest

                # A whole shard killed (its master and its replica): its slots have no master. The nodes run
                # with cluster-require-full-coverage no: the others serve their slots, the state stays ok.
                for name in env.shard_pods(2):
                    env.kill(name)
                survivor = env.shard_pods(0)[0]
                wait_alerts(prometheus, {"RedisMessagingClusterSlotsUnserved": {"pod": survivor},
                                         "RedisMessagingRedisDown": {"pod": env.shard_pods(2)[0]}}, timeout=45)
                assert "RedisMessagingClusterStateNotOk" not in active(prometheus)
                (served,) = prometheus.query(f'redis_cluster_slots_ok{{pod="{survivor}"}}')
                assert served["value"][1] == str(16384 - 5461), served
                # A second shard killed: the last one cannot reach a majority of the masters and fails.
                for name in env.shard_pods(1):
                    env.kill(name)
                wait_alerts(prometheus, {"RedisMessagingClusterStateNotOk": {"pod": survivor}}, timeout=45)
            autoscaler.clear()
        finally:
            for e in exporters.values():
                e.stop()

"""The autoscaler through the running operator: a real kube-apiserver with kube-controller-manager
(Deployments get ReplicaSets and Pods) and a real redis-server on 127.0.0.1 playing the master.

The operator reaches the resource's redis pod through REDIS_MESSAGING_ADDRESS_MAP; its Sentinel is
mapped to a closed port, so the topology step finds no Sentinel and takes the one reachable master.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane, iter_event_summaries
from helpers import Api, eventually, install_crd, operator_running, redis_server_helper, rmsg
from kubernetes import client
from redis.client import Redis

PASSWORD = "s3cret-for-the-test"
DEPLOYMENT = "billing-worker"
SELECTOR = f"app={DEPLOYMENT}"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


_server = redis_server_helper()


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Any]:
    with _server.start_redis(tmp_path / "redis") as server:
        plain = server.client()
        plain.config_set("requirepass", PASSWORD)  # after start: the helper's probe has no password
        plain.close()
        yield server


@pytest.fixture
def r(master: Any) -> Iterator[Redis]:
    c: Redis = master.client(password=PASSWORD, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def metrics_port() -> int:
    port: int = _server.free_port()
    return port


@pytest.fixture
def operator(namespace: str, operator_kubeconfig: Any, api: Api, master: Any, tmp_path: Path,
             metrics_port: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    closed_port = _server.free_port()  # nothing listens there: the Sentinel is unreachable
    address_map = tmp_path / "addresses.json"
    address_map.write_text(json.dumps({
        "redis": {f"{namespace}/orders-redis-0": f"{master.host}:{master.port}"},
        "sentinel": {f"{namespace}/orders-sentinel-0": f"127.0.0.1:{closed_port}"},
    }))
    for key, value in {"ADDRESS_MAP": str(address_map), "STATUS_INTERVAL_SECONDS": "1",
                       "RECLAIM_INTERVAL_SECONDS": "1", "RESYNC_SECONDS": "2",
                       "METRICS_PORT": str(metrics_port)}.items():
        monkeypatch.setenv(f"REDIS_MESSAGING_{key}", value)
    api.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="orders-pass"), string_data={"password": PASSWORD}))
    with operator_running(namespace) as runner:
        yield runner


def deployment(api: Api, namespace: str, replicas: int) -> None:
    api.apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": DEPLOYMENT}},
                 "template": {"metadata": {"labels": {"app": DEPLOYMENT}},
                              "spec": {"containers": [{"name": "worker", "image": "busybox:1.36"}]}}}})


def resource(start_id: str = "$", **autoscale: Any) -> dict[str, Any]:
    return rmsg("orders", {
        "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1},
        "auth": {"secretName": "orders-pass"},
        "streams": [{"name": "orders", "groups": [{"name": "billing", "startId": start_id, "autoscale": {
            "target": {"kind": "Deployment", "name": DEPLOYMENT}, "minReplicas": 0, "maxReplicas": 10,
            "backlogPerReplica": 100, "scaleDownStabilizationSeconds": 0, "idleSecondsBeforeZero": 0,
            **autoscale}}]}],
    })


def replicas(api: Api, namespace: str) -> int:
    return int(api.apps.read_namespaced_deployment_scale(DEPLOYMENT, namespace).spec.replicas or 0)


def group_status(api: Api, namespace: str) -> dict[str, Any] | None:
    streams = (api.get(namespace, "orders").get("status") or {}).get("streams") or []
    groups = streams[0]["groups"] if streams else []
    return groups[0] if groups else None  # type: ignore[no-any-return]


def pods(api: Api, namespace: str) -> list[Any]:
    return [p for p in api.core.list_namespaced_pod(namespace, label_selector=SELECTOR).items
            if p.metadata.deletion_timestamp is None]


def add(r: Redis, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("orders", {"n": str(i)})
    pipe.execute()


def scale_writes(control_plane: ControlPlane, namespace: str, since: float) -> list[dict[str, Any]]:
    return [e for e in control_plane.operator_writes(since=since, namespace=namespace)
            if (e.get("objectRef") or {}).get("subresource") == "scale"]


def test_a_backlog_scales_the_deployment_from_zero(api: Api, namespace: str, control_plane: ControlPlane,
                                                   needs_controllers: None, operator: Any, r: Redis,
                                                   metrics_port: int) -> None:
    deployment(api, namespace, 0)
    api.create(namespace, resource())
    eventually(lambda: r.exists("orders") and any(g["name"] == "billing" for g in r.xinfo_groups("orders")),
               timeout=30, what="the operator created the declared group")
    ready = eventually(lambda: (c := api.condition(namespace, "orders", "StreamsReady")) and c, what="StreamsReady")
    assert ready["status"] == "True", ready
    conflict = api.condition(namespace, "orders", "AutoscaleConflict")
    assert conflict is not None
    assert conflict["status"] == "False"
    assert replicas(api, namespace) == 0

    since = time.time()
    added = time.monotonic()
    add(r, 480)
    eventually(lambda: replicas(api, namespace) == math.ceil(480 / 100), timeout=15, what="scaled 0 -> 5")
    print(f"backlog to scale patch seen by the test: {time.monotonic() - added:.2f}s")
    writes = scale_writes(control_plane, namespace, since)
    assert [(e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"]) for e in writes] == [
        ("patch", "deployments", DEPLOYMENT)]

    group = eventually(lambda: (g := group_status(api, namespace)) and g.get("desiredReplicas") == 5 and g,
                       timeout=10, what="status.streams")
    assert group["lag"] == 480
    assert group["pending"] == 0
    assert group["currentReplicas"] == 5
    assert "backlog 480" in group["lastDecision"]
    assert "lastScaleTime" in group
    assert "error" not in group
    scaled = [e for e in api.events(namespace, "orders") if e.reason == "Scaled"]
    assert [e.message.split(":")[0] for e in scaled] == [f"scaled orders/billing Deployment {DEPLOYMENT} 0 -> 5"]
    eventually(lambda: len(pods(api, namespace)) == 5, timeout=30, what="the ReplicaSet made 5 pods")

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    labels = f'namespace="{namespace}",resource="orders",stream="orders",group="billing"'
    assert f"redis_messaging_group_lag{{{labels}}} 480" in text
    assert f"redis_messaging_group_desired_replicas{{{labels}}} 5" in text
    assert "redis_messaging_autoscale_tick_to_patch_seconds_count" in text

    # Nothing changes any more: once the next decision says so, the operator writes nothing while it
    # keeps measuring.
    eventually(lambda: "stays at 5" in (group_status(api, namespace) or {}).get("lastDecision", ""), timeout=10,
               what="the steady decision")
    time.sleep(1.0)
    quiet_since = time.time()
    time.sleep(3.0)
    writes = control_plane.operator_writes(since=quiet_since, namespace=namespace)
    assert writes == [], list(iter_event_summaries(writes))


def test_a_scale_down_removes_the_pods_with_the_fewest_pending_entries_and_reclaims_theirs(
        api: Api, namespace: str, control_plane: ControlPlane, needs_controllers: None, operator: Any,
        r: Redis) -> None:
    add(r, 480)  # before the group exists; the group starts at 0, so all of it is backlog
    deployment(api, namespace, 5)
    workers = eventually(lambda: (p := pods(api, namespace)) and len(p) == 5 and sorted(x.metadata.name for x in p),
                         timeout=30, what="5 pods")
    api.create(namespace, resource(start_id="0"))
    eventually(lambda: (g := group_status(api, namespace)) and g.get("desiredReplicas") == 5, timeout=30,
               what="the operator measured backlog 480 -> 5 replicas")

    # Consumers are named after their pods. p1..p3 hold 50, 40 and 30 pending entries, p4 has
    # processed 300 and holds none, p5 never read. Backlog 480 -> 60 lag + 120 pending = 180 -> 2.
    p1, p2, p3, p4, _ = workers
    pipe = r.pipeline(transaction=True)
    for name, count in ((p1, 50), (p2, 40), (p3, 30), (p4, 300)):
        pipe.xreadgroup("billing", name, {"orders": ">"}, count=count)
    replies = pipe.execute()
    r.xack("orders", "billing", *[entry_id for _, entries in replies[3] for entry_id, _ in entries])
    since = time.time()

    eventually(lambda: replicas(api, namespace) == 2, timeout=15, what="scaled 5 -> 2")
    remaining = eventually(lambda: (p := pods(api, namespace)) and len(p) == 2 and p, timeout=30,
                           what="the ReplicaSet removed 3 pods")
    assert sorted(p.metadata.name for p in remaining) == sorted([p1, p2])
    assert {p.metadata.name: p.metadata.annotations[DELETION_COST] for p in remaining} == {p1: "50", p2: "40"}

    writes = control_plane.operator_writes(since=since, namespace=namespace)
    annotated = [i for i, e in enumerate(writes) if e["objectRef"]["resource"] == "pods"]
    scaled = [i for i, e in enumerate(writes) if e["objectRef"].get("subresource") == "scale"]
    assert len(scaled) == 1
    assert annotated
    assert max(annotated) < scaled[0], "pod-deletion-costs are set before the scale patch"

    # p3's 30 entries go to the live consumer with the fewest pending (p2); p3 and p4 are deleted.
    def reclaimed() -> dict[str, int] | None:
        consumers = {c["name"]: c["pending"] for c in r.xinfo_consumers("orders", "billing")}
        return consumers if set(consumers) == {p1, p2} else None

    assert eventually(reclaimed, timeout=15, what="orphaned entries claimed") == {p1: 50, p2: 70}
    group = eventually(lambda: (g := group_status(api, namespace)) and g.get("orphanedPending") == 0
                       and g.get("consumers") == 2 and g, timeout=10, what="status after the reclaim")
    assert group["pending"] == 120
    assert group["desiredReplicas"] == 2
    assert any(e.reason == "PendingReclaimed" and p3 in e.message for e in api.events(namespace, "orders"))


def test_a_horizontal_pod_autoscaler_on_the_same_deployment_makes_the_operator_refuse(
        api: Api, namespace: str, control_plane: ControlPlane, needs_controllers: None, operator: Any,
        r: Redis) -> None:
    add(r, 480)
    deployment(api, namespace, 0)
    client.AutoscalingV2Api(api.api).create_namespaced_horizontal_pod_autoscaler(namespace, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "billing"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
                 "minReplicas": 1, "maxReplicas": 3}})
    since = time.time()
    api.create(namespace, resource(start_id="0"))

    conflict = eventually(lambda: (c := api.condition(namespace, "orders", "AutoscaleConflict"))
                          and c["status"] == "True" and c, timeout=30, what="AutoscaleConflict")
    assert conflict["reason"] == "ConflictingAutoscaler"
    assert "HorizontalPodAutoscaler billing" in conflict["message"]
    eventually(lambda: any(e.reason == "AutoscaleConflict" and e.type == "Warning"
                           for e in api.events(namespace, "orders")), what="Warning Event")
    group = eventually(lambda: (g := group_status(api, namespace)) and g.get("lag") == 480 and g, timeout=15,
                       what="status.streams measured")
    assert "HorizontalPodAutoscaler billing" in group["error"]
    assert "desiredReplicas" not in group
    time.sleep(4.5)  # two autoscaler ticks or more with a backlog of 480
    assert scale_writes(control_plane, namespace, since) == []
    assert replicas(api, namespace) == 0

    # Removing the HPA lifts the refusal at the next pass.
    client.AutoscalingV2Api(api.api).delete_namespaced_horizontal_pod_autoscaler("billing", namespace)
    eventually(lambda: replicas(api, namespace) == 5, timeout=20, what="scaled once the HPA is gone")
    cleared = api.condition(namespace, "orders", "AutoscaleConflict")
    assert cleared is not None
    assert cleared["status"] == "False"


@pytest.fixture
def keda_crd(api: Api) -> Iterator[None]:
    """A minimal ScaledObject CRD (KEDA's group and version), removed afterwards: the other tests see
    the API server of a cluster without KEDA (listing ScaledObjects is a 404)."""
    ext = client.ApiextensionsV1Api(api.api)
    name = "scaledobjects.keda.sh"
    body = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": "keda.sh", "scope": "Namespaced",
                     "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject"},
                     "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    ext.create_custom_resource_definition(body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    try:
        eventually(established, what="ScaledObject CRD Established")
        yield
    finally:
        ext.delete_custom_resource_definition(name)


def test_a_keda_scaled_object_on_the_same_deployment_makes_the_operator_refuse(
        api: Api, namespace: str, control_plane: ControlPlane, needs_controllers: None, keda_crd: None,
        operator: Any, r: Redis) -> None:
    add(r, 480)
    deployment(api, namespace, 0)
    api.custom.create_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "billing"},
        "spec": {"scaleTargetRef": {"name": DEPLOYMENT}, "triggers": []}})
    since = time.time()
    api.create(namespace, resource(start_id="0"))
    conflict = eventually(lambda: (c := api.condition(namespace, "orders", "AutoscaleConflict"))
                          and c["status"] == "True" and c, timeout=30, what="AutoscaleConflict")
    assert "ScaledObject billing" in conflict["message"]
    eventually(lambda: (g := group_status(api, namespace)) and g.get("lag") == 480, timeout=15,
               what="status.streams measured")
    time.sleep(4.5)  # two autoscaler ticks or more with a backlog of 480
    assert scale_writes(control_plane, namespace, since) == []
    assert replicas(api, namespace) == 0


def test_a_list_queue_scales_its_workload_and_channels_report_subscribers(
        api: Api, namespace: str, needs_controllers: None, operator: Any, r: Redis) -> None:
    deployment(api, namespace, 0)
    r.lpush("jobs", *range(250))
    subscriber = r.pubsub()
    subscriber.subscribe("news")
    try:
        api.create(namespace, rmsg("orders", {
            "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1},
            "auth": {"secretName": "orders-pass"},
            "queues": [{"name": "jobs", "autoscale": {
                "target": {"kind": "Deployment", "name": DEPLOYMENT}, "minReplicas": 0, "maxReplicas": 10,
                "backlogPerReplica": 100, "scaleDownStabilizationSeconds": 0, "idleSecondsBeforeZero": 0}}],
            "channels": [{"name": "news"}, {"name": "nobody-listens"}],
        }))
        eventually(lambda: replicas(api, namespace) == 3, timeout=30, what="250 queued entries -> 3 replicas")

        def status() -> dict[str, Any]:
            return api.get(namespace, "orders").get("status") or {}

        queue = eventually(lambda: (q := (status().get("queues") or [None])[0]) and q.get("desiredReplicas") == 3 and q,
                           timeout=20, what="status.queues")
        assert queue["name"] == "jobs"
        assert queue["length"] == 250
        assert "250" in queue["lastDecision"]
        channels = eventually(lambda: (c := status().get("channels")) and len(c) == 2 and c, timeout=20,
                              what="status.channels")
        assert {c["name"]: c["subscribers"] for c in channels} == {"news": 1, "nobody-listens": 0}
        r.delete("jobs")  # drained: back to zero
        eventually(lambda: replicas(api, namespace) == 0, timeout=30, what="an empty queue -> 0 replicas")
    finally:
        subscriber.close()


def test_an_hpa_on_a_queue_workload_is_refused(api: Api, namespace: str, operator: Any, r: Redis) -> None:
    deployment(api, namespace, 1)
    client.AutoscalingV2Api(api.api).create_namespaced_horizontal_pod_autoscaler(namespace, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "cpu"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
                 "minReplicas": 1, "maxReplicas": 5}})
    r.lpush("jobs", *range(500))
    api.create(namespace, rmsg("orders", {
        "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1}, "auth": {"secretName": "orders-pass"},
        "queues": [{"name": "jobs", "autoscale": {"target": {"kind": "Deployment", "name": DEPLOYMENT}}}]}))
    conflict = eventually(lambda: (c := api.condition(namespace, "orders", "AutoscaleConflict")) and
                          c["status"] == "True" and c, timeout=20, what="AutoscaleConflict")
    assert "cpu" in conflict["message"]
    time.sleep(3)  # more than one tick: the refused workload is never scaled
    assert replicas(api, namespace) == 1

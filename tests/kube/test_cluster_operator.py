"""Cluster mode end to end on one machine: the operator runs in-process against the real API server,
the Pod objects come from the StatefulSet controller, and real redis-server processes (started from
the same rendered configuration by the same start script) play those pods on loopback addresses.

The resource goes 3 -> 4 -> 3 shards: status.shards, the conditions, the Events, the shard
StatefulSets (the removed one deleted by the operator once its slots moved away) and
status.streams[*].shard follow."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "redis"))
from cluster_env import ClusterEnv

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.redis import cluster as cl

pytestmark = pytest.mark.redis

PASSWORD = "kube-cluster-Pa55word"


def spec_with(shards: int) -> dict[str, Any]:
    return {
        "mode": "cluster",
        "auth": {"secretName": "events-password"},
        "cluster": {"shards": shards, "replicasPerShard": 1, "nodeTimeout": 3000},
        "redis": {"config": {"repl-diskless-sync-delay": "0"}},
        "monitoring": {"exporter": {"enabled": False}},
        "streams": [{"name": "orders", "groups": [{"name": "billing"}]}],
    }


@pytest.fixture
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def shard_pods(namespace: str, tmp_path: Path) -> Iterator[ClusterEnv]:
    owner = Owner(name="events", namespace=namespace)
    with ClusterEnv(models.parse_spec(spec_with(3)), owner, tmp_path / "pods", password=PASSWORD) as env:
        env.add_shard(3, start=False)  # its addresses are known now; it starts once its StatefulSet exists
        env.start([p for p in env.pod_names if not p.startswith("events-shard-3")])
        yield env


def statefulsets(api: Api, namespace: str) -> set[str]:
    return {s.metadata.name for s in api.apps.list_namespaced_stateful_set(namespace).items}


def shards_status(api: Api, namespace: str) -> list[dict[str, Any]]:
    return list((api.get(namespace, "events").get("status") or {}).get("shards") or [])


def ready(api: Api, namespace: str) -> bool:
    c = api.condition(namespace, "events", "Ready")
    return bool(c and c["status"] == "True")


def balanced(shards: list[dict[str, Any]], count: int) -> bool:
    def size(ranges: str) -> int:
        return sum(int(b) - int(a) + 1 for a, _, b in (r.partition("-") if "-" in r else (r, "", r)
                                                        for r in ranges.split(",") if r))
    return len(shards) == count and all(abs(size(s["slots"]) - 16384 / count) <= 1 for s in shards) and all(
        len(s["replicas"]) == 1 for s in shards)


def stream_shard(api: Api, namespace: str) -> str | None:
    streams = (api.get(namespace, "events").get("status") or {}).get("streams") or []
    return streams[0].get("shard") if streams else None


def owner_of_slot(shards: list[dict[str, Any]], slot: int) -> str:
    for s in shards:
        for r in s["slots"].split(","):
            a, _, b = r.partition("-")
            if int(a) <= slot <= int(b or a):
                return str(s["name"])
    raise AssertionError(f"slot {slot} served by no shard: {shards}")


def test_cluster_resource_bootstraps_scales_out_and_in(api: Api, namespace: str, control_plane: ControlPlane,
                                                      shard_pods: ClusterEnv, operator_kubeconfig: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not control_plane.has_controller_manager:
        pytest.skip("needs kube-controller-manager (StatefulSet controller) from .ci/control-plane.sh")
    env = shard_pods
    address_map = tmp_path / "addresses.json"
    address_map.write_text(json.dumps(
        {"redis": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.pod_names}}))
    monkeypatch.setenv("REDIS_MESSAGING_ADDRESS_MAP", str(address_map))
    monkeypatch.setenv("REDIS_MESSAGING_STATUS_INTERVAL_SECONDS", "1")
    api.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="events-password"), string_data={"password": PASSWORD}))
    slot = cl.slot_of("orders")

    with operator_running(namespace):
        # 3 shards: bootstrapped by the operator, Ready, status.shards filled in
        api.create(namespace, rmsg("events", spec_with(3)))
        eventually(lambda: len(api.core.list_namespaced_pod(namespace).items) == 6, timeout=30, what="6 pods")
        api.mark_pods_ready(namespace, "app.kubernetes.io/instance=events")
        eventually(lambda: ready(api, namespace), timeout=60, what="Ready with 3 shards")
        shards = shards_status(api, namespace)
        assert [(s["name"], s["master"], s["replicas"], s["slots"]) for s in shards] == [
            ("events-shard-0", "events-shard-0-0", ["events-shard-0-1"], "0-5461"),
            ("events-shard-1", "events-shard-1-0", ["events-shard-1-1"], "5462-10922"),
            ("events-shard-2", "events-shard-2-0", ["events-shard-2-1"], "10923-16383"),
        ]
        assert eventually(lambda: stream_shard(api, namespace), timeout=20, what="status.streams[0].shard") == \
            owner_of_slot(shards, slot)
        reasons = {e.reason for e in api.events(namespace, "events")}
        assert {"SlotsAssigned", "ReplicaAttached", "NodeJoined"} <= reasons

        # 3 -> 4: a new StatefulSet, its pods join, a quarter of the slots move to them
        api.patch(namespace, "events", {"spec": {"cluster": {"shards": 4}}})
        eventually(lambda: "events-shard-3" in statefulsets(api, namespace), timeout=20, what="shard-3 StatefulSet")
        env.start(["events-shard-3-0", "events-shard-3-1"])
        eventually(lambda: len(api.core.list_namespaced_pod(namespace).items) == 8, timeout=30, what="8 pods")
        api.mark_pods_ready(namespace, "app.kubernetes.io/instance=events")
        eventually(lambda: balanced(shards_status(api, namespace), 4) and ready(api, namespace), timeout=90,
                   what="4 balanced shards")
        shards = shards_status(api, namespace)
        eventually(lambda: stream_shard(api, namespace) == owner_of_slot(shards, slot), timeout=20,
                   what="status.streams[0].shard after the scale-out")
        assert "SlotsMigrated" in {e.reason for e in api.events(namespace, "events")}

        # 4 -> 3: shard 3's slots move away, its nodes leave, the operator deletes its StatefulSet
        api.patch(namespace, "events", {"spec": {"cluster": {"shards": 3}}})
        eventually(lambda: "events-shard-3" not in statefulsets(api, namespace), timeout=90,
                   what="shard-3 StatefulSet deleted")
        with pytest.raises(ApiException):
            client.PolicyV1Api(api.api).read_namespaced_pod_disruption_budget("events-shard-3", namespace)
        env.remove_shard(3)
        eventually(lambda: balanced(shards_status(api, namespace), 3) and ready(api, namespace), timeout=60,
                   what="3 balanced shards")
        assert "ShardRemoved" in {e.reason for e in api.events(namespace, "events")}
        shards = shards_status(api, namespace)
        eventually(lambda: stream_shard(api, namespace) == owner_of_slot(shards, slot), timeout=20,
                   what="status.streams[0].shard after the scale-in")
        progressing = api.condition(namespace, "events", "Progressing")
        assert progressing is not None
        assert progressing["status"] == "False"

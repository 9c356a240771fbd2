"""Sentinel mode end to end on one machine: the operator runs in-process against the real API server,
the Pod objects come from the StatefulSet controller, and real redis-server / redis-sentinel processes
(started from the same rendered configuration) play those pods on loopback addresses."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "redis"))
from sentinel_env import SentinelEnv

from redis_messaging.api import models
from redis_messaging.builders.names import Owner

pytestmark = pytest.mark.redis

PASSWORD = "kube-failover-Pa55word"
SPEC: dict[str, Any] = {
    "auth": {"secretName": "orders-password"},
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
    "monitoring": {"exporter": {"enabled": False}},
}


@pytest.fixture
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def redis_pods(namespace: str, tmp_path: Path) -> Iterator[SentinelEnv]:
    owner = Owner(name="orders", namespace=namespace)
    with SentinelEnv(models.parse_spec(SPEC), owner, tmp_path / "pods", password=PASSWORD) as env:
        env.start()
        env.wait_replication(timeout=30)
        yield env


def role_labels(api: Api, namespace: str) -> dict[str, str | None]:
    pods = api.core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=redis").items
    return {p.metadata.name: (p.metadata.labels or {}).get("redis-messaging.dev/role") for p in pods}


def test_labels_and_status_follow_a_failover(api: Api, namespace: str, control_plane: ControlPlane,
                                             redis_pods: SentinelEnv, operator_kubeconfig: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not control_plane.has_controller_manager:
        pytest.skip("needs kube-controller-manager (StatefulSet controller) from .ci/control-plane.sh")
    env = redis_pods
    address_map = tmp_path / "addresses.json"
    address_map.write_text(json.dumps({
        "redis": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.redis_pods},
        "sentinel": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.sentinel_pods},
    }))
    monkeypatch.setenv("REDIS_MESSAGING_ADDRESS_MAP", str(address_map))
    api.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="orders-password"), string_data={"password": PASSWORD}))

    with operator_running(namespace):
        api.create(namespace, rmsg("orders", SPEC))
        eventually(lambda: len(role_labels(api, namespace)) == 3, timeout=30, what="redis pods created")
        eventually(lambda: api.mark_pods_ready(namespace, "app.kubernetes.io/instance=orders") == 6, timeout=10)
        eventually(lambda: role_labels(api, namespace) == {
            "orders-redis-0": "master", "orders-redis-1": "replica", "orders-redis-2": "replica"},
            timeout=30, what="role labels on the pods")
        ready = eventually(lambda: (c := api.condition(namespace, "orders", "Ready")) and c["status"] == "True" and c,
                           timeout=60, what="Ready")
        assert "redis 3/3 ready" in ready["message"]
        assert api.get(namespace, "orders")["status"]["master"] == "orders-redis-0"

        env.kill("orders-redis-0")
        new_master = eventually(
            lambda: next((p for p, r in role_labels(api, namespace).items() if r == "master" and p != "orders-redis-0"),
                         None),
            timeout=20, what="the master label on the promoted replica")
        # the new master is labelled first (the master Service must not point nowhere), the old one next
        eventually(lambda: role_labels(api, namespace)["orders-redis-0"] == "replica", timeout=5,
                   what="the replica label on the old master")
        labels = role_labels(api, namespace)
        assert list(labels.values()).count("master") == 1
        eventually(lambda: api.get(namespace, "orders")["status"].get("master") == new_master, timeout=5,
                   what="status.master")
        switched = eventually(lambda: next((e for e in api.events(namespace, "orders") if e.reason == "MasterSwitched"),
                                           None), timeout=10, what="MasterSwitched event")
        millis = int(re.search(r"in (\d+) ms", switched.message).group(1))  # type: ignore[union-attr]
        assert millis < 500, switched.message
        env.restart("orders-redis-0")  # the StatefulSet brings the pod back: it rejoins as a replica
        eventually(lambda: (c := api.condition(namespace, "orders", "Ready")) and c["status"] == "True",
                   timeout=60, what="Ready again")

        def one_master_as_in_status() -> bool:
            labels = role_labels(api, namespace)
            masters = [p for p, r in labels.items() if r == "master"]
            return masters == [api.get(namespace, "orders")["status"].get("master")]

        eventually(one_master_as_in_status, timeout=20, what="one master label, the one status.master names")

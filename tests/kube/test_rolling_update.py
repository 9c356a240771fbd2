"""A rolling update through the running operator: real API server and StatefulSet controller, real
redis-server / redis-sentinel processes playing the pods (SentinelEnv, reached through
REDIS_MESSAGING_ADDRESS_MAP), and the test playing the kubelet: a deleted Pod's process is stopped,
the Pod the StatefulSet controller re-creates is started and reported Ready.

A spec change (redis.conf and the Sentinel monitor settings) makes every pod outdated; the operator
replaces them in order, one at a time, with one switch-over, while a writer appends with WAIT 1:
no acknowledged write is lost. Printed: the roll's duration and the write unavailability.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from redis.exceptions import RedisError
from redis.sentinel import Sentinel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "redis"))
from sentinel_env import SentinelEnv

from redis_messaging.api import models
from redis_messaging.builders.names import Owner

pytestmark = pytest.mark.redis

PASSWORD = "kube-rolling-Pa55word"
SPEC: dict[str, Any] = {
    "auth": {"secretName": "orders-password"},
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
    "monitoring": {"exporter": {"enabled": False}},
}
CHANGE = {"spec": {"redis": {"config": {"repl-diskless-sync-delay": "0", "hz": "20"}},
                   "sentinel": {"parallelSyncs": 2}}}


@pytest.fixture
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def pods(namespace: str, tmp_path: Path) -> Iterator[SentinelEnv]:
    owner = Owner(name="orders", namespace=namespace)
    with SentinelEnv(models.parse_spec(SPEC), owner, tmp_path / "pods", password=PASSWORD) as env:
        env.start()
        env.wait_replication(timeout=30)
        yield env


class Kubelet:
    """Plays the kubelet for the Pod objects: stop the process of a deleted Pod, start the one of a
    re-created Pod and report it Ready once its readiness probe passes."""

    def __init__(self, api: Api, namespace: str, env: SentinelEnv) -> None:
        self.api, self.namespace, self.env = api, namespace, env
        self.uids: dict[str, str] = {}
        self.replaced: list[str] = []

    def pods(self) -> dict[str, Any]:
        items = self.api.core.list_namespaced_pod(self.namespace, label_selector="app.kubernetes.io/instance=orders")
        return {p.metadata.name: p for p in items.items if not p.metadata.deletion_timestamp}

    def ready(self, name: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.api.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Running", "podIP": "127.0.0.1", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}})

    def adopt(self) -> None:
        for name, pod in self.pods().items():
            self.uids[name] = pod.metadata.uid
            self.ready(name)

    def tick(self) -> None:
        live = self.pods()
        for name in self.env.pod_names:
            pod = live.get(name)
            if pod is None:
                if self.env.is_running(name):
                    self.env.kill(name, 15, timeout=15)  # SIGTERM: the container stops
                continue
            if pod.metadata.uid != self.uids.get(name):
                self.uids[name] = pod.metadata.uid
                self.env.restart(name)
                self.env.wait_ready(name, timeout=30)
                self.ready(name)
                self.replaced.append(name)


class Writer(threading.Thread):
    def __init__(self, env: SentinelEnv) -> None:
        super().__init__(daemon=True)
        self.sentinel = Sentinel([env.address(p) for p in env.sentinel_pods], socket_timeout=1,
                                 sentinel_kwargs={"password": PASSWORD, "socket_timeout": 1})
        self.acked: list[str] = []
        self.down_since: float | None = None
        self.unavailable = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        master = self.sentinel.master_for("orders", password=PASSWORD, socket_timeout=1, socket_connect_timeout=1)
        while not self.stop.is_set():
            try:
                entry = master.xadd("rolling", {"n": str(len(self.acked))})
                acked = int(master.execute_command("WAIT", 1, 1000)) >= 1
            except (RedisError, OSError):
                acked, entry = False, None
            if acked:
                self.acked.append(entry.decode() if isinstance(entry, bytes) else str(entry))
                if self.down_since is not None:
                    self.unavailable += time.monotonic() - self.down_since
                    self.down_since = None
            else:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                time.sleep(0.02)
            time.sleep(0.003)
        master.close()


def test_spec_change_rolls_every_pod_in_order_without_losing_a_write(
        api: Api, namespace: str, control_plane: ControlPlane, pods: SentinelEnv, operator_kubeconfig: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not control_plane.has_controller_manager:
        pytest.skip("needs kube-controller-manager (StatefulSet controller) from .ci/control-plane.sh")
    env = pods
    address_map = tmp_path / "addresses.json"
    address_map.write_text(json.dumps({
        "redis": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.redis_pods},
        "sentinel": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.sentinel_pods},
    }))
    monkeypatch.setenv("REDIS_MESSAGING_ADDRESS_MAP", str(address_map))
    monkeypatch.setenv("REDIS_MESSAGING_RESYNC_SECONDS", "1")
    api.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="orders-password"), string_data={"password": PASSWORD}))
    kubelet = Kubelet(api, namespace, env)

    with operator_running(namespace):
        api.create(namespace, rmsg("orders", SPEC))
        eventually(lambda: len(kubelet.pods()) == 6, timeout=30, what="pods created")
        kubelet.adopt()
        eventually(lambda: (c := api.condition(namespace, "orders", "RollingUpdate")) and c["reason"] == "UpToDate",
                   timeout=60, what="RollingUpdate=UpToDate")
        master = env.wait_replication()
        writer = Writer(env)
        writer.start()
        started = time.monotonic()
        try:
            time.sleep(0.5)
            api.patch(namespace, "orders", CHANGE)
            deadline = time.monotonic() + 240  # alone on a 2-core machine: about 15 s
            while True:
                kubelet.tick()
                cond = api.condition(namespace, "orders", "RollingUpdate") or {}
                if len(set(kubelet.replaced)) == 6 and cond.get("reason") == "UpToDate":
                    break
                assert time.monotonic() < deadline, (kubelet.replaced, cond, env.log_tail(*env.sentinel_pods))
                time.sleep(0.1)
            rolled = time.monotonic() - started
            time.sleep(0.5)
        finally:
            writer.stop.set()
            writer.join(10)
        events = sorted((e for e in api.events(namespace, "orders") if e.reason.startswith("RollingUpdate")),
                        key=lambda e: (e.first_timestamp, e.metadata.creation_timestamp))

    sentinels = sorted(env.sentinel_pods, reverse=True)
    replicas = sorted((p for p in env.redis_pods if p != master), reverse=True)
    assert kubelet.replaced == [*sentinels, *replicas, master]
    switchovers = [e for e in events if e.reason == "RollingUpdateSwitchover" and "Switching" in e.message]
    assert len(switchovers) == 1
    assert master in switchovers[0].message
    restarts = [e.message for e in events if e.reason == "RollingUpdate"]
    assert len(restarts) == 6
    assert all("config hash" in m for m in restarts), restarts
    new_master = env.wait_replication(timeout=30)
    assert new_master != master
    found = {e[0] for e in env.client(new_master).xrange("rolling")}
    assert [e for e in writer.acked if e not in found] == []
    epoch = env.client(env.sentinel_pods[0]).execute_command("SENTINEL", "MASTER", "orders")
    fields = dict(zip(epoch[::2], epoch[1::2], strict=True)) if isinstance(epoch, list) else epoch
    assert int(fields["config-epoch"]) == 1  # one failover
    print(f"\nrolling update through the operator: 6 pods in {rolled:.1f}s, {len(writer.acked)} writes "
          f"acknowledged, none lost, writes unavailable {writer.unavailable:.2f}s in all")

"""The runtime through the running operator on a real API server: what wakes a pass, what a slow
resource costs the others, and what a deleted resource leaves behind."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Api, eventually, install_crd, operator_running, redis_server_helper, rmsg
from kubernetes import client
from leaks import open_sockets, threads_named

from redis_messaging.runtime import operator as runtime

PASSWORD = "runtime-test-Pa55"
DEPLOYMENT = "billing-worker"


_server = redis_server_helper()


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


def figure(text: str) -> None:
    """A measured figure, collected by conftest.py into the run's summary. Printed through the real
    stdout: while the operator runs in-process, Kopf's runner holds sys.stdout."""
    stream = sys.__stdout__
    if stream is not None:
        stream.write(f"[runtime] {text}\n")
        stream.flush()


def current() -> runtime.Operator:
    op = eventually(runtime.current, what="the running operator")
    assert op is not None
    return op



POOLS = ("asyncio_", "ThreadPoolExecutor-", "pass_", "autoscale_")


def pool_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(POOLS))


def own_threads() -> int:
    """Threads other than those of bounded pools that grow on first use and are kept (the pass and
    autoscale workers, the event loop's default executor, Kopf's and other ThreadPoolExecutors): a
    resource's threads are what must go."""
    return sum(1 for t in threading.enumerate()
               if not t.name.startswith(POOLS))


def test_a_pod_that_becomes_ready_wakes_its_owners_pass_within_a_second(
        api: Api, namespace: str, needs_controllers: None, operator_kubeconfig: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MESSAGING_RESYNC_SECONDS", "300")  # only the pod's change can explain a pass
    with operator_running(namespace):
        api.create(namespace, rmsg("orders", {"redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1}}))
        eventually(lambda: len(api.core.list_namespaced_pod(namespace).items) == 2, timeout=30, what="2 pods")
        eventually(lambda: (c := api.condition(namespace, "orders", "Ready")) and "0/1" in c["message"],
                   what="Ready=False waiting for the pods")
        controller = current().controller(namespace, "orders")
        assert controller is not None
        eventually(lambda: controller not in current().passes.running(), what="no pass under way")
        passes = controller.passes
        marked = time.monotonic()
        assert api.mark_pods_ready(namespace, "app.kubernetes.io/instance=orders") == 2
        eventually(lambda: controller.passes > passes, timeout=5, interval=0.01, what="a pass after the change")
        woke = time.monotonic() - marked
        figure(f"a pod Ready -> its owner's pass done in {woke * 1000:.0f} ms")
        assert woke < 1.0, f"the pass came {woke:.2f}s after the pods became Ready"


def test_a_resource_whose_pods_never_answer_delays_neither_passes_nor_ticks_of_another(
        api: Api, namespace: str, needs_controllers: None, operator_kubeconfig: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    silent = socket.socket()  # accepts connections and never answers: every command waits its timeout
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    stuck_at = f"127.0.0.1:{silent.getsockname()[1]}"
    closed = f"127.0.0.1:{_server.free_port()}"
    with _server.start_redis(tmp_path / "redis") as server:
        plain = server.client()
        plain.config_set("requirepass", PASSWORD)
        plain.close()
        address_map = tmp_path / "addresses.json"
        address_map.write_text(json.dumps({
            "redis": {f"{namespace}/fine-redis-0": f"{server.host}:{server.port}",
                      **{f"{namespace}/stuck-redis-{i}": stuck_at for i in range(3)}},
            "sentinel": {f"{namespace}/fine-sentinel-0": closed,
                         **{f"{namespace}/stuck-sentinel-{i}": stuck_at for i in range(3)}},
        }))
        for key, value in {"ADDRESS_MAP": str(address_map), "REDIS_TIMEOUT_SECONDS": "2",
                           "RESYNC_SECONDS": "300", "AUTOSCALE_TICK_SECONDS": "1",
                           "METRICS_PORT": "0"}.items():
            monkeypatch.setenv(f"REDIS_MESSAGING_{key}", value)
        api.core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name="fine-pass"), string_data={"password": PASSWORD}))
        api.apps.create_namespaced_deployment(namespace, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": DEPLOYMENT}},
                     "template": {"metadata": {"labels": {"app": DEPLOYMENT}},
                                  "spec": {"containers": [{"name": "w", "image": "busybox:1.36"}]}}}})
        with operator_running(namespace):
            api.create(namespace, rmsg("stuck", {"redis": {"replicas": 3}, "sentinel": {"replicas": 3, "quorum": 2}}))
            api.create(namespace, rmsg("fine", {
                "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1},
                "auth": {"secretName": "fine-pass"},
                "streams": [{"name": "orders", "groups": [{"name": "billing", "autoscale": {
                    "target": {"name": DEPLOYMENT}, "maxReplicas": 5, "backlogPerReplica": 10}}]}]}))
            r = server.client(password=PASSWORD, decode_responses=True)
            eventually(lambda: r.exists("orders") and r.xinfo_groups("orders"), timeout=60, what="the group")
            op = current()
            stuck = op.controller(namespace, "stuck")
            fine = op.controller(namespace, "fine")
            assert stuck is not None
            assert fine is not None

            # 1. A spec change of the resource that answers, while the other one's pass hangs
            eventually(lambda: stuck in op.passes.running(), timeout=30, interval=0.01, what="the stuck pass")
            edited = time.monotonic()
            api.patch(namespace, "fine", {"spec": {"redis": {"config": {"maxmemory": "64mb"}}}})

            def configmap_updated() -> bool:
                found = api.core.read_namespaced_config_map("fine-config", namespace)
                return "maxmemory 64mb" in (found.data or {}).get("redis.conf", "")

            eventually(configmap_updated, timeout=10, interval=0.02, what="the edit applied")
            applied = time.monotonic() - edited
            still_stuck = stuck in op.passes.running()

            # 2. A backlog crossing its target, while the other resource's tick hangs as well
            scaled = threading.Event()
            op.autoscaler.on_scaled = lambda _: scaled.set()
            crossed = time.monotonic()
            pipe = r.pipeline(transaction=False)
            for i in range(25):
                pipe.xadd("orders", {"n": str(i)})
            pipe.execute()
            assert scaled.wait(10), "no scale patch"
            to_patch = time.monotonic() - crossed
            op.autoscaler.on_scaled = None
            r.close()
            figure(f"with a resource whose 6 pods never answer (2 s timeout each): edit -> applied "
                  f"{applied * 1000:.0f} ms (the slow pass still running: {still_stuck}); backlog -> scale patch "
                  f"{to_patch * 1000:.0f} ms (tick 1 s)")
            assert applied < 1.5, f"the edit waited {applied:.2f}s behind the slow resource"
            assert to_patch < 1.0 + 0.5 + 0.5, f"the scale waited {to_patch:.2f}s behind the slow resource"
    silent.close()


def test_resources_created_and_deleted_in_a_loop_leave_nothing_behind(
        api: Api, namespace: str, operator_kubeconfig: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"127.0.0.1:{_server.free_port()}"  # every pod: refused at once
    names_ = ["warmup"] + [f"r{round_}-{i}" for round_ in range(5) for i in range(4)]
    address_map = tmp_path / "addresses.json"
    address_map.write_text(json.dumps({
        "redis": {f"{namespace}/{n}-redis-{i}": closed for n in names_ for i in range(3)},
        "sentinel": {f"{namespace}/{n}-sentinel-{i}": closed for n in names_ for i in range(3)},
    }))
    monkeypatch.setenv("REDIS_MESSAGING_ADDRESS_MAP", str(address_map))
    monkeypatch.setenv("REDIS_MESSAGING_METRICS_PORT", "0")
    with operator_running(namespace):
        op = current()
        api.create(namespace, rmsg("warmup"))
        eventually(lambda: (c := op.controller(namespace, "warmup")) and c.passes > 0, what="a first pass")
        api.delete(namespace, "warmup")
        eventually(lambda: op.controller(namespace, "warmup") is None, what="the warm-up resource forgotten")
        time.sleep(1.0)
        threads, sockets, pooled = own_threads(), open_sockets(), pool_threads()
        for round_ in range(5):
            names = [f"r{round_}-{i}" for i in range(4)]
            for name in names:
                api.create(namespace, rmsg(name))
            for name in names:
                eventually(lambda n=name: (c := op.controller(namespace, n)) and c.passes > 0 and c.watch is not None,
                           what=f"{name}'s first pass and watch")
            for name in names:
                api.delete(namespace, name)
            eventually(lambda ns=names: all(op.controller(namespace, n) is None for n in ns), what="all forgotten")
        assert op.autoscaler.resources() == []
        # A watch thread ends after its current connection attempt, which may be a name lookup of a
        # Sentinel that has no DNS record (getaddrinfo has no timeout of its own): on a loaded machine
        # that can take a minute.
        try:
            eventually(lambda: own_threads() <= threads, timeout=120, what=f"threads back to {threads}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {sorted(t.name for t in threading.enumerate())}") from None
        # a pool thread started since keeps its API connection: one socket each
        eventually(lambda: open_sockets() <= sockets + 2 + max(0, pool_threads() - pooled), timeout=15,
                   what=f"sockets back to {sockets} (now {open_sockets()}, pool threads {pooled} -> {pool_threads()})")
        assert not threads_named("failover-watch")

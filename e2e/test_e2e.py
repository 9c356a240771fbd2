"""The operator in a real cluster (kind through e2e/run-kind.sh): installed by the chart, running the
image, serving resources with real pods, volumes, Sentinels and failovers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import PLURAL, Cluster, eventually, resource
from tls_certs import authority

from redis_messaging.api.models import DEFAULT_IMAGE
from redis_messaging.redis import engine

REDIS_IMAGE = os.environ.get("E2E_REDIS_IMAGE", DEFAULT_IMAGE)  # what a resource that names none runs
SPEC: dict[str, Any] = {
    "mode": "sentinel",
    "image": REDIS_IMAGE,
    "redis": {"replicas": 3},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 3000},
    "persistence": {"mode": "aof", "storage": {"size": "1Gi"}},
}
READY_TIMEOUT = 300.0


def ready(cluster: Cluster, namespace: str, name: str = "orders", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster.apply(namespace, resource(name, spec or SPEC))
    eventually(lambda: (c := cluster.condition(namespace, name, "Ready")) and c["status"] == "True",
               timeout=READY_TIMEOUT, interval=2, what=f"{name} Ready")
    return cluster.get(namespace, PLURAL, name)


def test_sentinel_resource_becomes_ready(cluster: Cluster, namespace: str) -> None:
    body = ready(cluster, namespace)
    status = body["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"]
    if REDIS_IMAGE == DEFAULT_IMAGE:  # the default image's engine is what runs
        wanted = engine.engine_of_image(DEFAULT_IMAGE)
        running = engine.parse_summary(status.get("engine", ""))
        assert wanted is not None
        assert [(e.name, e.release) for e in running] == [(wanted.name, wanted.release)], status
    master = status["master"]
    assert cluster.masters(namespace, "orders") == [master]
    info = cluster.redis_cli(namespace, master, "INFO", "replication")
    assert "role:master" in info
    assert "connected_slaves:2" in info
    table = cluster.kubectl("get", "rmsg", "-n", namespace)
    assert "orders" in table
    assert "True" in table
    connection = json.loads(cluster.kubectl("get", "secret", "orders-connection", "-n", namespace, "-o", "json"))
    assert {"host", "port", "sentinelHost", "masterName", "password", "url"} <= set(connection["data"])
    pvcs = json.loads(cluster.kubectl("get", "pvc", "-n", namespace, "-o", "json"))["items"]
    assert sorted(p["status"]["phase"] for p in pvcs) == ["Bound"] * 3


def test_written_data_survives_deleting_the_master_pod(cluster: Cluster, namespace: str) -> None:
    old = ready(cluster, namespace)["status"]["master"]
    script = "for i = 1, 1000 do redis.call('SET', 'key:' .. i, i) end return 1000"
    assert cluster.redis_cli(namespace, old, "EVAL", script, "0") == "1000"
    acked = int(cluster.redis_cli(namespace, old, "WAIT", "2", "10000"))
    assert acked >= 1, "no replica acknowledged the writes"

    cluster.kubectl("delete", "pod", old, "-n", namespace, "--wait=false")

    def followed() -> str | None:
        new = cluster.get(namespace, PLURAL, "orders")["status"].get("master")
        return new if new and new != old and cluster.masters(namespace, "orders") == [new] else None

    new = eventually(followed, timeout=90, interval=0.5, what="status.master and role label follow the failover")
    assert "role:master" in cluster.redis_cli(namespace, new, "INFO", "replication")
    assert cluster.redis_cli(namespace, new, "DBSIZE") == "1000"
    assert cluster.redis_cli(namespace, new, "GET", "key:1000") == "1000"
    # The deleted pod comes back as a replica of the new master; the resource is Ready again. (Ready may
    # still be the True of before the deletion for a moment: the pod's answer is what says it is back.)
    def rejoined() -> bool:
        ready = (c := cluster.condition(namespace, "orders", "Ready")) is not None and c["status"] == "True"
        return ready and "role:slave" in cluster.redis_cli(namespace, old, "INFO", "replication")

    eventually(rejoined, timeout=READY_TIMEOUT, interval=2,
               what="the deleted pod back as a replica, and the resource Ready again")
    assert cluster.masters(namespace, "orders") == [new]


def test_tls_everywhere_and_a_failover_keeps_the_data(cluster: Cluster, namespace: str,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """spec.tls from a Secret: every pod serves TLS only, the operator and the Sentinels follow a
    failover over TLS, and applications get the CA from the connection Secret."""
    headless = [f"*.orders-{c}-headless.{namespace}.svc.cluster.local" for c in ("redis", "sentinel")]
    pair = authority(tmp_path_factory.mktemp("ca")).issue("orders", dns=(*headless, "localhost"))
    cluster.apply(namespace, {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                              "metadata": {"name": "orders-tls"}, "stringData": pair.files()})
    started = time.monotonic()
    old = ready(cluster, namespace, spec={**SPEC, "tls": {"enabled": True, "secretName": "orders-tls"}})
    created = time.monotonic() - started
    master = old["status"]["master"]
    config = cluster.redis_cli(namespace, master, "CONFIG", "GET", "port")
    assert config.split() == ["port", "0"], "no plain-text port"
    connection = json.loads(cluster.kubectl("get", "secret", "orders-connection", "-n", namespace, "-o", "json"))
    assert "ca.crt" in connection["data"]
    script = "for i = 1, 500 do redis.call('SET', 'key:' .. i, i) end return 500"
    assert cluster.redis_cli(namespace, master, "EVAL", script, "0") == "500"
    assert int(cluster.redis_cli(namespace, master, "WAIT", "2", "10000")) >= 1

    cluster.kubectl("delete", "pod", master, "-n", namespace, "--wait=false")
    deleted = time.monotonic()

    def followed() -> str | None:
        new = cluster.get(namespace, PLURAL, "orders")["status"].get("master")
        return new if new and new != master and cluster.masters(namespace, "orders") == [new] else None

    new = eventually(followed, timeout=90, interval=0.5, what="the failover followed over TLS")
    moved = time.monotonic() - deleted
    assert cluster.redis_cli(namespace, new, "DBSIZE") == "500"
    eventually(lambda: (c := cluster.condition(namespace, "orders", "Ready")) and c["status"] == "True",
               timeout=READY_TIMEOUT, interval=2, what="Ready again after the failover")
    print(f"\n[e2e] tls: Ready {created:.1f}s after apply; master pod deleted -> {new} named after "
          f"{moved:.1f}s, Ready again after {time.monotonic() - deleted:.1f}s")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"redis": {"replicas": 0}}, "should be greater than or equal to 1"),
        ({"sentinel": {"replicas": 3, "quorum": 4}}, "sentinel.quorum must not exceed sentinel.replicas"),
        ({"mode": "standalone"}, 'Unsupported value: "standalone"'),
        ({"redis": {"replicaCount": 3}}, "replicaCount"),
    ],
    ids=["zero replicas", "quorum above sentinels", "unknown mode", "misspelled field"],
)
def test_bad_resource_is_refused_by_kubectl_apply(cluster: Cluster, namespace: str, spec: dict[str, Any],
                                                  message: str) -> None:
    result = cluster.apply(namespace, resource("broken", spec), check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert "broken" not in cluster.kubectl("get", "rmsg", "-n", namespace)


def test_cluster_mode_scales_out_without_losing_keys(cluster: Cluster, namespace: str) -> None:
    spec = {"mode": "cluster", "image": REDIS_IMAGE, "cluster": {"shards": 3, "replicasPerShard": 1},
            "persistence": {"storage": {"size": "1Gi"}}}
    body = ready(cluster, namespace, "events", spec)
    first = body["status"]["shards"][0]["master"]
    # 1000 keys under one hash tag: one slot, so one script can write them (-c follows MOVED)
    write = "for i = 1, 1000 do redis.call('SET', '{k}' .. i, i) end return 1000"
    count = "return #redis.call('KEYS', '{k}*')"
    cluster.redis_cli(namespace, first, "-c", "EVAL", write, "1", "{k}")
    cluster.kubectl("patch", "rmsg", "events", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"cluster": {"shards": 4}}}))

    def spread() -> bool:
        shards = cluster.get(namespace, PLURAL, "events")["status"].get("shards") or []
        return len(shards) == 4 and all(s.get("slots") for s in shards)

    eventually(spread, timeout=READY_TIMEOUT, interval=2, what="slots spread over 4 shards")
    assert cluster.redis_cli(namespace, first, "-c", "EVAL", count, "1", "{k}").strip() == "1000"


def test_the_valkey_example_runs_and_moves_slots_atomically(cluster: Cluster, namespace: str) -> None:
    """examples/valkey-cluster.yaml as written: Valkey 9 serves it, and a scale-out moves slots with the
    engine's atomic migration, every key still there."""
    path = Path(__file__).resolve().parents[1] / "examples" / "valkey-cluster.yaml"
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "RedisMessaging")
    name = doc["metadata"]["name"]
    body = ready(cluster, namespace, name, doc["spec"])
    assert body["status"]["engine"].startswith("valkey 9."), body["status"]
    first = body["status"]["shards"][0]["master"]
    # 2000 keys over every shard's slots: redis-cli -c reads the commands from its input, following MOVED.
    script = 'i=0; while [ $i -lt 2000 ]; do echo "SET key:$i $i"; i=$((i+1)); done | redis-cli -c $tls'
    answers = [line for line in cluster.redis_cli_script(namespace, first, script).splitlines()
               if not line.startswith("-> Redirected")]
    assert answers == ["OK"] * 2000, answers[-20:]
    cluster.kubectl("patch", "rmsg", name, "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"cluster": {"shards": 4}}}))

    def spread() -> bool:
        shards = cluster.get(namespace, PLURAL, name)["status"].get("shards") or []
        return len(shards) == 4 and all(s.get("slots") for s in shards)

    eventually(spread, timeout=READY_TIMEOUT, interval=2, what="slots spread over 4 shards")
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    moved = [e["message"] for e in events if e.get("reason") == "SlotsMigrated"]
    assert moved, f"no SlotsMigrated Event:\n{cluster.events(namespace)}"
    assert all("atomically" in m for m in moved), moved
    script = 'i=0; while [ $i -lt 2000 ]; do echo "GET key:$i"; i=$((i+1)); done | redis-cli -c $tls'
    values = [line for line in cluster.redis_cli_script(namespace, first, script).splitlines()
              if not line.startswith("-> Redirected")]  # redis-cli -c says where it follows MOVED
    assert values == [str(i) for i in range(2000)], f"{sum(1 for v in values if v.isdigit())} of 2000 keys read back"


def test_consumers_scale_with_the_backlog(cluster: Cluster, namespace: str) -> None:
    consumers = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "billing-worker"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "billing-worker"}},
                 "template": {"metadata": {"labels": {"app": "billing-worker"}},
                              "spec": {"containers": [{"name": "worker", "image": REDIS_IMAGE,
                                                       "command": ["sleep", "infinity"]}]}}},
    }
    cluster.apply(namespace, consumers)
    spec = {**SPEC, "streams": [{"name": "orders", "groups": [{"name": "billing", "autoscale": {
        "target": {"kind": "Deployment", "name": "billing-worker"},
        "minReplicas": 0, "maxReplicas": 5, "backlogPerReplica": 10}}]}]}
    master = ready(cluster, namespace, spec=spec)["status"]["master"]
    cluster.redis_cli(namespace, master, "EVAL",
                      "for i = 1, 200 do redis.call('XADD', 'orders', '*', 'n', i) end return 200", "0")
    eventually(lambda: cluster.get(namespace, "deployment", "billing-worker")["spec"]["replicas"] == 5,
               timeout=30, interval=0.5, what="consumers scaled to maxReplicas on a backlog of 200")

    def reported() -> dict[str, Any] | None:
        streams = cluster.get(namespace, PLURAL, "orders")["status"].get("streams") or []
        group = streams[0]["groups"][0] if streams else None
        return group if group and group.get("lag") == 200 else None

    group = eventually(reported, timeout=30, interval=1, what="status.streams reports the backlog")
    assert group["desiredReplicas"] == 5

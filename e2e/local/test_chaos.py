"""Chaos on the local cluster (E2E_BACKEND=local only): what a kind cluster cannot easily do to a pod.

- a network partition of the master pod (its veth taken off the bridge: packets dropped, no reset),
  and a frozen master (SIGSTOP of its processes);
- a full restart: every redis and Sentinel pod deleted at once;
- the operator SIGKILLed in the middle of creating a resource, and again while a failover happens;
- consumers (the operator image's `redis_messaging.consumer`) scaled by the backlog while one of them
  is SIGKILLed mid-work.

Each ends with the same proof: the data written (and acknowledged by a replica) before is all there,
exactly one Redis says it is the master, the others replicate from it, and the role labels and
`status.master` name that one.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from typing import Any

import pytest
from e2e_support import AUTH_FILE, PLURAL, Cluster, eventually, resource

REDIS_IMAGE = "redis:7.2"
SPEC: dict[str, Any] = {
    "mode": "sentinel",
    "image": REDIS_IMAGE,
    "redis": {"replicas": 3},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 3000},
    "persistence": {"mode": "aof", "storage": {"size": "1Gi"}},
}
READY_TIMEOUT = 180.0
NAME = "orders"


# -- helpers -----------------------------------------------------------------------------------------

def is_ready(cluster: Cluster, namespace: str, name: str = NAME) -> bool:
    c = cluster.condition(namespace, name, "Ready")
    return bool(c and c["status"] == "True")


def ready(cluster: Cluster, namespace: str, spec: dict[str, Any] | None = None) -> str:
    """Apply the resource, wait until Ready; the master's pod name."""
    cluster.apply(namespace, resource(NAME, spec or SPEC))
    eventually(lambda: is_ready(cluster, namespace), timeout=READY_TIMEOUT, interval=1, what="Ready")
    return str(cluster.get(namespace, PLURAL, NAME)["status"]["master"])


def info(cluster: Cluster, namespace: str, pod: str) -> dict[str, str]:
    text = cluster.redis_cli(namespace, pod, "INFO", "replication")
    return dict(line.split(":", 1) for line in text.replace("\r", "").splitlines() if ":" in line)


def write(cluster: Cluster, namespace: str, pod: str, prefix: str, count: int) -> None:
    """``count`` keys on ``pod``, acknowledged by at least one replica (WAIT)."""
    script = f"for i = 1, {count} do redis.call('SET', '{prefix}:' .. i, i) end return {count}"
    assert cluster.redis_cli(namespace, pod, "EVAL", script, "0") == str(count)
    acked = int(cluster.redis_cli(namespace, pod, "WAIT", "1", "5000"))
    assert acked >= 1, f"no replica acknowledged the writes of {prefix} on {pod}"


def count(cluster: Cluster, namespace: str, pod: str, prefix: str) -> int:
    script = "return #redis.call('KEYS', ARGV[1])"
    return int(cluster.redis_cli(namespace, pod, "EVAL", script, "0", f"{prefix}:*"))


def redis_pods(cluster: Cluster, namespace: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in cluster.redis_pods(namespace, NAME))


def single_master(cluster: Cluster, namespace: str, *, timeout: float = 120) -> str:
    """Until exactly one Redis is master, every other one replicates from it with its link up, and
    the role labels and status.master name it; returns it."""
    def settled() -> str | None:
        pods = redis_pods(cluster, namespace)
        infos = {p: info(cluster, namespace, p) for p in pods}
        masters = [p for p, i in infos.items() if i.get("role") == "master"]
        assert len(masters) == 1, f"masters by INFO: {masters}"
        master = masters[0]
        for p, i in infos.items():
            if p != master:
                assert i.get("master_host", "").startswith(f"{master}."), f"{p} replicates from {i.get('master_host')}"
                assert i.get("master_link_status") == "up", f"{p}: link {i.get('master_link_status')}"
        assert cluster.masters(namespace, NAME) == [master], f"labels: {cluster.masters(namespace, NAME)}"
        status = cluster.get(namespace, PLURAL, NAME)["status"]
        assert status.get("master") == master, f"status.master {status.get('master')} != {master}"
        return master

    return eventually(settled, timeout=timeout, interval=1, what="a single master, followed by labels and status")


def sentinel_master(cluster: Cluster, namespace: str) -> str | None:
    """The master the Sentinels agree on (a majority of those answering), as a pod name."""
    said = []
    master_name = cluster_master_name(cluster, namespace)
    script = f'REDISCLI_AUTH="$(cat {AUTH_FILE})" exec redis-cli -p 26379 "$@"'
    selector = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=sentinel"
    for p in cluster.items(namespace, "pods", selector):
        try:
            out = cluster.exec(namespace, p["metadata"]["name"], "sentinel", "sh", "-c", script, "redis-cli",
                               "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name).strip()
        except subprocess.CalledProcessError:
            continue
        said.append(out.splitlines()[0].split(".", 1)[0] if out else None)
    votes = [s for s in said if s]
    best = max(set(votes), key=votes.count) if votes else None
    return best if best and votes.count(best) * 2 > len(said) else None


def cluster_master_name(cluster: Cluster, namespace: str) -> str:
    secret = cluster.get(namespace, "secret", f"{NAME}-connection")
    return base64.b64decode(secret["data"]["masterName"]).decode()


@pytest.fixture
def local(local_cluster: Any) -> Any:
    """The local cluster; the operator is running again after the test whatever it did to it."""
    yield local_cluster
    if local_cluster.operator is None or not local_cluster.operator.alive():
        local_cluster.start_operator()


# -- scenarios ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["network", "sigstop"])
def test_partitioned_master_is_replaced_and_rejoins_as_a_replica(cluster: Cluster, namespace: str, local: Any,
                                                                 how: str) -> None:
    applied = time.monotonic()
    old = ready(cluster, namespace)
    created = time.monotonic() - applied
    write(cluster, namespace, old, "before", 1000)
    started = time.monotonic()
    cut, mend = ((local.runner.partition, local.runner.heal) if how == "network"
                 else (local.runner.freeze, local.runner.thaw))
    cut(namespace, old)
    try:
        def moved() -> str | None:
            status = cluster.get(namespace, PLURAL, NAME)["status"]
            new = status.get("master")
            return new if new and new != old and cluster.masters(namespace, NAME) == [new] else None

        new = eventually(moved, timeout=60, interval=0.5, what="status.master and the label moved off the cut pod")
        failover_seconds = time.monotonic() - started
        assert info(cluster, namespace, new)["role"] == "master"
        write(cluster, namespace, new, "during", 500)
        if how == "network":
            # The cut-off master refuses writes once its replicas are lagging (min-replicas-to-write):
            # what it would accept could only be lost when it rejoins.
            def refuses() -> bool:
                try:
                    out = cluster.redis_cli(namespace, old, "SET", "isolated", "1")
                except subprocess.CalledProcessError as exc:
                    out = f"{exc.stdout}{exc.stderr}"
                return "NOREPLICAS" in out

            eventually(refuses, timeout=30, interval=1, what="the isolated master refuses writes")
    finally:
        mend(namespace, old)
    mended = time.monotonic()
    master = single_master(cluster, namespace)
    one_master = time.monotonic() - mended
    assert master == new
    assert info(cluster, namespace, old)["role"] == "slave"
    for pod in redis_pods(cluster, namespace):
        eventually(lambda p=pod: count(cluster, namespace, p, "before") == 1000, timeout=30, what=f"{pod} has all")
        eventually(lambda p=pod: count(cluster, namespace, p, "during") == 500, timeout=30, what=f"{pod} has all")
    eventually(lambda: is_ready(cluster, namespace), timeout=READY_TIMEOUT, interval=1, what="Ready again")
    print(f"\n[chaos] {how}: Ready {created:.1f}s after apply; failover followed after {failover_seconds:.1f}s; "
          f"mended, one master {one_master:.1f}s later; Ready again {time.monotonic() - mended:.1f}s after mending")


def test_full_restart_of_every_pod_keeps_the_data(cluster: Cluster, namespace: str, local: Any) -> None:
    applied = time.monotonic()
    master = ready(cluster, namespace)
    created = time.monotonic() - applied
    write(cluster, namespace, master, "before", 1000)
    cluster.redis_cli(namespace, master, "EVAL",
                      "for i = 1, 300 do redis.call('XADD', 'events', '*', 'n', i) end return 300", "0")
    assert int(cluster.redis_cli(namespace, master, "WAIT", "2", "5000")) == 2
    selector = f"app.kubernetes.io/instance={NAME}"
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.items(namespace, "pods", selector)}
    assert len(before) == 6
    started = time.monotonic()
    cluster.kubectl("delete", "pods", "-n", namespace, "-l", selector, "--wait=false")

    def replaced() -> bool:
        now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.items(namespace, "pods", selector)}
        return set(now) == set(before) and all(now[n] != before[n] for n in now)

    eventually(replaced, timeout=120, interval=1, what="every pod re-created")
    recreated = time.monotonic() - started
    eventually(lambda: is_ready(cluster, namespace), timeout=READY_TIMEOUT, interval=1, what="Ready after the restart")
    ready_again = time.monotonic() - started
    new = single_master(cluster, namespace)
    for pod in redis_pods(cluster, namespace):
        eventually(lambda p=pod: count(cluster, namespace, p, "before") == 1000, timeout=30, what=f"{pod} has all")
        assert cluster.redis_cli(namespace, pod, "XLEN", "events") == "300"
    print(f"\n[chaos] full restart: Ready {created:.1f}s after apply; every pod deleted, re-created after "
          f"{recreated:.1f}s, Ready after {ready_again:.1f}s, master {master} -> {new}, "
          f"settled after {time.monotonic() - started:.1f}s")


def test_operator_killed_mid_operation(cluster: Cluster, namespace: str, local: Any) -> None:
    started = time.monotonic()
    # 1. Killed while it creates the resource's children: a new operator finishes the job.
    cluster.apply(namespace, resource(NAME, SPEC))
    eventually(lambda: cluster.get(namespace, "statefulset", f"{NAME}-redis"), timeout=60, interval=0.2,
               what="the operator started creating children")
    local.kill_operator()
    local.start_operator()
    eventually(lambda: is_ready(cluster, namespace), timeout=READY_TIMEOUT, interval=1, what="Ready")
    old = single_master(cluster, namespace)
    write(cluster, namespace, old, "before", 1000)
    created = time.monotonic() - started

    # 2. Killed while a failover happens: the Sentinels fail over without it, and the next operator
    #    moves the label and status.master to the master they chose, and to no other.
    local.kill_operator()
    cluster.kubectl("delete", "pod", old, "-n", namespace, "--wait=false")
    new = eventually(lambda: (m := sentinel_master(cluster, namespace)) and m != old and m,
                     timeout=90, interval=1, what="the Sentinels chose another master")
    assert cluster.masters(namespace, NAME) == [old] or cluster.masters(namespace, NAME) == [], \
        "nobody should have moved the label without the operator"
    local.start_operator()
    master = single_master(cluster, namespace)
    assert master == new
    for pod in redis_pods(cluster, namespace):
        eventually(lambda p=pod: count(cluster, namespace, p, "before") == 1000, timeout=60, what=f"{pod} has all")
    eventually(lambda: is_ready(cluster, namespace), timeout=READY_TIMEOUT, interval=1, what="Ready again")
    followed = time.monotonic() - started - created

    # 3. Its pod deleted (a drain, an eviction): the Deployment's next pod takes over and follows the
    #    next failover.
    deleted_at = time.monotonic()
    local.await_operator_pod(replacing=local.delete_operator_pod())
    replaced = time.monotonic() - deleted_at
    cluster.kubectl("delete", "pod", master, "-n", namespace, "--wait=false")
    newer = eventually(lambda: (m := sentinel_master(cluster, namespace)) and m != master and m,
                       timeout=90, interval=1, what="the Sentinels chose another master again")
    eventually(lambda: cluster.masters(namespace, NAME) == [newer], timeout=60, interval=0.5,
               what=f"the new operator pod moved the master label to {newer}")
    eventually(lambda: is_ready(cluster, namespace), timeout=READY_TIMEOUT, interval=1, what="Ready once more")
    print(f"\n[chaos] operator killed: creation finished after {created:.1f}s, failover followed after "
          f"{followed:.1f}s; its pod deleted: the next pod ran after {replaced:.1f}s and followed the next failover")


def test_consumers_lose_nothing_when_one_is_killed_mid_work(cluster: Cluster, namespace: str, local: Any) -> None:
    entries = 600
    worker = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "billing-worker"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "billing-worker"}},
                 "template": {"metadata": {"labels": {"app": "billing-worker"}}, "spec": {
                     "terminationGracePeriodSeconds": 30,
                     "containers": [{
                         "name": "worker", "image": "redis-messaging-operator:0.1.0",
                         "command": ["python", "-m", "redis_messaging.consumer"],
                         "env": [
                             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                             {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": f"{NAME}-connection",
                                                                                  "key": "url"}}},
                             {"name": "STREAM", "value": "orders"}, {"name": "GROUP", "value": "billing"},
                             {"name": "HANDLER_SLEEP_MS", "value": "50"},
                             {"name": "RECORD_SET", "value": "processed"},
                             {"name": "CONSUMER_CLAIM_IDLE_MS", "value": "5000"},
                         ]}]}}},
    }
    cluster.apply(namespace, worker)
    spec = {**SPEC, "streams": [{"name": "orders", "groups": [{"name": "billing", "startId": "0", "autoscale": {
        "target": {"kind": "Deployment", "name": "billing-worker"},
        "minReplicas": 0, "maxReplicas": 4, "backlogPerReplica": 50}}]}]}
    master = ready(cluster, namespace, spec)
    started = time.monotonic()
    cluster.redis_cli(namespace, master, "EVAL",
                      f"for i = 1, {entries} do redis.call('XADD', 'orders', '*', 'n', i) end return {entries}", "0")
    eventually(lambda: cluster.get(namespace, "deployment", "billing-worker")["spec"]["replicas"] == 4,
               timeout=30, interval=0.5, what="scaled to maxReplicas")

    def pending_by_consumer() -> dict[str, int]:
        out = cluster.redis_cli(namespace, master, "EVAL",
                                "local r = redis.call('XINFO', 'CONSUMERS', 'orders', 'billing') "
                                "local o = {} for _, c in ipairs(r) do table.insert(o, c[2]) "
                                "table.insert(o, c[4]) end return o", "0")
        values = out.splitlines()
        return {values[i]: int(values[i + 1]) for i in range(0, len(values) - 1, 2)}

    victim = eventually(lambda: next((c for c, n in pending_by_consumer().items() if n > 0), None), timeout=60,
                        interval=0.2, what="a consumer holding entries")
    local.runner.worker(namespace, victim).kill_container("worker", signal.SIGKILL)
    cluster.kubectl("delete", "pod", victim, "-n", namespace, "--grace-period=0", "--force", check=False)

    def all_processed() -> bool:
        processed = int(cluster.redis_cli(namespace, master, "SCARD", "processed"))
        groups = json.loads(cluster.redis_cli(namespace, master, "EVAL",
                                              "return cjson.encode(redis.call('XPENDING', 'orders', 'billing'))", "0"))
        return processed == entries and groups[0] == 0

    eventually(all_processed, timeout=180, interval=1, what=f"all {entries} entries processed and acknowledged")
    consumers = pending_by_consumer()
    assert victim not in consumers or consumers[victim] == 0
    print(f"\n[chaos] consumers: {entries} entries processed with {victim} killed mid-work "
          f"in {time.monotonic() - started:.1f}s")


def test_killed_redis_process_is_restarted_like_the_kubelet_does(cluster: Cluster, namespace: str,
                                                                 local: Any) -> None:
    master = ready(cluster, namespace)
    write(cluster, namespace, master, "before", 200)
    replica = next(p for p in redis_pods(cluster, namespace) if p != master)
    started = time.monotonic()
    local.runner.worker(namespace, replica).kill_container("redis", signal.SIGKILL)

    def pod_ready() -> bool:
        pod = cluster.get(namespace, "pod", replica)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])

    eventually(lambda: not pod_ready(), timeout=10, interval=0.1, what=f"{replica} not ready once its process died")
    eventually(pod_ready, timeout=60, interval=0.5, what=f"{replica} ready again")
    status = next(s for s in cluster.get(namespace, "pod", replica)["status"]["containerStatuses"]
                  if s["name"] == "redis")
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert single_master(cluster, namespace) == master
    assert count(cluster, namespace, replica, "before") == 200
    print(f"\n[chaos] {replica}'s redis-server SIGKILLed: restarted and ready after {time.monotonic() - started:.1f}s")

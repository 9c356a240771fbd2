"""spec.tls with real processes: Redis, replication, Sentinel and the cluster bus on TLS only, with certificates made
by openssl; the operator's topology controller and failover watch speak TLS; a renewal is served
without a restart while an application keeps writing."""

from __future__ import annotations

import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engines
import pytest
import redis
from cluster_env import ClusterEnv, actions_of, heal_until, three_shards
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sentinel_env import SentinelEnv, eventually
from tls_certs import Authority, KeyPair, authority, renew

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.modes.sentinel.topology import SentinelTopology
from redis_messaging.reconcile.tls import Prepared, TlsStep
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis import tls as rtls
from redis_messaging.redis.addresses import MapAddresses

pytestmark = pytest.mark.redis

PASSWORD = "tls-test-Pa55word"
QUICK: dict[str, Any] = {"password": PASSWORD, "socket_timeout": 1, "socket_connect_timeout": 1,
                         "retry": Retry(NoBackoff(), 0)}
OWNER = Owner(name="secure", namespace="shop", uid="uid-secure")
SPEC = models.parse_spec({
    "redis": {"replicas": 3},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
    "tls": {"enabled": True, "secretName": "secure-tls", "authClients": True},
})


class Harness:
    def __init__(self, env: SentinelEnv, ca: Authority, pair: KeyPair) -> None:
        self.env = env
        self.ca = ca
        self.pair = pair
        self.addresses = MapAddresses({p: env.address(p) for p in env.redis_pods},
                                      {p: env.address(p) for p in env.sentinel_pods})
        # What the reconcile pass records from the Secret: the CA, and the key pair (authClients).
        self.addresses.set_tls(OWNER, pair.client_tls(with_key_pair=True))
        self.topology = SentinelTopology(self.addresses, timeout=1.0)

    def wait_healthy(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        report = self.topology.check_and_heal(SPEC, OWNER, [], PASSWORD)
        while not report.healthy:
            assert time.monotonic() < deadline, f"not healthy within {timeout:g}s: {report.reason}: {report.message}"
            time.sleep(0.3)
            report = self.topology.check_and_heal(SPEC, OWNER, [], PASSWORD)
        assert report.master is not None
        return report.master


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    ca = authority(tmp_path / "ca")
    pair = ca.issue("secure-a")
    with SentinelEnv(SPEC, OWNER, tmp_path / "pods", password=PASSWORD, tls=pair) as env:
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        yield Harness(env, ca, pair)


def test_every_link_is_tls_and_plain_text_or_unknown_clients_are_refused(harness: Harness) -> None:
    env = harness.env
    master = harness.wait_healthy()
    assert master == "secure-redis-0"
    stranger = authority(env.base_dir / "other-ca", "other-ca").issue("stranger")
    for pod in env.pod_names:
        # no plain-text port: a plain client gets nothing back
        plain = redis.Redis(*env.address(pod), **QUICK)
        with pytest.raises(RedisError):
            plain.ping()
        plain.close()
        # authClients: a client that verifies the server but has no certificate of ours is refused
        anonymous = redis.Redis(*env.address(pod), **QUICK,
                                **harness.pair.client_tls().redis_options())
        with pytest.raises((RedisError, ssl.SSLError, OSError)):
            anonymous.ping()
        anonymous.close()
        # a client that trusts another CA refuses the server
        wrong = redis.Redis(*env.address(pod), **QUICK,
                            **stranger.redis_kwargs())
        with pytest.raises((RedisError, ssl.SSLError, OSError)):
            wrong.ping()
        wrong.close()
    # replication over TLS: every replica linked, a write acknowledged by both
    client = env.client(master)
    client.set("k", "v")
    assert client.execute_command("WAIT", 2, 5000) == 2  # type: ignore[no-untyped-call]
    for pod in env.redis_pods:
        info = env.info(pod)
        if pod != master:
            assert info["master_link_status"] == "up", (pod, info)
        assert env.client(pod).get("k") == "v"
    # Sentinels reach Redis and each other over TLS: each knows 2 others and the 2 replicas
    for pod in env.sentinel_pods:
        fields = env.client(pod).execute_command("SENTINEL", "MASTER", OWNER.master_name)  # type: ignore[no-untyped-call]
        assert (fields["num-other-sentinels"], fields["num-slaves"], fields["flags"]) == ("2", "2", "master"), fields
    # the config that got there: no plain port, TLS for replication
    conf = env.client(master).config_get("port", "tls-port", "tls-replication", "tls-auth-clients")
    assert conf == {"port": "0", "tls-port": "6379", "tls-replication": "yes", "tls-auth-clients": "yes"}
    # the probes (redis-cli over TLS with the pod's key pair) see the pods ready
    for pod in env.pod_names:
        assert env.probe(pod) == 0, pod


@pytest.mark.xfail(engines.valkey(), reason=engines.SECOND_FAILOVER, strict=False)
def test_failover_over_tls_is_followed_by_the_operator(harness: Harness) -> None:
    env = harness.env
    old = harness.wait_healthy()
    switches: list[rs.SwitchMaster] = []
    stopped = threading.Event()
    conns = rs.Connections(PASSWORD, timeout=0.5, tls=harness.addresses.tls(OWNER))
    sentinels = [env.address(p) for p in env.sentinel_pods]
    watcher = threading.Thread(target=rs.watch_switch_master,
                               args=(conns, lambda: sentinels, OWNER.master_name, switches.append, stopped),
                               daemon=True)
    watcher.start()
    try:
        time.sleep(1.0)  # subscribed
        env.kill(old, signal.SIGKILL)
        new_address = env.sentinel_master(timeout=30, other_than=env.address(old))
        new = env.pod_at(new_address)
        deadline = time.monotonic() + 15
        while not switches and time.monotonic() < deadline:
            time.sleep(0.1)
        assert switches, "the failover watch saw no +switch-master over TLS"
        assert switches[-1].new == new_address
        # min-replicas-to-write: the new master answers NOREPLICAS until Sentinel re-pointed a replica to it
        eventually(lambda: env.client(new).set("after", "failover"), timeout=30,
                   what=f"a write acknowledged by {new}, the new master")
        env.restart(old)
        assert harness.wait_healthy(timeout=45) == new
        env.wait_replication(timeout=30)
        assert env.client(old).get("after") == "failover"
    finally:
        stopped.set()
        watcher.join(5)
        conns.close()


class Writer:
    """An application writing through one TLS connection, and through a new one every 50 writes."""

    def __init__(self, env: SentinelEnv, pod: str) -> None:
        self.env, self.pod = env, pod
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        client = self.env.client(self.pod)
        while not self.stop.is_set() and self.ok < 100_000:
            if self.ok % 50 == 0:
                client.close()
                client = self.env.client(self.pod)
            try:
                client.set(f"w:{self.ok}", self.ok)
                self.ok += 1
            except (RedisError, OSError) as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)
        client.close()


def test_renewed_certificate_is_served_without_a_restart_and_no_write_fails(harness: Harness) -> None:
    env = harness.env
    master = harness.wait_healthy()
    step = TlsStep(None, harness.addresses, timeout=1.0)  # reloading talks to Redis only
    old_leaf = rtls.first_certificate_der(harness.pair.cert.read_text())
    renewed = harness.ca.issue("secure-b")
    new_leaf = rtls.first_certificate_der(renewed.cert.read_text())
    client_tls = harness.addresses.tls(OWNER)
    assert client_tls is not None
    pids = {pod: env.pid(pod) for pod in env.redis_pods}
    open_conn = env.client(master)
    open_conn.ping()

    # nothing to do while the Secret and the processes agree
    assert step.reload(SPEC, OWNER, PASSWORD, Prepared(leaf=old_leaf), env.redis_pods).actions == []

    writer = Writer(env, master)
    writer.thread.start()
    try:
        time.sleep(0.5)
        # The Secret changed, the kubelet has not refreshed the volumes yet: nothing served changes.
        early = step.reload(SPEC, OWNER, PASSWORD, Prepared(leaf=new_leaf), env.redis_pods)
        assert early.actions == []
        assert early.retry_after is not None
        # The kubelet swaps every pod's volume; the next pass reloads each redis-server.
        for pod in env.pod_names:
            renew(env.pod(pod).root / "tls", renewed)
        done = step.reload(SPEC, OWNER, PASSWORD, Prepared(leaf=new_leaf), env.redis_pods)
        assert sorted(done.actions) == sorted(
            f"pod {p} serves the renewed TLS certificate (reloaded without a restart)" for p in env.redis_pods)
        assert done.retry_after is None
        time.sleep(0.5)
    finally:
        writer.stop.set()
        writer.thread.join(10)
    for pod in env.redis_pods:
        assert rtls.served_certificate(env.address(pod), client_tls) == new_leaf, pod
        assert env.pid(pod) == pids[pod], f"{pod} was restarted"
    assert open_conn.ping() is True  # a connection opened before the renewal keeps working
    assert writer.failed == [], writer.failed[:5]
    assert writer.ok > 50
    # replication links survive (they keep their sessions) and the next pass has nothing to do
    env.wait_replication(timeout=10)
    assert step.reload(SPEC, OWNER, PASSWORD, Prepared(leaf=new_leaf), env.redis_pods).actions == []
    print(f"\nwrites during the renewal: {writer.ok}, failed: {len(writer.failed)}")


CLUSTER_OWNER = Owner(name="events", namespace="shop", uid="uid-events")
CLUSTER_SPEC = three_shards(tls={"enabled": True, "secretName": "events-tls"})


def test_cluster_bus_and_clients_on_tls_bootstrap_and_renewal(tmp_path: Path) -> None:
    ca = authority(tmp_path / "ca")
    pair = ca.issue("events-a")
    with ClusterEnv(CLUSTER_SPEC, CLUSTER_OWNER, tmp_path / "pods", password=PASSWORD, tls=pair) as env:
        env.start()
        addresses = env.addresses()
        topology = ClusterTopology(addresses, timeout=1.0)
        reports = heal_until(topology, CLUSTER_SPEC, CLUSTER_OWNER, PASSWORD, timeout=60)
        assert actions_of(reports).count("SlotsAssigned") == 3
        for pod in env.pod_names:
            info = env.cluster_info(pod)
            assert (info["cluster_state"], info["cluster_known_nodes"]) == ("ok", "6"), (pod, info)
            assert env.client(pod).config_get("tls-cluster") == {"tls-cluster": "yes"}
            plain = redis.Redis(*env.address(pod), **QUICK)
            with pytest.raises(RedisError):
                plain.ping()
            plain.close()
        app = env.cluster_client()
        for i in range(300):
            app.set(f"k:{i}", i)
        assert all(app.get(f"k:{i}") == str(i) for i in range(300))

        # renewal: every node serves the new certificate without a restart; the bus keeps its links
        renewed = ca.issue("events-b")
        for pod in env.pod_names:
            renew(env.pod(pod).root / "tls", renewed)
        pids = {pod: env.pod(pod).process.pid for pod in env.pod_names}  # type: ignore[union-attr]
        step = TlsStep(None, addresses, timeout=1.0)
        leaf = rtls.first_certificate_der(renewed.cert.read_text())
        done = step.reload(CLUSTER_SPEC, CLUSTER_OWNER, PASSWORD, Prepared(leaf=leaf), env.pod_names)
        assert len(done.actions) == 6, done
        client_tls = addresses.tls(CLUSTER_OWNER)
        assert client_tls is not None
        for pod in env.pod_names:
            assert rtls.served_certificate(env.address(pod), client_tls) == leaf, pod
            assert env.pod(pod).process.pid == pids[pod]  # type: ignore[union-attr]
        assert all(app.get(f"k:{i}") == str(i) for i in range(300))
        assert topology.check_and_heal(CLUSTER_SPEC, CLUSTER_OWNER, [], PASSWORD).healthy

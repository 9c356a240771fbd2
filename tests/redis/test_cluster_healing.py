"""Cluster mode heals: a killed master is replaced by its replica (the cluster decides), the operator
gives every shard its replicas back when pods return (with their volume or on a new one), forgets
dead node ids, and restores slot coverage when a whole shard lost its data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_env import ClusterEnv, actions_of, heal_until

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.base import TopologyReport
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis import cluster as cl

pytestmark = pytest.mark.redis

PASSWORD = "healing-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")
SPEC = models.parse_spec({
    "mode": "cluster",
    "cluster": {"shards": 3, "replicasPerShard": 1, "nodeTimeout": 1000},
    "redis": {"config": {"repl-diskless-sync-delay": "0"}},
})


class Harness:
    def __init__(self, env: ClusterEnv) -> None:
        self.env = env
        self.topology = ClusterTopology(env.addresses(), timeout=0.5)

    def heal(self, timeout: float = 40.0) -> list[TopologyReport]:
        return heal_until(self.topology, SPEC, OWNER, PASSWORD, timeout=timeout, env=self.env)

    def nodes(self, pod: str) -> list[cl.ClusterNode]:
        return cl.parse_nodes(str(self.env.client(pod).execute_command("CLUSTER", "NODES")))

    def role(self, pod: str) -> str:
        me = next(n for n in self.nodes(pod) if n.myself)
        return "master" if me.is_master else "replica"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with ClusterEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        h = Harness(env)
        h.heal()
        client = env.cluster_client()
        pipe = client.pipeline()
        for i in range(3000):
            pipe.set(f"k{i}", i)
        pipe.execute()
        client.close()
        yield h


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:  # noqa: S110 - a node may not answer yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:g}s")


def shard(report: TopologyReport, index: int) -> dict[str, object]:
    found: dict[str, object] = report.status["shards"][index]
    return found


def test_killed_master_replaced_by_its_replica_then_a_new_node_becomes_its_replica(harness: Harness) -> None:
    h, env = harness, harness.env
    killed_at = time.monotonic()
    env.kill("events-shard-1-0")
    passes = []
    # the operator keeps passing meanwhile and never fights the cluster's own failover
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        passes.append(h.topology.check_and_heal(SPEC, OWNER, [], PASSWORD))
        if h.role("events-shard-1-1") == "master":
            break
        time.sleep(0.2)
    took = time.monotonic() - killed_at
    assert h.role("events-shard-1-1") == "master", "the replica did not take over"
    assert not {"SlotsAssigned", "SlotCoverageFixed", "ReplicaAttached", "NodeForgotten"} & set(actions_of(passes))
    wait_for(lambda: env.cluster_info("events-shard-0-0")["cluster_state"] == "ok", 10, "cluster_state ok")
    # every node learns of the promotion through the cluster bus; under load that takes a moment
    wait_for(lambda: shard(h.topology.check_and_heal(SPEC, OWNER, [], PASSWORD), 1)["master"] == "events-shard-1-1",
             10, "the operator's view of shard 1 names the promoted replica")
    report = h.topology.check_and_heal(SPEC, OWNER, [], PASSWORD)
    assert shard(report, 1)["master"] == "events-shard-1-1"
    assert shard(report, 1)["replicas"] == []
    assert not report.healthy  # a shard without its replica is not as declared

    # the pod comes back on a new, empty volume: a new node, which the operator attaches
    env.wipe("events-shard-1-0")
    env.start(["events-shard-1-0"])
    reports = h.heal()
    assert {"NodeJoined", "NodeForgotten", "ReplicaAttached"} <= set(actions_of(reports))
    final = reports[-1]
    assert shard(final, 1)["master"] == "events-shard-1-1"
    assert shard(final, 1)["replicas"] == ["events-shard-1-0"]
    assert all(len(s["replicas"]) == 1 for s in final.status["shards"])
    for pod in env.pod_names:
        info = env.cluster_info(pod)
        assert info["cluster_known_nodes"] == "6", (pod, info)  # the dead id is forgotten everywhere
        assert info["cluster_state"] == "ok", (pod, info)
    client = env.cluster_client()
    assert [client.get(f"k{i}") for i in range(3000)] == [str(i) for i in range(3000)]
    client.set("after-healing", "1")  # the shard accepts writes again (min-replicas-to-write 1)
    print(f"\nmaster SIGKILLed -> replica promoted seen after {took:.1f}s")


def test_killed_master_restarted_on_its_volume_rejoins_as_a_replica(harness: Harness) -> None:
    h, env = harness, harness.env
    env.kill("events-shard-0-0")
    wait_for(lambda: h.role("events-shard-0-1") == "master", 20, "failover")
    env.start(["events-shard-0-0"])  # nodes.conf on its volume: it knows the cluster, and its new master
    reports = h.heal()
    assert h.role("events-shard-0-0") == "replica"
    assert shard(reports[-1], 0) == {"name": "events-shard-0", "master": "events-shard-0-1",
                                     "replicas": ["events-shard-0-0"], "slots": "0-5461"}
    assert "SlotsAssigned" not in actions_of(reports)


def test_a_shard_that_lost_every_node_and_volume_serves_its_slots_again(harness: Harness) -> None:
    h, env = harness, harness.env
    for pod in ("events-shard-2-0", "events-shard-2-1"):
        env.kill(pod)
        env.wipe(pod)
    wait_for(lambda: env.cluster_info("events-shard-0-0")["cluster_slots_fail"] != "0", 20, "slots failing")
    env.start(["events-shard-2-0", "events-shard-2-1"])
    reports = h.heal(timeout=60)
    assert "SlotCoverageFixed" in actions_of(reports)
    final = reports[-1]
    assert shard(final, 2)["slots"] == "10923-16383"
    assert shard(final, 2)["replicas"]
    for pod in env.pod_names:
        info = env.cluster_info(pod)
        assert (info["cluster_state"], info["cluster_slots_ok"], info["cluster_known_nodes"]) == ("ok", "16384", "6")
    client = env.cluster_client()
    kept = [i for i in range(3000) if cl.slot_of(f"k{i}") < 10923]
    assert all(client.get(f"k{i}") == str(i) for i in kept)  # the other shards kept everything
    client.set("k-new", "1")


def test_planned_restart_of_a_master_hands_over_to_its_replica_first(harness: Harness) -> None:
    """prestop.sh (the pod's preStop hook) asks the replica for CLUSTER FAILOVER and waits for it:
    the slots are served by the replica before the master stops, with no failure detection."""
    h, env = harness, harness.env
    started = time.monotonic()
    done = env.run_script("events-shard-2-0", "prestop.sh", timeout=40)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert h.role("events-shard-2-1") == "master"
    assert h.role("events-shard-2-0") == "replica"
    assert took < 5, f"the hand-over took {took:.1f}s"
    env.restart("events-shard-2-0")
    reports = h.heal()
    assert shard(reports[-1], 2)["master"] == "events-shard-2-1"
    assert shard(reports[-1], 2)["replicas"] == ["events-shard-2-0"]
    client = env.cluster_client()
    assert [client.get(f"k{i}") for i in range(3000)] == [str(i) for i in range(3000)]

"""Cluster mode comes up and comes back: real redis-server processes on loopback, started from the
rendered configuration by the real start script, with the operator's topology controller acting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engines
import pytest
from cluster_env import ClusterEnv, actions_of, heal_until
from sentinel_env import eventually

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis import cluster as cl

pytestmark = pytest.mark.redis

PASSWORD = "cluster-test-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")
SPEC = models.parse_spec({
    "mode": "cluster",
    "cluster": {"shards": 3, "replicasPerShard": 1, "nodeTimeout": 2000},
    # no 5 s wait before a diskless full sync: replicas attach at once
    "redis": {"config": {"repl-diskless-sync-delay": "0"}},
})


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with ClusterEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        yield env


def slot_table(env: ClusterEnv, pod: str) -> dict[str, tuple[str, ...]]:
    """hostname -> slot ranges, as one node sees the masters."""
    text = str(env.client(pod).execute_command("CLUSTER", "NODES"))
    return {n.hostname: tuple(f"{a}-{b}" for a, b in n.slots) for n in cl.parse_nodes(text) if n.slots}


def assert_cluster_ok(env: ClusterEnv) -> None:
    for pod in env.pod_names:
        info = env.cluster_info(pod)
        assert info["cluster_state"] == "ok", (pod, info)
        assert info["cluster_slots_assigned"] == "16384", (pod, info)
        assert info["cluster_slots_ok"] == "16384", (pod, info)
        # Every node is met once the pass is done; that each knows all the others is gossip's work,
        # which a loaded machine slows down: given a few seconds.
        eventually(lambda p=pod: env.cluster_info(p)["cluster_known_nodes"] == str(len(env.pod_names)),
                   timeout=10, what=f"{pod} knowing every node")


def test_bootstrap_three_shards_one_replica_each(env: ClusterEnv) -> None:
    topology = ClusterTopology(env.addresses(), timeout=1.0)
    started = time.monotonic()
    reports = heal_until(topology, SPEC, OWNER, PASSWORD, timeout=40)
    took = time.monotonic() - started
    assert_cluster_ok(env)
    assert actions_of(reports).count("SlotsAssigned") == 3
    assert actions_of(reports).count("ReplicaAttached") == 3
    shards = reports[-1].status["shards"]
    assert [s["name"] for s in shards] == ["events-shard-0", "events-shard-1", "events-shard-2"]
    assert [s["slots"] for s in shards] == ["0-5461", "5462-10922", "10923-16383"]
    for i, s in enumerate(shards):
        assert s["master"] == f"events-shard-{i}-0"
        assert s["replicas"] == [f"events-shard-{i}-1"]
    assert reports[-1].labels["events-shard-1-1"] == "replica"
    assert reports[-1].available is True
    assert reports[-1].status["engine"] == engines.summary_of(env.client("events-shard-0-0").info("server"))
    # idempotent: a pass on a healthy cluster does nothing
    again = topology.check_and_heal(SPEC, OWNER, [], PASSWORD)
    assert again.healthy
    assert again.actions == []
    # clients work: a cluster-aware client writes and reads through MOVED redirections
    client = env.cluster_client()
    for i in range(100):
        client.set(f"key:{i}", i)
    assert [client.get(f"key:{i}") for i in (0, 50, 99)] == ["0", "50", "99"]
    assert took < 30


class CrashAt(ClusterTopology):
    """A topology whose process dies (raises) right before its ``n``-th command of the run."""

    def __init__(self, *args: Any, n: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n = n
        self.done = 0

    def _execute(self, step: Any, *args: Any, **kwargs: Any) -> Any:
        if self.done == self.n:
            raise SystemExit(f"operator killed before {step}")
        self.done += 1
        return super()._execute(step, *args, **kwargs)


@pytest.mark.parametrize("crash_at", [2, 6, 8])  # among the meets, among the slot assignments, among replicas
def test_bootstrap_interrupted_anywhere_is_finished_by_the_next_pass(env: ClusterEnv, crash_at: int) -> None:
    crashing = CrashAt(env.addresses(), timeout=1.0, n=crash_at)
    with pytest.raises(SystemExit):
        heal_until(crashing, SPEC, OWNER, PASSWORD, timeout=30)
    fresh = ClusterTopology(env.addresses(), timeout=1.0)  # a restarted operator knows nothing
    reports = heal_until(fresh, SPEC, OWNER, PASSWORD, timeout=40)
    assert_cluster_ok(env)
    tables = {pod: slot_table(env, pod) for pod in env.pod_names}
    assert all(t == tables["events-shard-0-0"] for t in tables.values())
    assert sorted(tables["events-shard-0-0"].values()) == [("0-5461",), ("10923-16383",), ("5462-10922",)]
    assert reports[-1].healthy


def test_whole_cluster_restart_rejoins_with_its_slots_and_data_and_no_bootstrap(env: ClusterEnv) -> None:
    topology = ClusterTopology(env.addresses(), timeout=1.0)
    heal_until(topology, SPEC, OWNER, PASSWORD, timeout=40)
    client = env.cluster_client()
    pipe = client.pipeline()
    for i in range(2000):
        pipe.set(f"k{i}", i)
    pipe.execute()
    client.close()
    before = slot_table(env, "events-shard-0-0")
    env.restart_all()
    reports = heal_until(topology, SPEC, OWNER, PASSWORD, timeout=40)
    assert "SlotsAssigned" not in actions_of(reports)
    assert "SlotCoverageFixed" not in actions_of(reports)
    assert_cluster_ok(env)
    assert slot_table(env, "events-shard-0-0") == before
    client = env.cluster_client()
    assert [client.get(f"k{i}") for i in (0, 999, 1999)] == ["0", "999", "1999"]
    assert sum(int(env.client(p).dbsize()) for p in env.pod_names if p.endswith("-0")) == 2000

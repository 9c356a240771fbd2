"""The ordered rolling update of cluster mode on real processes: 3 shards with a replica each, every
pod outdated, an application writing all along. Replicas go first, each master hands over with a
coordinated CLUSTER FAILOVER before it restarts, one disruption at a time, and every acknowledged
write is still there at the end."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_env import ClusterEnv, heal_until, three_shards
from redis.exceptions import RedisError

from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.rolling import ClusterRoller
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.modes.rollout import PodState

pytestmark = pytest.mark.redis

PASSWORD = "cluster-roll-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")
SPEC = three_shards()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with ClusterEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=1.0), SPEC, OWNER, PASSWORD, timeout=60, env=env)
        yield env


class Writer:
    """An application: SET through a cluster client, retried with backoff; what was acknowledged is
    remembered, and the time without any acknowledged write is measured."""

    def __init__(self, env: ClusterEnv) -> None:
        self.client = env.cluster_client(socket_timeout=2)
        self.acked: list[int] = []
        self.failed = 0
        self.longest_gap = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i, last = 0, time.monotonic()
        while not self.stop.is_set() and i < 200_000:
            try:
                self.client.set(f"roll:{i}", i)
            except (RedisError, AttributeError):
                self.failed += 1
                time.sleep(0.05)
                with contextlib.suppress(RedisError):
                    self.client.nodes_manager.initialize()
                continue
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self.acked.append(i)
            i += 1


def test_every_pod_replaced_replicas_first_one_failover_per_shard_nothing_lost(env: ClusterEnv) -> None:
    step = ClusterRoller(None, env.addresses(), timeout=1.0)
    topology = ClusterTopology(env.addresses(), timeout=1.0)
    shard_of = {p: env.pod(p).shard for p in env.pod_names}
    outdated = dict.fromkeys(env.pod_names, ("config hash a -> b",))
    deleted: list[str] = []

    def states() -> dict[str, PodState]:
        return {p: PodState(p, "redis", ready=env.is_running(p), outdated=outdated[p]) for p in env.pod_names}

    def replace(pod: str) -> None:  # what the StatefulSet controller and the kubelet would do
        deleted.append(pod)
        env.restart(pod)
        outdated[pod] = ()

    writer = Writer(env)
    writer.thread.start()
    moves: list[str] = []
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 180
        while any(outdated.values()):
            assert time.monotonic() < deadline, f"roll not done; moves so far: {moves}"
            report = step.run(SPEC, OWNER, {}, [], PASSWORD, delete_pod=replace, states=(states(), shard_of))
            moves += report.actions
            topology.check_and_heal(SPEC, OWNER, [], PASSWORD)  # the same pass heals the topology
            time.sleep(0.3)
        took = time.monotonic() - started
        heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env)
        time.sleep(0.5)
    finally:
        writer.stop.set()
        writer.thread.join(10)

    assert sorted(deleted) == sorted(env.pod_names), "every pod replaced exactly once"
    switchovers = [m for m in moves if m.startswith("RollingUpdateSwitchover")]
    assert len(switchovers) == 3, switchovers  # one per shard
    # replicas first: the first three pods replaced are the three original replicas (ordinal 1)
    assert sorted(deleted[:3]) == [OWNER.shard_pod(i, 1) for i in range(3)], deleted
    # a master is restarted only after its shard switched over
    for index in range(3):
        master = OWNER.shard_pod(index, 0)
        switch = next(i for i, m in enumerate(moves) if f"shard master {master} over" in m)
        restart = next(i for i, m in enumerate(moves) if m.startswith(f"RollingUpdate: Restarting {master} "))
        assert switch < restart, moves
    # nothing acknowledged is lost
    reader = env.cluster_client()
    missing = [i for i in writer.acked if reader.get(f"roll:{i}") != str(i)]
    assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    assert len(writer.acked) > 100
    for pod in env.pod_names:
        assert env.cluster_info(pod)["cluster_state"] == "ok", pod
    print(f"\ncluster rolling update: 6 pods in {took:.1f}s, {len(writer.acked)} writes acknowledged, "
          f"{writer.failed} attempts retried, longest time without an acknowledged write {writer.longest_gap:.2f}s")

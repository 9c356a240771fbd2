"""Cluster mode: a master that restarts without the data its replica holds is never followed by it.

The master's redis-server is SIGKILLed and started again at once, well inside the node timeout (the
cluster has not failed it over), on a volume that lost its data files (persistence none, or an AOF
whose files are gone) but kept nodes.conf. Before the start script hands the role over, the restarted
node came back as the master its nodes.conf names, the replica full-synced from it, and every write
acknowledged with WAIT was gone from both."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import engines
import pytest
from cluster_env import ClusterEnv, heal_until
from redis.crc import key_slot
from redis.exceptions import ClusterDownError

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology

pytestmark = pytest.mark.redis

PASSWORD = "handover-Pa55word"
OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
KEYS = 500


def spec(persistence: str) -> models.RedisMessagingSpec:
    return models.parse_spec({
        "mode": "cluster",
        "cluster": {"shards": 3, "replicasPerShard": 1, "nodeTimeout": 3000},
        "persistence": {"mode": persistence},
        # a second cluster-node-timeout line (the last one counts, for redis-server and the start script)
        "redis": {"config": {"repl-diskless-sync-delay": "0", "cluster-node-timeout": "2000"}},
    })


class Shard:
    """A shard of a healthy three-shard cluster: its master, its replica, keys that live on it."""

    def __init__(self, env: ClusterEnv, index: int = 0) -> None:
        self.env = env
        pods = env.shard_pods(index)
        self.master = next(p for p in pods if env.myself(p).is_master)
        self.replica = next(p for p in pods if p != self.master)
        lo, hi = env.myself(self.master).slots[0]
        tag = next(f"t{i}" for i in range(100_000) if lo <= key_slot(f"t{i}".encode()) <= hi)
        self.keys = [f"{{{tag}}}:k{i}" for i in range(KEYS)]

    def write_acknowledged(self) -> None:
        """Every key written to the master and acknowledged by the replica (WAIT 1)."""
        client = self.env.client(self.master)
        pipe = client.pipeline(transaction=False)
        for i, key in enumerate(self.keys):
            pipe.set(key, i)
        pipe.execute()
        assert client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]

    def present(self, pod: str, timeout: float = 10.0) -> int:
        """How many of the keys ``pod`` holds (once its cluster state is ok again)."""
        deadline = time.monotonic() + timeout
        while True:
            client = self.env.client(pod)
            try:
                if not self.env.myself(pod).is_master:
                    client.execute_command("READONLY")  # type: ignore[no-untyped-call]
                return sum(int(client.exists(k)) for k in self.keys)
            except ClusterDownError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return
        except Exception as exc:  # a node may not answer yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:g}s (last: {last!r})")


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ClusterEnv, Shard]]:
    s = spec(request.param)
    with ClusterEnv(s, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=0.5), s, OWNER, PASSWORD, timeout=40, env=env)
        shard = Shard(env)
        shard.write_acknowledged()
        yield env, shard


def restart_without_data(env: ClusterEnv, *pods: str) -> None:
    """SIGKILL, the data files gone (nodes.conf kept), started again at once (all together)."""
    for pod in pods:
        env.kill(pod, signal.SIGKILL)
        data = env.pod(pod).data_dir
        shutil.rmtree(data / "appendonlydir", ignore_errors=True)
        (data / "dump.rdb").unlink(missing_ok=True)
        assert (data / "nodes.conf").exists()
    env.start(list(pods), timeout=60)


def settled(env: ClusterEnv, shard: Shard) -> str | None:
    """The shard's master, once one pod is master and the other a replica with its link up."""
    masters = [p for p in (shard.master, shard.replica) if env.myself(p).is_master]
    others = [p for p in (shard.master, shard.replica) if p not in masters]
    if len(masters) == 1 and env.client(others[0]).info("replication").get("master_link_status") == "up":
        return masters[0]
    return None


@pytest.mark.parametrize("cluster", ["none", "aof"], indirect=True)
def test_a_master_back_without_its_data_hands_over_to_its_replica(cluster: tuple[ClusterEnv, Shard]) -> None:
    env, shard = cluster
    restart_without_data(env, shard.master)

    eventually(lambda: settled(env, shard), 30, "shard 0 settled")
    master = settled(env, shard)
    assert master is not None
    # every acknowledged write is there, on both pods; the replica that held them took over
    assert shard.present(master) == KEYS, f"{shard.present(master)} of {KEYS} acknowledged keys on {master}"
    eventually(lambda: shard.present(shard.master) == KEYS, 10, f"the keys back on {shard.master}")
    assert master == shard.replica
    assert "takes over first" in env.pod(shard.master).log.read_text()


@pytest.mark.parametrize("cluster", ["aof"], indirect=True)
def test_a_master_whose_replica_does_not_answer_starts_as_the_master_it_was(
        cluster: tuple[ClusterEnv, Shard]) -> None:
    env, shard = cluster
    replica = env.pod(shard.replica)
    assert replica.process is not None
    # its AOF holds what it acknowledged: nothing postponed behind a slow fsync (a loaded machine)
    eventually(lambda: not env.client(shard.master).info("persistence").get("aof_buffer_length"), 10,
               f"{shard.master}'s AOF written")
    replica.process.send_signal(signal.SIGSTOP)
    try:
        env.kill(shard.master, signal.SIGKILL)
        env.start([shard.master], timeout=40)  # its AOF is there: it holds what it acknowledged
        assert env.myself(shard.master).is_master
        eventually(lambda: shard.present(shard.master) == KEYS, 10, f"the keys on {shard.master}")
    finally:
        replica.process.send_signal(signal.SIGCONT)
    if engines.valkey():
        # Valkey: the replica, resumed, may still hold its master as failed and win an election against
        # it (the master's writes since its restart needed a replica, min-replicas-to-write: none was
        # acknowledged). Either way one of them leads, the other follows, and both hold every key.
        eventually(lambda: settled(env, shard), 20, f"{shard.master} or {shard.replica} the master")
        leader = settled(env, shard)
        follower = shard.replica if leader == shard.master else shard.master
        assert shard.present(follower) == KEYS
        assert shard.present(leader) == KEYS
        return
    eventually(lambda: env.client(shard.replica).info("replication").get("master_link_status") == "up", 20,
               f"{shard.replica} following {shard.master} again")
    assert env.myself(shard.master).is_master
    assert shard.present(shard.replica) == KEYS


@pytest.mark.parametrize("cluster", ["none"], indirect=True)
def test_two_of_three_masters_back_without_data_at_once_hand_over_without_a_majority_to_vote(
        cluster: tuple[ClusterEnv, Shard]) -> None:
    """Two masters down together (one node holding both): no take-over can win the masters' vote, so
    each start script has its replica take over without one; the cluster does not stay down."""
    env, shard = cluster
    other = Shard(env, 1)
    restart_without_data(env, shard.master, other.master)
    for s in (shard, other):
        eventually(lambda s=s: settled(env, s) == s.replica, 30, f"{s.replica} the master, {s.master} its replica")
    assert shard.present(shard.replica) == KEYS
    eventually(lambda: shard.present(shard.master) == KEYS, 10, f"the keys back on {shard.master}")
    assert env.cluster_info(shard.replica)["cluster_state"] == "ok"


@pytest.mark.parametrize("cluster", ["aof"], indirect=True)
def test_a_master_whose_volume_is_lost_has_its_replica_take_over_before_it_starts(
        cluster: tuple[ClusterEnv, Shard]) -> None:
    """The whole volume gone, nodes.conf too: the pod starts at once at the same address as a new, empty
    node. Its replica still follows the old node's address; started straight away, the new node would be
    followed and the replica would full-sync an empty data set (0 keys left)."""
    env, shard = cluster
    env.kill(shard.master, signal.SIGKILL)
    env.wipe(shard.master)
    env.start([shard.master], timeout=60)
    # (the replica may also have been promoted by the cluster itself meanwhile, on a loaded machine)
    assert env.myself(shard.replica).is_master
    assert shard.present(shard.replica) == KEYS
    # the operator's pass then attaches the new node to the shard, and forgets the old one
    heal_until(ClusterTopology(env.addresses(), timeout=0.5), env.spec, OWNER, PASSWORD, timeout=60, env=env)
    assert settled(env, shard) == shard.replica
    eventually(lambda: shard.present(shard.master) == KEYS, 20, f"the keys back on {shard.master}")

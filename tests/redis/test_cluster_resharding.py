"""Scale a loaded cluster out and in with real processes: 100,000 keys and streams with consumer
groups, 3 -> 4 shards with a migration killed half-way, 2 refused, 4 -> 3; nothing is lost, the
cluster keeps serving, and slots end up balanced."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cluster_env import ClusterEnv, actions_of, heal_until
from redis.exceptions import RedisError

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.reconcile.streams import StreamsStep
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.nodes import Pools, provision

pytestmark = pytest.mark.redis

PASSWORD = "resharding-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")
KEYS = 100_000
STREAMS = 12
ENTRIES = 500


def spec_with(shards: int) -> models.RedisMessagingSpec:
    return models.parse_spec({
        "mode": "cluster",
        "cluster": {"shards": shards, "replicasPerShard": 1, "nodeTimeout": 3000},
        "redis": {"config": {"repl-diskless-sync-delay": "0"}},
    })


class Killed(BaseException):
    """The operator process dies: nothing catches this, like SIGKILL."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterEnv]:
    base: Path = tmp_path_factory.mktemp("resharding")
    with ClusterEnv(spec_with(3), OWNER, base, password=PASSWORD) as env:
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=1.0), spec_with(3), OWNER, PASSWORD, timeout=40)
        yield env


def write_data(env: ClusterEnv) -> dict[str, list[Any]]:
    client = env.cluster_client()
    for start in range(0, KEYS, 10_000):
        pipe = client.pipeline()
        for i in range(start, start + 10_000):
            pipe.set(f"key:{i}", f"value-{i}")
        pipe.execute()
    streams: dict[str, list[Any]] = {}
    for s in range(STREAMS):
        name = f"orders-{s}"
        client.xgroup_create(name, "billing", id="0", mkstream=True)
        pipe = client.pipeline()
        for e in range(ENTRIES):
            pipe.xadd(name, {"n": str(e)})
        pipe.execute()
        # a consumer took 100 entries and acknowledged 40 of them: 60 pending, 400 not delivered
        got = client.xreadgroup("billing", "worker-1", {name: ">"}, count=100)
        ids = [entry_id for _, entries in got for entry_id, _ in entries]
        client.xack(name, "billing", *ids[:40])
        streams[name] = client.xrange(name)
    client.close()
    return streams


def check_data(env: ClusterEnv, streams: dict[str, list[Any]]) -> None:
    client = env.cluster_client()
    missing = []
    for start in range(0, KEYS, 10_000):
        pipe = client.pipeline()
        for i in range(start, start + 10_000):
            pipe.get(f"key:{i}")
        for i, value in zip(range(start, start + 10_000), pipe.execute(), strict=True):
            if value != f"value-{i}":
                missing.append(i)
    assert missing == [], f"{len(missing)} keys lost, e.g. {missing[:10]}"
    for name, entries in streams.items():
        assert client.xrange(name) == entries, name
        (group,) = client.xinfo_groups(name)
        assert (group["name"], group["pending"], group["lag"]) == ("billing", 60, ENTRIES - 100), name
    client.close()


def slot_counts(env: ClusterEnv) -> dict[str, int]:
    """Slots per master pod, as the first running node sees it."""
    pod = next(p for p in env.pod_names if env.is_running(p))
    text = str(env.client(pod).execute_command("CLUSTER", "NODES"))
    return {env.pod_at(n.ip): n.slot_count for n in cl.parse_nodes(text) if n.is_master and n.slot_count}


def assert_balanced(env: ClusterEnv, shards: int) -> None:
    counts = slot_counts(env)
    assert sum(counts.values()) == 16384
    assert len(counts) == shards, counts
    even = 16384 / shards
    assert all(abs(c - even) <= even * 0.01 for c in counts.values()), counts
    for pod in env.pod_names:
        info = env.cluster_info(pod)
        assert info["cluster_state"] == "ok", (pod, info)
        assert info["cluster_slots_ok"] == "16384", (pod, info)


class Traffic:
    """An application writing and reading while the operator reshards, retrying a failed command
    with backoff like applications do: every write must succeed and read back. ``retried`` counts the
    commands that needed a retry.

    redis-py follows an ASK redirection only to a node already in its cache, and a new shard's master
    is in no client's cache before it serves a slot (it trips with an AttributeError): the application
    then refreshes the client's view of the cluster and retries. Retries back off exponentially from
    50 ms, capped at 1 s: six attempts span about 1.5 s."""

    ATTEMPTS = 6

    def __init__(self, env: ClusterEnv) -> None:
        self.client = env.cluster_client()
        self.stop = threading.Event()
        self.written = 0
        self.retried = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _try(self, what: str, call: Any) -> Any:
        for attempt in range(self.ATTEMPTS):
            try:
                return call()
            except (RedisError, AttributeError) as exc:
                self.retried += 1
                if attempt == self.ATTEMPTS - 1:
                    self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
                    break
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
                if isinstance(exc, AttributeError):
                    try:
                        self.client.nodes_manager.initialize()
                    except RedisError as refresh:
                        self.errors.append(f"{what}: refreshing the slot map: {refresh}")
        return None

    def run(self) -> None:
        while not self.stop.is_set() and self.written < 200_000:
            key, value = f"live:{self.written}", self.written
            self._try(f"SET {key}", lambda k=key, v=value: self.client.set(k, v))
            if self._try(f"GET {key}", lambda k=key: self.client.get(k)) != str(value):
                self.errors.append(f"{key} read back wrong")
            self.written += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_scale_out_interrupted_then_in_loses_nothing_and_balances(env: ClusterEnv) -> None:
    streams = write_data(env)

    # 3 -> 4, the operator killed in the middle of a batch (keys moved, slots still open)
    batches = Counter[str]()

    def hook(stage: str, slots: Any) -> None:
        batches[stage] += 1
        if stage == "migrated" and batches[stage] == 3:
            raise Killed("operator killed with slots importing/migrating")

    env.add_shard(3)
    four = spec_with(4)
    dying = ClusterTopology(env.addresses(), timeout=1.0, hook=hook, batch_slots=256)
    with Traffic(env) as traffic:
        started = time.monotonic()
        with pytest.raises(Killed):
            heal_until(dying, four, OWNER, PASSWORD, timeout=60, env=env)
        opened = [n for p in env.pod_names for n in cl.parse_nodes(str(env.client(p).execute_command(
            "CLUSTER", "NODES"))) if n.myself and n.is_master and (n.migrating or n.importing)]
        # (Valkey marks the replicas too)
        assert len(opened) == 2, "the kill should leave slots open on the source and the target"
        check_data(env, streams)  # served meanwhile: keys of open slots through ASK redirections
        restarted = ClusterTopology(env.addresses(), timeout=1.0, batch_slots=256)
        reports = heal_until(restarted, four, OWNER, PASSWORD, timeout=90, env=env)
        scale_out = time.monotonic() - started
    assert "SlotsMigrated" in actions_of(reports)
    assert reports[0].reason == "Resharding"  # the first pass after the restart finishes the open slots
    assert "SlotsAssigned" not in actions_of(reports)
    assert_balanced(env, 4)
    check_data(env, streams)
    assert traffic.errors == [], traffic.errors[:5]
    assert traffic.written > 100
    shards = reports[-1].status["shards"]
    assert [s["name"] for s in shards] == [f"events-shard-{i}" for i in range(4)]
    assert all(len(s["replicas"]) == 1 for s in shards)

    # 2 shards: refused by the schema, and by the topology if it ever got such a spec
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 3"):
        spec_with(2)
    before = slot_counts(env)
    two = four.model_copy(update={"cluster": four.cluster.model_copy(update={"shards": 2})})
    refused = restarted.check_and_heal(two, OWNER, [], PASSWORD)
    assert refused.reason == "ScaleInRefused"
    assert "at least 3 shards" in refused.message
    assert refused.actions == []
    assert slot_counts(env) == before

    # 4 -> 3: shard 3's slots spread over all three, its nodes forgotten, its StatefulSet released
    three = spec_with(3)
    with Traffic(env) as traffic:
        started = time.monotonic()
        reports = heal_until(restarted, three, OWNER, PASSWORD, timeout=90, until=lambda r: r.release, env=env)
        scale_in = time.monotonic() - started
    assert reports[-1].release == ["events-shard-3"]
    moved_to = {a.message.split(" to shard ")[1][0] for r in reports for a in r.actions if a.reason == "SlotsMigrated"}
    assert moved_to == {"0", "1", "2"}, "the slots of the removed shard go to every remaining shard"
    assert {"NodeForgotten", "NodeReset"} <= set(actions_of(reports))
    env.remove_shard(3)  # the reconcile pass deletes the StatefulSet
    reports = heal_until(restarted, three, OWNER, PASSWORD, timeout=30, env=env)
    assert_balanced(env, 3)
    check_data(env, streams)
    assert traffic.errors == [], traffic.errors[:5]
    for pod in env.pod_names:
        assert env.cluster_info(pod)["cluster_known_nodes"] == "6", pod

    # streams: each lives on the master of its slot, where the reconcile pass and the autoscaler go
    steps = StreamsStep(None, env.addresses(), Pools())  # type: ignore[arg-type]  # no Kubernetes needed here
    placement = steps.placement(OWNER, None, reports[-1].status["shards"])
    assert placement is not None
    declared = [models.Stream.model_validate({"name": name, "groups": [{"name": "billing"}, {"name": "audit"}]})
                for name in streams]
    for node, owned in placement.by_node(declared):
        plain = env.client(node.name)
        for stream in owned:
            assert plain.xlen(stream.name) == ENTRIES, (stream.name, node.name)
            done = provision(steps.pools.node(("shop", "events"), PASSWORD, node.address), stream)
            assert (done.error, done.created) == (None, ("audit",)), stream.name
        assert node.shard == f"events-shard-{OWNER.shard_of_pod(node.name)[0]}"  # type: ignore[index]
    steps.pools.close_all()
    print(f"\n3->4 with a kill and resume: {scale_out:.1f}s; 4->3: {scale_in:.1f}s; "
          f"live commands retried: {traffic.retried}")

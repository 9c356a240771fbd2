"""Scale a loaded cluster out and in with real processes: 100,000 keys and streams with consumer
groups, 3 -> 4 shards with a migration killed half-way, 2 refused, 4 -> 3; nothing is lost, the
cluster keeps serving, and slots end up balanced."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cluster_env import (
    ENTRIES,
    ClusterEnv,
    Traffic,
    actions_of,
    assert_balanced,
    check_data,
    heal_until,
    slot_counts,
    write_data,
)

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.reconcile.streams import StreamsStep
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.nodes import Pools, provision

pytestmark = pytest.mark.redis

PASSWORD = "resharding-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")


def spec_with(shards: int) -> models.RedisMessagingSpec:
    return models.parse_spec({
        "mode": "cluster",
        # key by key on every engine: the hook below stops a batch between its stages
        "cluster": {"shards": shards, "replicasPerShard": 1, "nodeTimeout": 3000, "slotMigration": "KeyByKey"},
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

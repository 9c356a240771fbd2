"""A half-moved slot on real nodes: the operator never closes it on the source while the target shard
holds keys of it, resumes it towards the target shard's new master after a failover, and never
overwrites a key that exists on both sides (BUSYKEY stops that slot's move and says so)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_env import ClusterEnv, actions_of, heal_until, tag_on, three_shards

from redis_messaging.builders.names import Owner
from redis_messaging.modes.base import TopologyReport
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis import cluster as cl

pytestmark = pytest.mark.redis

PASSWORD = "open-slots-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")
SPEC = three_shards()
A, B, B1 = "events-shard-0-0", "events-shard-1-0", "events-shard-1-1"  # source master; target master, replica


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with ClusterEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=1.0), SPEC, OWNER, PASSWORD, timeout=40, env=env)
        yield env


def half_move(env: ClusterEnv, slot: int, keys: list[str]) -> None:
    """Open ``slot`` from A to B as the mover does, and move ``keys`` with MIGRATE (no REPLACE)."""
    source_id, target_id = env.myself(A).id, env.myself(B).id
    env.client(B).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    env.client(A).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    if keys:
        ip, port = env.address(B)
        env.client(A).execute_command("MIGRATE", ip, port, "", 0, 5000, "AUTH", PASSWORD, "KEYS", *keys)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - a node may not answer yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:g}s")


def passes(topology: ClusterTopology, seconds: float) -> list[TopologyReport]:
    reports = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reports.append(topology.check_and_heal(SPEC, OWNER, [], PASSWORD))
        time.sleep(0.2)
    return reports


def test_a_half_moved_slot_whose_target_master_died_ends_on_the_new_master_with_every_key(env: ClusterEnv) -> None:
    tag, slot = tag_on(env, A)
    stream, plain = f"{tag}orders", [f"{tag}k{i}" for i in range(20)]
    app = env.cluster_client()
    app.xgroup_create(stream, "billing", id="0", mkstream=True)
    for n in range(50):
        app.xadd(stream, {"n": str(n)})
    got = app.xreadgroup("billing", "worker-1", {stream: ">"}, count=20)
    app.xack(stream, "billing", *[entry_id for _, entries in got for entry_id, _ in entries][:5])
    for i, key in enumerate(plain):
        app.set(key, f"v{i}")
    entries = app.xrange(stream)
    (group,) = app.xinfo_groups(stream)
    assert (group["pending"], group["lag"]) == (15, 30)

    # the stream and half the keys moved to B, then B dies: its replica takes over with what B took
    moved = [stream, *plain[:10]]
    half_move(env, slot, moved)
    assert env.client(B).execute_command("WAIT", 1, 5000) == 1
    dead = env.myself(B).id
    env.kill(B)
    wait_for(lambda: env.myself(B1).is_master, 20, f"{B1} taking over")
    assert env.client(B1).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(moved)
    # Redis: still pointing at the dead master; Valkey (8.0 and later) points it at the shard's new master
    assert env.myself(A).migrating in (((slot, dead),), ((slot, env.myself(B1).id),))

    # the operator passes while B is away: B1 accepts no write without a replica (min-replicas-to-write),
    # so the move cannot go on yet; it must not be closed meanwhile
    topology = ClusterTopology(env.addresses(), timeout=1.0)
    during = passes(topology, 4.0)
    assert "SlotsStabilized" not in actions_of(during)
    assert A in env.open_marks(), "the slot was closed on the source while the target shard holds its keys"
    assert env.client(B1).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(moved)
    assert all(not r.healthy and f"slot {slot}" in r.message for r in during), [r.message for r in during]

    # B comes back on its volume as B1's replica; the move resumes towards B1, the shard's new master
    env.start([B])
    reports = heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env)
    assert "SlotsStabilized" not in actions_of(reports)
    migrated = [a.message for r in reports for a in r.actions if a.reason == "SlotsMigrated"]
    assert any(f"to shard 1 ({B1})" in m for m in migrated), migrated
    assert env.open_marks() == {}
    new_master = env.myself(B1).id
    for pod in env.pod_names:  # every node agrees: the slot is served by shard 1's master alone
        owners = [n.id for n in cl.parse_nodes(str(env.client(pod).execute_command("CLUSTER", "NODES")))
                  if n.is_master and slot in n.slot_set()]
        assert owners == [new_master], pod
    assert env.client(A).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0

    app = env.cluster_client()
    assert [app.get(key) for key in plain] == [f"v{i}" for i in range(20)]
    assert app.xrange(stream) == entries
    (after,) = app.xinfo_groups(stream)
    assert (after["name"], after["pending"], after["lag"], after["last-delivered-id"]) == (
        "billing", 15, 30, group["last-delivered-id"])
    assert app.xpending(stream, "billing")["consumers"] == [{"name": "worker-1", "pending": 15}]


def test_a_key_on_both_sides_stops_the_move_overwrites_neither_and_is_reported_once(env: ClusterEnv) -> None:
    tag, slot = tag_on(env, A)
    dup, others = f"{tag}dup", [f"{tag}k{i}" for i in range(10)]
    app = env.cluster_client()
    app.set(dup, "source-value")
    for key in others:
        app.set(key, key)
    half_move(env, slot, [])
    target = env.client(B)
    pipe = target.pipeline(transaction=False)  # ASKING applies to the next command of the connection
    pipe.execute_command("ASKING")
    pipe.set(dup, "target-value")
    pipe.execute()

    def on_target(key: str) -> Any:
        pipe = target.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.get(key)
        return pipe.execute()[1]

    topology = ClusterTopology(env.addresses(), timeout=1.0)
    first = topology.check_and_heal(SPEC, OWNER, [], PASSWORD)
    # neither value is overwritten; the other keys went over; the slot stays open
    assert on_target(dup) == "target-value", "the target's value was overwritten"
    assert env.client(A).get(dup) == "source-value"
    assert [on_target(key) for key in others] == others
    assert env.client(A).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
    assert set(env.open_marks(masters_only=True)) == {A, B}  # (Valkey marks the replicas too)
    # and the pass says so: the Ready condition's reason and message, one Warning Event
    assert first.reason == "SlotMoveBlocked", first.message
    assert not first.healthy
    assert f"slot {slot} cannot move from shard 0 ({A}) to shard 1 ({B}): key '{dup}' exists on both" in first.message
    blocked = [a for a in first.actions if a.reason == "SlotMoveBlocked"]
    assert len(blocked) == 1
    assert blocked[0].warning
    assert f"slot {slot}" in blocked[0].message
    assert dup in blocked[0].message

    again = topology.check_and_heal(SPEC, OWNER, [], PASSWORD)
    assert again.reason == "SlotMoveBlocked"
    assert "SlotMoveBlocked" not in actions_of([again]), "the same finding is reported once, not every pass"
    assert again.retry_after is not None
    assert again.retry_after > 1
    assert on_target(dup) == "target-value"

    # a human keeps the source's value: the next pass finishes the move
    pipe = target.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.delete(dup)
    pipe.execute()
    reports = heal_until(topology, SPEC, OWNER, PASSWORD, timeout=30, env=env)
    assert "SlotsMigrated" in actions_of(reports)
    assert env.open_marks() == {}
    assert env.myself(B).slot_set() >= {slot}
    app = env.cluster_client()
    assert app.get(dup) == "source-value"
    assert [app.get(key) for key in others] == others

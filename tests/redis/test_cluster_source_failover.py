"""The source shard of a slot move fails over while the slot is being assigned (nemesis seed 2009).

The target takes the slot (``SETSLOT NODE``: it leaves the importing state and bumps its config epoch
without agreement) and, before the cluster has heard of it, the source master's replica takes over with
``CLUSTER FAILOVER`` (a pre-stop hook). That replica still sees its old master as the slot's owner
(``MIGRATING``/``IMPORTING`` marks and slot ownership are not replicated), so once promoted it claims the
slot with its new, higher epoch. A target that lost a slot it owns and holds keys of (a "dirty" slot)
deletes those keys: every key moved so far and every write made through ``ASK`` would be gone, though
acknowledged with ``WAIT``. The rule: a slot move never ends with keys of the slot deleted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import engines
import pytest
from cluster_env import ClusterEnv, heal_until, tag_on, three_shards

from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis import cluster as cl

pytestmark = pytest.mark.redis

PASSWORD = "source-failover-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")
# key by key on every engine: the hooks stop a batch between its stages (the engine's atomic migration,
# which a Valkey 9 run would use otherwise, has no such stages: tests/redis/test_cluster_atomic_migration.py)
SPEC = three_shards(cluster={"shards": 3, "replicasPerShard": 1, "nodeTimeout": 2000, "slotMigration": "KeyByKey"})
A, A1, B = "events-shard-0-0", "events-shard-0-1", "events-shard-1-0"  # source master, its replica; target


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with ClusterEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=1.0), SPEC, OWNER, PASSWORD, timeout=40, env=env)
        yield env


def owner_of(env: ClusterEnv, pod: str, slot: int) -> str | None:
    nodes = cl.parse_nodes(str(env.client(pod).execute_command("CLUSTER", "NODES")))
    owners = [n for n in nodes if n.is_master and slot in n.slot_set()]
    return max(owners, key=lambda n: n.config_epoch).id if owners else None


def settle_epochs(env: ClusterEnv, timeout: float = 20.0) -> None:
    """Wait until every node agrees on every master's config epoch, and those are distinct (the epoch
    collisions of a fresh cluster resolved)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [{n.id: n.config_epoch for n in cl.parse_nodes(str(env.client(p).execute_command(
            "CLUSTER", "NODES"))) if n.is_master and n.slots} for p in env.pod_names]
        epochs = list(views[0].values())
        if all(v == views[0] for v in views) and len(set(epochs)) == len(epochs):
            return
        time.sleep(0.1)
    raise AssertionError("config epochs did not settle")


def acknowledged_keys(env: ClusterEnv, pod: str, count: int = 30) -> tuple[int, list[str]]:
    """A slot of ``pod`` and ``count`` keys in it, written and acknowledged by its replica (WAIT 1)."""
    tag, slot = tag_on(env, pod)
    keys = [f"{tag}w{i}" for i in range(count)]
    app = env.cluster_client()
    for key in keys:
        app.set(key, key)
    assert env.client(pod).execute_command("WAIT", 1, 5000) == 1
    return slot, keys


def assert_one_owner_holding(env: ClusterEnv, slot: int, keys: list[str]) -> None:
    """No slot left open; every node names the same owner of ``slot``, which holds every key."""
    assert env.open_marks() == {}
    owners = {owner_of(env, pod, slot) for pod in env.pod_names}
    assert len(owners) == 1, owners
    (owner,) = owners
    (owner_pod,) = [p for p in env.pod_names if env.myself(p).id == owner]
    missing = [key for key in keys if env.client(owner_pod).get(key) != key]
    assert missing == [], f"{len(missing)} acknowledged writes lost from {owner_pod}: {missing}"


def failover_once_migrated(env: ClusterEnv, replica: str, slot: int, fired: list[str]) -> cl.Hook:
    """A mover hook: once the keys of ``slot`` moved, ``replica`` takes over its master (CLUSTER FAILOVER)
    and the hook waits until it is the master; what happened goes to ``fired``. A manual failover that
    timed out (cluster-manual-failover-timeout, 5 s: under load the master's pause can expire before the
    replica won its election) is asked again, three times at most: the test is about what follows it."""

    def hook(stage: str, slots: Sequence[int]) -> None:
        if stage != "migrated" or slot not in slots or fired:
            return
        for attempt in range(3):
            reply = str(env.client(replica).execute_command("CLUSTER", "FAILOVER"))
            if not attempt:
                fired.append(reply)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not env.myself(replica).is_master:
                time.sleep(0.02)
            if env.myself(replica).is_master:
                break
        fired.append("A1 is " + ("the master" if env.myself(replica).is_master else "a replica"))

    return hook


def test_the_source_failing_over_while_the_target_takes_the_slot_loses_no_acknowledged_write(
        env: ClusterEnv) -> None:
    # B is not the newest epoch: taking the slot bumps its epoch, as in the nemesis run
    settle_epochs(env)
    env.client("events-shard-2-0").execute_command("CLUSTER", "BUMPEPOCH")
    settle_epochs(env)
    tag, slot = tag_on(env, A)
    keys = [f"{tag}w{i}" for i in range(30)]
    app = env.cluster_client()
    for key in keys[:20]:  # on the source, acknowledged by its replica
        app.set(key, key)
    assert env.client(A).execute_command("WAIT", 1, 5000) == 1

    # the move is under way: half the keys went to B, and new keys are written on B (ASK), acknowledged
    source_id, target_id = env.myself(A).id, env.myself(B).id
    env.client(B).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    env.client(A).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    ip, port = env.address(B)
    env.client(A).execute_command("MIGRATE", ip, port, "", 0, 5000, "AUTH", PASSWORD, "KEYS", *keys[:10])
    target = env.client(B)
    for key in keys[20:]:
        pipe = target.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.set(key, key)
        pipe.execute()
    assert target.execute_command("WAIT", 1, 5000) == 1

    # the operator finishes the move; right after the target took the slot, A's pre-stop hook hands the
    # shard to A1 before A1 heard of the target's claim (B is stopped meanwhile: a slow node, a late
    # packet; A1's epoch is a step ahead, as a replica's is whenever it heard of a newer epoch than the
    # target had: its election outbids the target's claim)
    fired: list[str] = []

    def hook(stage: str, slots: Sequence[int]) -> None:
        if stage != "target-assigned" or slot not in slots or fired:
            return
        process = env.pod(B).process
        assert process is not None
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            replica = env.client(A1)
            fired.append(str(replica.execute_command("CLUSTER", "BUMPEPOCH")))
            fired.append(str(replica.execute_command("CLUSTER", "FAILOVER")))
            deadline = time.monotonic() + 1.5  # under the node timeout: B is not flagged failing
            while time.monotonic() < deadline and env.myself(A).is_master:
                time.sleep(0.02)
            fired.append("A is " + ("still the master" if env.myself(A).is_master else "a replica"))
        finally:
            os.killpg(process.pid, signal.SIGCONT)

    topology = ClusterTopology(env.addresses(), timeout=1.0, hook=hook)
    heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env)
    assert fired, "the move never reached the target's assignment"
    assert env.open_marks() == {}

    # every acknowledged write is there, on the slot's owner, which every node agrees on
    owners = {owner_of(env, pod, slot) for pod in env.pod_names}
    assert len(owners) == 1, owners
    (owner,) = owners
    (owner_pod,) = [p for p in env.pod_names if env.myself(p).id == owner]
    served = env.client(owner_pod)
    missing = [key for key in keys if served.get(key) != key]
    assert missing == [], (f"{len(missing)} acknowledged writes lost from {owner_pod}: {missing}\n"
                           + env.log_tail(A, A1, B, lines=15))
    app = env.cluster_client()
    assert [app.get(key) for key in keys] == keys


def test_the_source_failing_over_before_the_assignment_leaves_the_move_to_resume_from_its_new_master(
        env: ClusterEnv) -> None:
    """The source's replica takes over after the keys moved and before the slot is assigned: the move
    stops with the slot open (the target still imports it) and resumes from the shard's new master,
    which the target's own table does not name (an importing node keeps the slot's old owner). The
    target is shard 0's master: the planner's anchor, whose table it reads first."""
    A, A1, B = "events-shard-1-0", "events-shard-1-1", "events-shard-0-0"
    settle_epochs(env)
    slot, keys = acknowledged_keys(env, A)
    source_id, target_id = env.myself(A).id, env.myself(B).id
    env.client(B).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    env.client(A).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    fired: list[str] = []
    topology = ClusterTopology(env.addresses(), timeout=1.0, hook=failover_once_migrated(env, A1, slot, fired))
    heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env)
    assert fired == ["OK", "A1 is the master"], fired
    # the move finished on the target (the balance may move the slot on again): one owner every node
    # agrees on, holding every acknowledged write
    assert_one_owner_holding(env, slot, keys)


def test_a_move_whose_new_source_gave_the_slot_up_to_the_target_is_finished_on_the_target(
        env: ClusterEnv) -> None:
    """As above, but before the next pass the new master heard of the target's higher epoch from a
    master told of the move, and gave the slot up (CI, under load): no node serves the slot in its own
    line, and the target still imports it. The move ends with the target taking it."""
    A, A1, B = "events-shard-1-0", "events-shard-1-1", "events-shard-0-0"
    settle_epochs(env)
    slot, keys = acknowledged_keys(env, A)
    env.client(B).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", env.myself(A).id)
    env.client(A).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", env.myself(B).id)
    fired: list[str] = []
    topology = ClusterTopology(env.addresses(), timeout=1.0, hook=failover_once_migrated(env, A1, slot, fired))
    heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env, until=lambda report: bool(fired))
    assert fired == ["OK", "A1 is the master"], fired
    # the UPDATE message of a master told of the move (the target's epoch is the highest), arriving before
    # the target's own ping told the new master that epoch: it gives the slot up, holding none of its keys
    assert env.client(A1).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    env.client(A1).execute_command("CLUSTER", "SETSLOT", slot, "NODE", env.myself(B).id)
    served = [p for p in env.pod_names if env.myself(p).is_master and slot in env.myself(p).slot_set()]
    # Valkey (its marks replicated, its target keeping an owner) may not end in this state; what follows
    # holds all the same
    if not engines.is_valkey(env.client(B).info("server")):
        assert served == [], f"{served} serve the slot: not the state under test"
        assert env.open_marks(), "the move is not left open"
    heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env)
    assert_one_owner_holding(env, slot, keys)


def test_a_source_failing_over_with_keys_still_to_move_leaves_the_target_able_to_import_them(
        env: ClusterEnv) -> None:
    """The source's replica takes over right after the slot was opened, with every key still on the
    source (nemesis seed 2019: the source SIGKILLed at the start of a scale-in). The target skips an
    importing slot when it hears the replica's claim, then hears that the old source is a replica now,
    and drops that node's slots: in its table the slot has no owner, and it refuses every key the move
    sends (``CLUSTERDOWN Hash slot not served``), pass after pass."""
    A, A1, B = "events-shard-1-0", "events-shard-1-1", "events-shard-0-0"
    settle_epochs(env)
    slot, keys = acknowledged_keys(env, A)
    fired: list[str] = []

    def hook(stage: str, slots: Sequence[int]) -> None:
        if stage != "opened" or slot not in slots or fired:
            return
        fired.append(str(env.client(A1).execute_command("CLUSTER", "FAILOVER")))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and owner_of(env, B, slot) is not None:
            time.sleep(0.02)
        fired.append("no owner in the target's table" if owner_of(env, B, slot) is None else "an owner")

    # the move of this one slot starts, as a scale-in's would; the source is a replica before any key
    # moved, so this pass stops with the slot open
    mover = cl.SlotMover(cl.RawConnections(PASSWORD, timeout=5.0), hook=hook)
    with pytest.raises(cl.MigrationError):
        mover.move(cl.Endpoint(env.myself(A).id, env.address(A), *env.address(A)),
                   cl.Endpoint(env.myself(B).id, env.address(B), *env.address(B)), [slot])
    # Redis 7.0 drops the slot from the importing target's table; Redis 8.0 and Valkey keep an owner there
    info = env.client(B).info("server")
    redis7 = not engines.is_valkey(info) and str(info["redis_version"]).startswith("7.")
    assert fired == ["OK", "no owner in the target's table" if redis7 else "an owner"], fired
    # the operator's passes finish the move from the shard's new master
    topology = ClusterTopology(env.addresses(), timeout=1.0)
    reports = heal_until(topology, SPEC, OWNER, PASSWORD, timeout=60, env=env)
    assert reports[-1].healthy
    assert_one_owner_holding(env, slot, keys)

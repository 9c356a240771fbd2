"""The cluster plan, pure: observed node tables in, steps out."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from cluster_fake import Fake

from redis_messaging.modes.cluster import topology as ct
from redis_messaging.redis import cluster as cl

SLOTS = 16384


# ---------------------------------------------------------------------------------------------
# Slot arithmetic


@pytest.mark.parametrize("shards", [3, 4, 5, 7, 100])
def test_even_ranges_cover_every_slot_once(shards: int) -> None:
    ranges = ct.even_ranges(shards)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == SLOTS - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    counts = ct.even_counts(shards)
    assert sum(counts) == SLOTS
    assert max(counts) - min(counts) <= 1


def owned_by_ranges(shards: int) -> dict[int, set[int]]:
    return {i: set(range(a, b + 1)) for i, (a, b) in enumerate(ct.even_ranges(shards))}


def apply(owned: dict[int, set[int]], moves: list[ct.SlotMove]) -> dict[int, set[int]]:
    out = {k: set(v) for k, v in owned.items()}
    for m in moves:
        assert set(m.slots) <= out[m.source]
        out[m.source] -= set(m.slots)
        out.setdefault(m.target, set()).update(m.slots)
    return out


def test_balance_scale_out_takes_from_every_old_shard_to_the_new_one() -> None:
    owned = owned_by_ranges(3)
    moves = ct.balance(owned, 4)
    assert {m.target for m in moves} == {3}
    assert {m.source for m in moves} == {0, 1, 2}
    after = apply(owned, moves)
    assert [len(after[i]) for i in range(4)] == ct.even_counts(4)
    assert sum(len(m.slots) for m in moves) == 4096


def test_balance_scale_in_spreads_the_removed_shard_over_every_remaining_one() -> None:
    owned = owned_by_ranges(4)
    moves = ct.balance(owned, 3)
    assert {m.source for m in moves} == {3}
    assert {m.target for m in moves} == {0, 1, 2}
    after = apply(owned, moves)
    assert not after[3]
    assert [len(after[i]) for i in range(3)] == ct.even_counts(3)


def test_a_balanced_cluster_needs_no_move() -> None:
    assert ct.balance(owned_by_ranges(3), 3) == []
    assert ct.balance(owned_by_ranges(7), 7) == []


# ---------------------------------------------------------------------------------------------
# Observations made by hand


def kinds(p: ct.Plan) -> Counter[str]:
    return Counter(type(s).__name__ for s in p.steps)


# ---------------------------------------------------------------------------------------------
# Bootstrap


def test_fresh_nodes_are_met_by_the_first_pod() -> None:
    fake = Fake()
    fake.alone = set(fake.members)
    p = ct.plan(fake.observation())
    assert kinds(p) == {"Meet": 5}
    assert {s.via for s in p.steps if isinstance(s, ct.Meet)} == {"r-shard-0-0"}
    assert p.reason == "Joining"


def test_bootstrap_waits_for_every_pod() -> None:
    fake = Fake()
    fake.alone = set(fake.members)
    fake.down = {"r-shard-2-1"}
    p = ct.plan(fake.observation())
    assert p.steps == []
    assert p.reason == "WaitingForPods"
    assert "r-shard-2-1" in p.message


def test_joined_fresh_nodes_get_the_even_split_then_replicas() -> None:
    fake = Fake()
    p = ct.plan(fake.observation())
    adds = [s for s in p.steps if isinstance(s, ct.AddSlots)]
    assert [(s.pod, s.slots) for s in adds] == [
        (f"r-shard-{i}-0", (r,)) for i, r in enumerate(ct.even_ranges(3))]
    assert all(s.bootstrap for s in adds)
    for i, (a, b) in enumerate(ct.even_ranges(3)):
        fake.slots[f"r-shard-{i}-0"] = [(a, b)]
    p = ct.plan(fake.observation())
    assert [(s.pod, s.master) for s in p.steps if isinstance(s, ct.Replicate)] == [
        (f"r-shard-{i}-1", f"r-shard-{i}-0") for i in range(3)]


def test_a_healthy_cluster_has_nothing_to_do() -> None:
    p = ct.plan(Fake().bootstrapped().observation())
    assert p.steps == []
    assert p.healthy
    assert [(s.master, s.replicas, s.slots) for s in p.shards] == [
        (f"r-shard-{i}-0", (f"r-shard-{i}-1",), (r,)) for i, r in enumerate(ct.even_ranges(3))]


def test_a_cluster_holding_slots_is_never_bootstrapped_again() -> None:
    fake = Fake().bootstrapped()
    fake.down = {"r-shard-1-0", "r-shard-1-1"}  # a whole shard away: its slots are still claimed
    p = ct.plan(fake.observation())
    assert not [s for s in p.steps if isinstance(s, ct.AddSlots)]
    assert not p.healthy


def test_a_node_that_knows_another_cluster_with_slots_is_never_merged() -> None:
    fake = Fake().bootstrapped()
    fake.ids["r-shard-2-1"] = "id-stranger"
    fake.alone.add("r-shard-2-1")
    fake.slots["r-shard-2-1"] = [(0, 10)]
    p = ct.plan(fake.observation())
    assert not [s for s in p.steps if isinstance(s, ct.Meet) and s.pod == "r-shard-2-1"]


# ---------------------------------------------------------------------------------------------
# Healing


def test_a_replaced_pod_is_met_then_attached_and_its_old_id_forgotten() -> None:
    fake = Fake().bootstrapped()
    # shard 0's replica lost its volume: a new id, alone; the old id is failed in everybody's table
    old = cl.ClusterNode(id="old-0-1", ip="ip-r-shard-0-1", port=6379, hostname="r-shard-0-1",
                         flags=frozenset({"slave", "fail"}), master_id="id-r-shard-0-0", connected=False,
                         config_epoch=0)
    fake.ids["r-shard-0-1"] = "new-0-1"
    fake.masters["r-shard-0-1"] = None
    fake.alone.add("r-shard-0-1")
    fake.extra = [old]
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, s.pod) for s in p.steps] == [("Meet", "r-shard-0-1")]
    fake.alone.clear()
    p = ct.plan(fake.observation())
    forgets = [s for s in p.steps if isinstance(s, ct.Forget)]
    assert [s.node_id for s in forgets] == ["old-0-1"]
    assert set(forgets[0].on) == set(fake.members)  # the new node learnt the old id by gossip too
    fake.extra = []
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, s.pod) for s in p.steps] == [("Replicate", "r-shard-0-1")]


def test_a_failed_pod_that_may_come_back_is_not_forgotten() -> None:
    fake = Fake().bootstrapped()
    fake.down = {"r-shard-1-1"}
    fake.failed = {"id-r-shard-1-1"}
    p = ct.plan(fake.observation())
    assert not [s for s in p.steps if isinstance(s, ct.Forget)]
    assert not p.healthy


def test_a_node_a_pod_answers_with_is_never_forgotten_whatever_name_the_tables_give_it() -> None:
    """Redis 8, a killed master restarted on its volume: right after the restart the others still flag
    it failed and name it by an address no pod is known by; it answers with its id all the same.
    Forgotten, it would know a cluster that no longer knows it, and never be let back in."""
    fake = Fake().bootstrapped()
    fake.fail_over("r-shard-0-0", "r-shard-0-1", old="replica")
    fake.failed.add(fake.ids["r-shard-0-0"])
    fake.hostnames["r-shard-0-0"] = "10.9.9.9"
    p = ct.plan(fake.observation())
    assert not [s for s in p.steps if isinstance(s, ct.Forget)], p.steps


def test_a_promoted_replica_is_the_shard_master_and_the_old_master_replicates_it() -> None:
    fake = Fake().bootstrapped()
    fake.slots["r-shard-2-1"] = fake.slots.pop("r-shard-2-0")
    fake.masters["r-shard-2-1"] = None
    fake.masters["r-shard-2-0"] = None  # came back as an empty master (no replica migration)
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, s.pod, getattr(s, "master", None)) for s in p.steps] == [
        ("Replicate", "r-shard-2-0", "r-shard-2-1")]


def test_slots_left_open_are_finished_towards_their_target() -> None:
    fake = Fake().bootstrapped()
    fake.migrating["r-shard-0-0"] = [(5, "id-r-shard-1-0"), (6, "id-r-shard-1-0")]
    fake.importing["r-shard-1-0"] = [(5, "id-r-shard-0-0"), (6, "id-r-shard-0-0")]
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, s.source, s.target, s.slots, s.resume) for s in p.steps
            if isinstance(s, ct.Move)] == [("Move", "r-shard-0-0", "r-shard-1-0", (5, 6), True)]
    assert p.reason == "Resharding"


def test_a_move_whose_source_failed_over_before_the_assignment_finishes_though_no_node_claims_the_slot() -> None:
    """CI, under load: the source failed over after its keys moved; the target (the anchor, importing)
    still names the old source, now a replica; the other masters were told the target owns the slot,
    and the target's higher epoch made the new source master give the slot up too (an UPDATE message).
    No node serves the slot in its own line; the newest claim in the tables is the target's, and the
    move resumes from the shard named by the import (moving nothing, then assigning)."""
    slot = 6000
    fake = Fake().bootstrapped()
    source, promoted, target = "r-shard-1-0", "r-shard-1-1", "r-shard-0-0"
    fake.fail_over(source, promoted, old="replica")
    fake.slots[source] = [(slot, slot)]  # the target's table: the old source still has it (it imports it)
    fake.slots[promoted] = [r for r in ct.cl.ranges(set(range(5461, 10923)) - {slot})]
    fake.believes = {p: {slot: target} for p in fake.members if p not in (target, "r-shard-0-1")}
    fake.believes["r-shard-0-1"] = {slot: promoted}
    fake.epochs = {target: 9, promoted: 8, source: 5}
    fake.importing[target] = [(slot, fake.ids[source])]
    fake.keys = {target: {slot: 30}, "r-shard-0-1": {slot: 30}}
    p = ct.plan(fake.observation())
    assert [(s.source, s.target, s.slots, s.resume) for s in p.steps if isinstance(s, ct.Move)] == [
        (promoted, target, (slot,), True)], (p.reason, p.message)


def test_a_master_back_with_the_last_batch_its_replica_never_heard_of_hands_it_to_the_shard_master() -> None:
    """Nemesis seed 499 (cluster): the target master of a scale-in took a batch (256 slots) and was
    SIGKILLed before its replica heard of it; the replica took over the shard's other slots, and the
    old master came back serving the batch. Both are masters without a replica, so nothing can be
    written to the shard's master (min-replicas-to-write) and every pass failed. The batch goes to the
    shard with its replicas (a slot move: keys follow, nothing overwritten); then the old master follows
    the shard's master."""
    fake = Fake().bootstrapped()
    old, promoted = "r-shard-0-0", "r-shard-0-1"
    fake.fail_over(old, promoted, old="replica")
    fake.masters[old] = None  # back as a master: it still serves the batch
    fake.slots[old] = [(12288, 12543)]
    fake.slots["r-shard-2-0"] = [(10923, 12287), (12544, 16383)]
    fake.epochs = {old: 8, promoted: 9}
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, getattr(s, "source", None), getattr(s, "target", None)) for s in p.steps] == [
        ("Move", old, "r-shard-2-0")], (p.reason, p.message)  # shard 2 serves the fewest slots now
    (move,) = p.steps
    assert isinstance(move, ct.Move)
    assert (move.slots[0], move.slots[-1], len(move.slots)) == (12288, 12543, 256)
    assert move.only_if_empty  # no replica follows it: MIGRATE (a write) would be refused if it held keys
    # a slot another master claims with the same epoch in some table: who serves it is not known, it stays
    fake.believes["r-shard-2-1"] = {12300: "r-shard-2-0"}
    fake.epochs["r-shard-2-0"] = 8
    (move,) = ct.plan(fake.observation()).steps
    assert isinstance(move, ct.Move)
    assert 12300 not in move.slots
    assert len(move.slots) == 255
    del fake.believes["r-shard-2-1"]
    # no other shard takes writes: its own shard's master (which takes them if they hold no key)
    fake.down |= {"r-shard-1-1", "r-shard-2-1"}
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, getattr(s, "source", None), getattr(s, "target", None)) for s in p.steps] == [
        ("Move", old, promoted)], (p.reason, p.message)


def test_an_old_master_claiming_slots_the_cluster_gave_its_replica_is_not_moved_from() -> None:
    """The other way round (an old master that did not hear it was replaced claims the shard's slots
    in its own line, the cluster's table gives them to the new master): nothing moves, it is said."""
    fake = Fake().bootstrapped()
    old, promoted = "r-shard-0-0", "r-shard-0-1"
    fake.fail_over(old, promoted, old="replica")
    fake.masters[old] = None
    fake.believes[old] = {slot: old for slot in range(0, 5)}
    fake.slots[old] = []
    fake.epochs = {old: 3, promoted: 9}
    p = ct.plan(fake.observation())
    assert not [s for s in p.steps if isinstance(s, ct.Move)], p.steps
    assert f"{old} and {promoted} both serve slots of shard 0" in p.message


def test_open_slots_towards_a_vanished_node_are_made_stable() -> None:
    fake = Fake().bootstrapped()
    fake.migrating["r-shard-0-0"] = [(5, "id-gone")]
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, s.pod, s.slots) for s in p.steps] == [("Stabilize", "r-shard-0-0", (5,))]


# ---------------------------------------------------------------------------------------------
# Scaling


def grow(fake: Fake, shard: int) -> None:
    for j in range(1 + fake.per):
        fake.add(f"r-shard-{shard}-{j}", shard, j)
    for j in range(1, 1 + fake.per):
        fake.masters[f"r-shard-{shard}-{j}"] = f"r-shard-{shard}-0"
    fake.shards = max(fake.shards, shard + 1)


def test_scale_out_moves_an_even_share_to_the_new_shard() -> None:
    fake = Fake().bootstrapped()
    grow(fake, 3)
    p = ct.plan(fake.observation(4))
    moves = [s for s in p.steps if isinstance(s, ct.Move)]
    assert {s.target for s in moves} == {"r-shard-3-0"}
    assert sum(len(s.slots) for s in moves) == 4096
    assert p.reason == "Resharding"


def test_scale_out_waits_until_the_new_shard_has_its_replica_in_sync() -> None:
    fake = Fake().bootstrapped()
    grow(fake, 3)
    fake.links = {p for p in fake.members if not p.startswith("r-shard-3")}
    p = ct.plan(fake.observation(4))
    assert not [s for s in p.steps if isinstance(s, ct.Move)]
    assert "shard 3 has 0 replicas in sync" in p.message


def test_scale_in_drains_then_forgets_then_releases() -> None:
    fake = Fake(shards=4).bootstrapped()
    p = ct.plan(fake.observation(3))
    moves = [s for s in p.steps if isinstance(s, ct.Move)]
    assert {s.source for s in moves} == {"r-shard-3-0"}
    assert {s.target for s in moves} == {"r-shard-0-0", "r-shard-1-0", "r-shard-2-0"}
    # drained: shard 3 owns nothing
    for i, (a, b) in enumerate(ct.even_ranges(3)):
        fake.slots[f"r-shard-{i}-0"] = [(a, b)]
    fake.slots.pop("r-shard-3-0")
    p = ct.plan(fake.observation(3))
    assert kinds(p) == {"Forget": 2, "Reset": 2}
    assert {s.node_id for s in p.steps if isinstance(s, ct.Forget)} == {"id-r-shard-3-0", "id-r-shard-3-1"}
    assert p.released == []
    # forgotten and reset: shard 3's pods are alone and nobody knows them
    fake.alone = {"r-shard-3-0", "r-shard-3-1"}
    p = ct.plan(fake.observation(3))
    assert p.steps == []
    assert p.released == [3]
    assert [s.index for s in p.shards] == [0, 1, 2]


def test_fewer_than_three_shards_is_refused() -> None:
    p = ct.plan(Fake().bootstrapped().observation(2))
    assert p.steps == []
    assert p.reason == "ScaleInRefused"
    assert "at least 3 shards" in p.message


# ---------------------------------------------------------------------------------------------
# Parsing what Redis says


def test_parse_cluster_nodes() -> None:
    text = (
        "07c3 10.0.0.1:6379@16379,events-shard-0-0.h.ns.svc.cluster.local myself,master - 0 0 1 connected "
        "0-5460 5465 [5461->-67ed] [5462-<-292f]\n"
        "67ed 10.0.0.2:6379@16379,events-shard-1-0.h master - 0 1426238317239 2 connected 5466-10922\n"
        "292f :0@0 slave,fail,noaddr 67ed 1426238316232 1426238315000 2 disconnected\n"
    )
    nodes = cl.parse_nodes(text)
    me, other, dead = nodes
    assert me.myself
    assert me.is_master
    assert me.hostname == "events-shard-0-0.h.ns.svc.cluster.local"
    assert me.slots == ((0, 5460), (5465, 5465))
    assert me.migrating == ((5461, "67ed"),)
    assert me.importing == ((5462, "292f"),)
    assert me.slot_count == 5462
    assert other.ip == "10.0.0.2"
    assert other.config_epoch == 2
    assert dead.failed
    assert dead.no_address
    assert not dead.connected
    assert dead.master_id == "67ed"
    assert dead.hostname == ""


def test_ranges_and_slot_of() -> None:
    assert cl.ranges([7, 0, 1, 2, 9, 8]) == [(0, 2), (7, 9)]
    assert ct.format_ranges([(0, 2), (7, 7)]) == "0-2,7"
    assert cl.slot_of("{user1000}.following") == cl.slot_of("{user1000}.followers")
    assert cl.slot_of("foo") == 12182  # the example of the Redis Cluster specification


def test_streams_are_placed_on_the_master_of_their_slot() -> None:
    from redis_messaging.api.models import Stream
    from redis_messaging.redis.nodes import Node, Placement

    a, b, c = (Node(f"r-shard-{i}-0", (f"10.0.0.{i}", 6379), f"r-shard-{i}") for i in range(3))
    placement = Placement.sharded([(a, [(0, 5460)]), (b, [(5461, 10922)]), (c, [(10923, 16383)])])
    assert placement is not None
    assert placement.node_of("foo") == c  # slot 12182
    assert placement.node_of("{foo}.orders") == c
    assert placement.node_of("bar").shard == "r-shard-0"  # slot 5061
    streams = [Stream(name="foo"), Stream(name="bar"), Stream(name="{foo}x")]
    assert [(n.name, [s.name for s in ss]) for n, ss in placement.by_node(streams)] == [
        ("r-shard-2-0", ["foo", "{foo}x"]), ("r-shard-0-0", ["bar"])]
    assert Placement.sharded([]) is None


def test_only_released_shards_beyond_the_spec_lose_their_workloads() -> None:
    from redis_messaging.api import models
    from redis_messaging.builders.names import Owner
    from redis_messaging.reconcile.sync import release_shards

    class FakeKube:
        def __init__(self) -> None:
            self.deleted: list[tuple[str, str]] = []

        def get(self, kind: str, namespace: str, name: str) -> dict[str, str]:
            return {"kind": kind}

        def delete(self, kind: str, namespace: str, name: str) -> None:
            self.deleted.append((kind, name))

    kube = FakeKube()
    spec = models.parse_spec({"mode": "cluster", "cluster": {"shards": 3}})
    done = release_shards(kube, spec, Owner("r", "ns"), ["r-shard-3", "r-shard-1", "other"])  # type: ignore[arg-type]
    assert kube.deleted == [("StatefulSet", "r-shard-3"), ("PodDisruptionBudget", "r-shard-3")]
    assert len(done) == 2

"""Slots an interrupted migration left open: never closed on the source while any node of the target
shard holds keys of them; resumed towards the target shard's current master; waiting (and saying why)
when the counts are unknown."""

from __future__ import annotations

import pytest
from cluster_fake import Fake

from redis_messaging.modes.cluster import topology as ct

A, A1 = "r-shard-0-0", "r-shard-0-1"  # the source shard: master, replica
B, B1 = "r-shard-1-0", "r-shard-1-1"  # the target shard: master, replica
SLOT = 5  # served by shard 0 in the even split of 3 shards


def half_moved(fake: Fake, *, source: str = A, target: str = B, slots: tuple[int, ...] = (SLOT,)) -> Fake:
    """``slots`` half-moved from ``source`` to ``target``: both marks set, as the mover leaves them."""
    fake.migrating[source] = [(s, fake.ids[target]) for s in slots]
    fake.importing[target] = [(s, fake.ids[source]) for s in slots]
    return fake


def steps_of(plan: ct.Plan, kind: type) -> list[ct.Step]:
    return [s for s in plan.steps if isinstance(s, kind)]


def stabilized(plan: ct.Plan) -> list[tuple[str, tuple[int, ...]]]:
    return [(s.pod, s.slots) for s in steps_of(plan, ct.Stabilize)]  # type: ignore[attr-defined]


def moves(plan: ct.Plan) -> list[tuple[str, str, tuple[int, ...], int, int, bool]]:
    return [(s.source, s.target, s.slots, s.source_shard, s.target_shard, s.resume)  # type: ignore[attr-defined]
            for s in steps_of(plan, ct.Move)]


# ---------------------------------------------------------------------------------------------
# The target master failed over


@pytest.mark.parametrize("old", ["dead", "replica", "gone"])
def test_a_move_whose_target_failed_over_resumes_towards_the_new_master(old: str) -> None:
    fake = half_moved(Fake().bootstrapped())
    fake.fail_over(B, B1, old=old)  # B1 has the keys B took so far: the importing mark died with B's role
    fake.importing.pop(B)
    fake.keys[B1] = {SLOT: 3}
    p = ct.plan(fake.observation())
    assert stabilized(p) == []
    assert moves(p) == [(A, B1, (SLOT,), 0, 1, True)]
    assert p.reason == "Resharding"


def test_a_target_flagged_fail_with_keys_on_its_shard_waits_for_the_shard_to_have_a_master() -> None:
    fake = half_moved(Fake().bootstrapped())
    fake.down.add(B)
    fake.failed.add(fake.ids[B])  # flagged fail; its replica has not taken over (yet)
    fake.keys[B1] = {SLOT: 2}
    p = ct.plan(fake.observation())
    assert p.steps == []
    assert p.reason == "SlotMoveWaiting"
    assert f"slot {SLOT}: its target shard 1 has no usable master" in p.message
    assert f"{B1} holds 2" in p.message
    assert not p.healthy
    # the replica takes over: the move resumes towards it
    fake.fail_over(B, B1)
    fake.importing.pop(B)
    assert moves(ct.plan(fake.observation())) == [(A, B1, (SLOT,), 0, 1, True)]


def test_a_target_flagged_fail_whose_shard_cannot_be_counted_waits() -> None:
    fake = half_moved(Fake().bootstrapped())
    fake.down.add(B)
    fake.failed.add(fake.ids[B])
    p = ct.plan(fake.observation())  # B1 counts 0, B does not answer: unknown is not 0
    assert p.steps == []
    assert f"{B} not reachable" in p.message


def test_a_target_whose_every_node_answers_with_no_key_is_closed_source_last_with_a_guard() -> None:
    fake = half_moved(Fake().bootstrapped())
    fake.failed.add(fake.ids[B])  # flagged fail by the cluster, yet it answers us: provably empty
    p = ct.plan(fake.observation())
    assert [(type(s).__name__, s.pod) for s in p.steps] == [("Stabilize", B), ("Stabilize", A)]
    closing_source = p.steps[1]
    assert isinstance(closing_source, ct.Stabilize)
    assert closing_source.guard == (B, B1)  # counted again right before the source is closed
    assert p.steps[0] == ct.Stabilize(B, (SLOT,))


# ---------------------------------------------------------------------------------------------
# The target shard is being removed


def leaving_target(keys: dict[str, dict[int, int]]) -> Fake:
    fake = Fake(shards=4).bootstrapped()  # observed with shards=3: shard 3 is being removed
    fake.keys = keys
    return half_moved(fake, target="r-shard-3-0")


def test_a_move_into_a_leaving_shard_that_holds_keys_finishes_there_then_moves_on() -> None:
    fake = leaving_target({"r-shard-3-0": {SLOT: 4}, "r-shard-3-1": {SLOT: 4}})
    p = ct.plan(fake.observation(3))
    assert stabilized(p) == []
    assert moves(p) == [(A, "r-shard-3-0", (SLOT,), 0, 3, True)]
    # finished: shard 3 serves the slot with every key; balancing gives it to a remaining shard
    fake.give(SLOT, "r-shard-3-0")
    fake.migrating.clear()
    fake.importing.clear()
    p = ct.plan(fake.observation(3))
    onward = [m for m in moves(p) if SLOT in m[2]]
    assert len(onward) == 1
    assert onward[0][0] == "r-shard-3-0"
    assert onward[0][4] in (0, 1, 2)


def test_a_move_into_a_leaving_shard_that_provably_holds_nothing_is_closed() -> None:
    fake = leaving_target({})
    p = ct.plan(fake.observation(3))
    assert [(type(s).__name__, s.pod) for s in p.steps] == [("Stabilize", "r-shard-3-0"), ("Stabilize", A)]
    assert p.steps[1] == ct.Stabilize(A, (SLOT,), ("r-shard-3-0", "r-shard-3-1"))


def test_a_move_into_a_leaving_shard_with_a_replica_not_answering_finishes_there() -> None:
    fake = leaving_target({})
    fake.down.add("r-shard-3-1")  # may hold keys: the move goes on into the leaving shard, never closed
    p = ct.plan(fake.observation(3))
    assert stabilized(p) == []
    assert moves(p) == [(A, "r-shard-3-0", (SLOT,), 0, 3, True)]


# ---------------------------------------------------------------------------------------------
# The target node is gone from the cluster


def test_a_move_towards_a_vanished_node_waits_while_a_node_cannot_be_counted() -> None:
    fake = Fake().bootstrapped()
    fake.migrating[A] = [(SLOT, "id-gone")]
    fake.down.add("r-shard-2-1")
    p = ct.plan(fake.observation())
    assert p.steps == []
    assert p.reason == "SlotMoveWaiting"
    assert "r-shard-2-1 holds keys of it is unknown" in p.message
    fake.down.clear()
    fake.uncounted.add("r-shard-1-1")  # answers, but its count failed: unknown too
    assert ct.plan(fake.observation()).steps == []


def test_a_move_towards_a_vanished_node_resumes_towards_the_shard_holding_its_keys() -> None:
    fake = Fake().bootstrapped()
    fake.migrating[A] = [(SLOT, "id-gone")]
    fake.keys[B] = fake.keys[B1] = {SLOT: 1}
    p = ct.plan(fake.observation())
    assert moves(p) == [(A, B, (SLOT,), 0, 1, True)]
    assert stabilized(p) == []


# ---------------------------------------------------------------------------------------------
# Other half-moves


def test_a_slot_the_target_serves_already_gets_the_keys_left_on_the_source() -> None:
    fake = Fake().bootstrapped().give(SLOT, B)  # assigned on the target, then interrupted
    fake.migrating[A] = [(SLOT, fake.ids[B])]
    fake.keys[A] = fake.keys[A1] = {SLOT: 2}
    assert moves(ct.plan(fake.observation())) == [(A, B, (SLOT,), 0, 1, True)]


def test_an_import_whose_source_failed_over_resumes_from_the_slots_new_owner() -> None:
    fake = half_moved(Fake().bootstrapped())
    fake.fail_over(A, A1)  # A's migrating mark died with it; A1 serves the slot with the keys left
    fake.keys[A1] = {SLOT: 5}
    fake.keys[B] = fake.keys[B1] = {SLOT: 3}
    p = ct.plan(fake.observation())
    assert moves(p) == [(A1, B, (SLOT,), 0, 1, True)]
    assert stabilized(p) == []


def test_an_imported_slot_that_nobody_serves_goes_to_its_importer() -> None:
    fake = Fake().bootstrapped()
    fake.slots[A] = [(0, SLOT - 1), (SLOT + 1, 5461)]  # the source and its id are gone for good
    fake.importing[B] = [(SLOT, "id-gone")]
    p = ct.plan(fake.observation())
    assert p.steps == [ct.AddSlots(B, 1, ((SLOT, SLOT),), bootstrap=False, imported=True)]


def test_keys_on_a_third_shard_are_not_moved_automatically() -> None:
    fake = half_moved(Fake().bootstrapped())
    fake.keys["r-shard-2-0"] = {SLOT: 1}
    p = ct.plan(fake.observation())
    assert p.steps == []
    assert "on shard 2 too" in p.message


def test_waiting_slots_are_listed_together_and_the_cluster_is_not_balanced_meanwhile() -> None:
    fake = half_moved(Fake().bootstrapped(), slots=(5, 6, 7))
    fake.down.add(B)
    fake.failed.add(fake.ids[B])
    fake.keys[B1] = {5: 1, 6: 1, 7: 1}
    p = ct.plan(fake.observation())
    assert p.steps == []
    assert "slots 5-7: its target shard 1 has no usable master" in p.message

"""Generated cases over the cluster plan's handling of half-moved slots (hypothesis; see generated.py for
how many per run): clusters with slots open on either side or both, keys of those slots on the source
and on any node of the target shard, the target failed over, flagged ``fail``, gone, or in a shard being
removed, the source failed over, nodes not answering or not counted. Over every case:

- no slot is made stable while any node of its target shard holds keys of it or cannot be counted, and
  the source is closed only with a guard naming every node of the target shard, after the target side;
- every move goes to the master of its target shard (reachable, a master in its own view and in the
  cluster's table, not ``fail``) from a reachable master of another shard; an open slot whose target
  shard holds keys of it moves to that shard only, and no slot is balanced while one is open;
- nothing else drops keys of an open slot: no node holding them is reset, no open slot is assigned
  elsewhere, and a cluster with an open slot is never reported healthy.

``REPLACE`` is not expressible here (the plan's steps carry no MIGRATE option); the mover never sends it,
which tests/redis/test_cluster_open_slots.py proves on real nodes (a key on both sides keeps both values).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster_fake import Fake
from generated import generated
from hypothesis import given
from hypothesis import strategies as st

from redis_messaging.modes.cluster import topology as ct


@dataclass
class Case:
    fake: Fake
    shards: int  # as the spec says (a shard beyond is being removed)
    source: int
    target: int
    slots: tuple[int, ...]

    def pods(self, shard: int) -> list[str]:
        return [p for p, (s, _) in self.fake.members.items() if s == shard]

    def keys(self, pod: str, slot: int) -> int:
        return self.fake.keys.get(pod, {}).get(slot, 0)

    def counted(self, pod: str) -> bool:
        return pod not in self.fake.down and pod not in self.fake.uncounted


@st.composite
def half_moved_clusters(draw: st.DrawFn) -> Case:
    shards = draw(st.sampled_from([3, 4]))
    per = draw(st.integers(0, 2))
    leaving = draw(st.booleans())  # the target shard is being removed (a scale-in after a scale-out)
    fake = Fake(shards=shards + leaving, per=per).bootstrapped()
    source = draw(st.integers(0, shards - 1))
    target = shards if leaving else draw(st.integers(0, shards - 1).filter(lambda t: t != source))
    a, b = f"r-shard-{source}-0", f"r-shard-{target}-0"
    start, end = ct.even_ranges(shards + leaving)[source]
    slots = tuple(sorted(draw(st.sets(st.integers(start, end), min_size=1, max_size=3))))
    source_id, target_id = fake.ids[a], fake.ids[b]

    # how far the move got: marks on the source, on the target, on both; or assigned on the target
    stage = draw(st.sampled_from(["both", "source", "target", "assigned"]))
    if stage == "assigned":
        for slot in slots:
            fake.give(slot, b)
    if stage in ("both", "source", "assigned"):
        fake.migrating[a] = [(s, target_id) for s in slots]
    if stage in ("both", "target"):
        fake.importing[b] = [(s, source_id) for s in slots]

    # keys of the open slots: on the source shard and on any node of the target shard (a replica may lag
    # or lead), now and then on a third shard too
    third = [s for s in range(shards + leaving) if s not in (source, target)]
    for slot in slots:
        on_source = draw(st.integers(0, 3))
        for pod in (p for p, (s, _) in fake.members.items() if s == source):
            fake.keys.setdefault(pod, {})[slot] = on_source
        for pod in (p for p, (s, _) in fake.members.items() if s == target):
            fake.keys.setdefault(pod, {})[slot] = draw(st.integers(0, 3))
        if third and draw(st.integers(0, 9)) == 0:
            pod = f"r-shard-{draw(st.sampled_from(third))}-0"
            fake.keys.setdefault(pod, {})[slot] = 1

    # what happened since: to the target, to the source
    happened = ["ok", "flagged_fail"] + (["failed_over", "back_as_replica", "gone"] if per else [])
    to_target = draw(st.sampled_from(happened))
    if to_target == "flagged_fail":
        fake.failed.add(target_id)
        if draw(st.booleans()):
            fake.down.add(b)
    elif to_target != "ok":
        fake.fail_over(b, f"r-shard-{target}-1",
                       old={"failed_over": "dead", "back_as_replica": "replica", "gone": "gone"}[to_target])
        if to_target == "gone" or draw(st.booleans()):
            fake.importing.pop(b, None)  # a node that stops being a master drops its marks
    if per and draw(st.integers(0, 3)) == 0:
        fake.fail_over(a, f"r-shard-{source}-1", old=draw(st.sampled_from(["dead", "replica"])))
        if draw(st.booleans()):
            fake.migrating.pop(a, None)

    # who answers, and whose keys could be counted
    pods = sorted(fake.members)
    fake.down |= draw(st.sets(st.sampled_from(pods), max_size=2))
    fake.uncounted |= draw(st.sets(st.sampled_from(pods), max_size=1))
    return Case(fake, shards, source, target, slots)


def usable_master(obs: ct.Observation, pod: str) -> bool:
    view = obs.views[pod]
    me = view.myself
    return view.reachable and me is not None and me.is_master and not me.failed


@generated()
@given(case=half_moved_clusters())
def test_generated_half_moved_slots_never_lose_keys(case: Case) -> None:
    obs = case.fake.observation(case.shards)
    p = ct.plan(obs)
    analysis = ct._Analysis(obs)
    target_pods = case.pods(case.target)
    opened = set(case.slots)
    seen_open = any(set(s for s, _ in (*v.myself.migrating, *v.myself.importing)) & opened
                    for v in obs.views.values() if v.reachable and v.myself is not None)

    for step in p.steps:
        if isinstance(step, ct.Stabilize):
            for slot in set(step.slots) & opened:
                for pod in target_pods:
                    assert case.counted(pod), f"slot {slot} closed on {step.pod} while {pod} cannot be counted"
                    assert case.keys(pod, slot) == 0, f"slot {slot} closed on {step.pod} while {pod} holds keys"
            if any(m[0] == step.pod for m in case.fake.migrating.items()):
                assert set(target_pods) <= set(step.guard), "the source is closed without counting again"
                closing_target = [i for i, s in enumerate(p.steps) if isinstance(s, ct.Stabilize) and not s.guard]
                assert all(i < p.steps.index(step) for i in closing_target), "the source closed before the target"
        elif isinstance(step, ct.Move):
            assert step.source_shard != step.target_shard
            assert usable_master(obs, step.target), f"a move targets {step.target}, not a usable master"
            assert usable_master(obs, step.source), f"a move takes from {step.source}, not a usable master"
            master = analysis.shard_master(step.target_shard)
            assert master is not None
            assert analysis.pod_of_node(master) == step.target, "a move targets a node that is not its shard's master"
            assert obs.members[step.target][0] == step.target_shard
            assert step.resume or not seen_open, "the cluster is balanced while a slot is open"
            for slot in set(step.slots) & opened if step.resume else ():
                if any(case.keys(pod, slot) for pod in target_pods):
                    assert step.target_shard == case.target, f"slot {slot} moves away from the keys on its target"
        elif isinstance(step, ct.Reset):
            assert not any(case.keys(step.pod, slot) for slot in opened), f"{step.pod} is reset with keys"
        elif isinstance(step, ct.AddSlots):
            assigned = {s for b, e in step.slots for s in range(b, e + 1)}
            assert not assigned & opened, "an open slot is assigned by ADDSLOTS"
    if seen_open:
        assert not p.healthy
        assert p.wait
    if p.reason == "SlotMoveWaiting":
        assert "slot" in p.message

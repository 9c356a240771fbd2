"""The cluster-mode rolling-update plan, as a pure function of pods and node views."""

from __future__ import annotations

import dataclasses

from redis_messaging.modes.cluster.rolling import ClusterFailover, ClusterObservation, plan
from redis_messaging.modes.rollout import DeletePod, Done, PodState, Wait
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.engine import Engine

SHARDS = {0: ("events-shard-0-0", "events-shard-0-1"), 1: ("events-shard-1-0", "events-shard-1-1")}
OLD = ("config hash a -> b",)


def nodes_text(masters: dict[int, str]) -> dict[str, str]:
    """CLUSTER NODES as each pod would print it: ``masters[shard]`` is the pod serving its slots."""
    ids = {p: f"{p.replace('-', '')}{'0' * 20}"[:40] for pods in SHARDS.values() for p in pods}
    out = {}
    for me in ids:
        lines = []
        for shard, pods in SHARDS.items():
            for p in pods:
                flags = ("myself," if p == me else "") + ("master" if p == masters[shard] else "slave")
                master = "-" if p == masters[shard] else ids[masters[shard]]
                slots = f" {shard * 8192}-{shard * 8192 + 8191}" if p == masters[shard] else ""
                lines.append(f"{ids[p]} 10.0.0.{len(lines)}:6379@16379,{p} {flags} {master} 0 0 1 connected{slots}")
        out[me] = "\n".join(lines)
    return out


def observation(outdated: set[str], *, masters: dict[int, str] | None = None, not_ready: set[str] = frozenset(),
                state: str = "ok", link_down: set[str] = frozenset()) -> ClusterObservation:
    masters = masters or {0: "events-shard-0-0", 1: "events-shard-1-0"}
    text = nodes_text(masters)
    pods = {p: PodState(p, "shard", ready=p not in not_ready, outdated=OLD if p in outdated else ())
            for pods in SHARDS.values() for p in pods}
    views = {p: cl.NodeView(("10.0.0.1", 6379), reachable=True, nodes=tuple(cl.parse_nodes(text[p])), state=state,
                            link_up=p not in masters.values() and p not in link_down)
             for p in pods}
    shard_of = {p: s for s, ps in SHARDS.items() for p in ps}
    return ClusterObservation(pods, shard_of, views)


def test_nothing_outdated_nothing_to_do() -> None:
    assert plan(observation(set())) == Done()


def test_replicas_first_then_a_failover_then_the_old_master() -> None:
    every = {p for pods in SHARDS.values() for p in pods}
    step = plan(observation(every))
    assert step == DeletePod("events-shard-0-1", "shard", OLD, 4)
    # replicas replaced: the outdated masters hand over to their shard's up-to-date replica
    step = plan(observation({"events-shard-0-0", "events-shard-1-0"}))
    assert step == ClusterFailover("events-shard-0-0", "events-shard-0-1", OLD)
    # after the failover the old master is a replica: restarted like one
    step = plan(observation({"events-shard-0-0", "events-shard-1-0"},
                            masters={0: "events-shard-0-1", 1: "events-shard-1-0"}))
    assert step == DeletePod("events-shard-0-0", "shard", OLD, 2)


def test_one_disruption_at_a_time() -> None:
    every = {p for pods in SHARDS.values() for p in pods}
    assert isinstance(plan(observation(every, not_ready={"events-shard-1-1"})), Wait)
    assert isinstance(plan(observation(every, state="fail")), Wait)
    waiting = plan(observation(every, link_down={"events-shard-1-1"}))
    assert isinstance(waiting, Wait)
    assert "events-shard-1-1" in waiting.why


def test_no_handover_to_an_outdated_replica() -> None:
    step = plan(observation({"events-shard-0-0", "events-shard-0-1"},
                            masters={0: "events-shard-0-0", 1: "events-shard-1-0"}))
    assert step == DeletePod("events-shard-0-1", "shard", OLD, 2), "the replica first, then it can take over"


OLD_ENGINE, NEW_ENGINE = Engine("redis", (7, 0, 15)), Engine("valkey", (9, 1, 2))
AFTER = {0: "events-shard-0-1", 1: "events-shard-1-0"}  # shard 0 switched over: 0-0 follows 0-1
STUCK = {"events-shard-0-0", "events-shard-1-0", "events-shard-1-1"}


def stuck_observation(**changes: object) -> ClusterObservation:
    """After the failover of shard 0 from Redis 7.0 to Valkey 9.1: events-shard-0-0 (the old master, still
    on Redis 7.0) follows events-shard-0-1 (Valkey 9.1) with its link down, and is not ready."""
    obs = observation(STUCK, masters=AFTER, not_ready={"events-shard-0-0"}, link_down={"events-shard-0-0"})
    engines = {p: OLD_ENGINE if p in STUCK else NEW_ENGINE for p in obs.views}
    views = {p: dataclasses.replace(v, engine=engines[p]) for p, v in obs.views.items()}
    views["events-shard-0-0"] = dataclasses.replace(views["events-shard-0-0"], **changes)
    return dataclasses.replace(obs, views=views)


def test_an_old_master_that_cannot_load_the_new_engines_snapshot_is_restarted_first() -> None:
    step = plan(stuck_observation())
    assert isinstance(step, DeletePod)
    assert (step.pod, step.left) == ("events-shard-0-0", 3)
    assert step.reasons[0] == OLD[0]
    assert "link to events-shard-0-1 down" in step.reasons[1]


def test_a_stuck_replica_waits_while_anything_else_is_not_as_a_roll_move_requires() -> None:
    stuck = stuck_observation()
    master_id = stuck.views["events-shard-0-1"].id

    def seen_by_all(**flags: object) -> ClusterObservation:
        views = {p: dataclasses.replace(v, nodes=tuple(dataclasses.replace(n, **flags) if n.id == master_id else n
                                                       for n in v.nodes))
                 for p, v in stuck.views.items()}
        return dataclasses.replace(stuck, views=views)

    waits = {
        "another pod not ready": dataclasses.replace(stuck, pods={
            **stuck.pods, "events-shard-1-1": dataclasses.replace(stuck.pods["events-shard-1-1"], ready=False)}),
        "already deleted": dataclasses.replace(stuck, pods={
            **stuck.pods, "events-shard-0-0": dataclasses.replace(stuck.pods["events-shard-0-0"], terminating=True)}),
        "another replica unlinked": dataclasses.replace(stuck, views={
            **stuck.views, "events-shard-1-1": dataclasses.replace(stuck.views["events-shard-1-1"], link_up=False)}),
        "the cluster not ok": dataclasses.replace(stuck, views={
            p: dataclasses.replace(v, state="fail") for p, v in stuck.views.items()}),
        "its master failing": seen_by_all(flags=frozenset({"master", "fail"})),
        "its master suspected": seen_by_all(flags=frozenset({"master", "fail?"})),
        "its master disconnected": seen_by_all(connected=False),
        "the same engine as its master (syncing)": stuck_observation(engine=NEW_ENGINE),
        "an engine not known": stuck_observation(engine=None),
        "linked (its probe lags)": stuck_observation(link_up=True),
        "unreachable or loading": stuck_observation(reachable=False),
        "up to date (restarted, syncing)": dataclasses.replace(stuck, pods={
            **stuck.pods, "events-shard-0-0": PodState("events-shard-0-0", "shard", ready=False)}),
    }
    for why, obs in waits.items():
        assert isinstance(plan(obs), Wait), why

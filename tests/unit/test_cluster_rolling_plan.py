"""The cluster-mode rolling-update plan, as a pure function of pods and node views."""

from __future__ import annotations

from redis_messaging.modes.cluster.rolling import ClusterFailover, ClusterObservation, plan
from redis_messaging.modes.rollout import DeletePod, Done, PodState, Wait
from redis_messaging.redis import cluster as cl

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
    pods = {p: PodState(p, "redis", ready=p not in not_ready, outdated=OLD if p in outdated else ())
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


def test_an_outdated_replica_stuck_unlinked_is_restarted_first() -> None:
    # After the failover the old master (the old engine) cannot load the new master's snapshot: it never
    # becomes ready. It is replaced at once instead of being waited for.
    after = {0: "events-shard-0-1", 1: "events-shard-1-0"}
    outdated = {"events-shard-0-0", "events-shard-1-0", "events-shard-1-1"}
    step = plan(observation(outdated, masters=after, not_ready={"events-shard-0-0"}, link_down={"events-shard-0-0"}))
    assert isinstance(step, DeletePod)
    assert step.pod == "events-shard-0-0"
    assert step.left == 3
    assert step.reasons[0] == OLD[0]
    assert "link to events-shard-0-1 down" in step.reasons[1]
    # Not while another pod is not ready, nor while the cluster is not ok.
    assert isinstance(plan(observation(outdated, masters=after, not_ready={"events-shard-0-0", "events-shard-1-1"},
                                       link_down={"events-shard-0-0"})), Wait)
    assert isinstance(plan(observation(outdated, masters=after, not_ready={"events-shard-0-0"},
                                       link_down={"events-shard-0-0"}, state="fail")), Wait)
    # Linked but not ready (its probe may lag): waited for.
    assert isinstance(plan(observation(outdated, masters=after, not_ready={"events-shard-0-0"})), Wait)
    # Up to date (just restarted, syncing): waited for.
    assert isinstance(plan(observation(outdated - {"events-shard-0-0"}, masters=after,
                                       not_ready={"events-shard-0-0"}, link_down={"events-shard-0-0"})), Wait)

"""The rolling-update plan and the pod/StatefulSet comparison, as pure functions."""

from __future__ import annotations

import dataclasses
from typing import Any

from redis_messaging.builders import names
from redis_messaging.modes.rollout import DeletePod, Done, PodState, Wait, outdated_reasons
from redis_messaging.modes.sentinel.rolling import Failover, RollObservation, plan
from redis_messaging.redis.engine import Engine
from redis_messaging.redis.sentinel import RedisNode, SentinelNode

R = ["orders-redis-0", "orders-redis-1", "orders-redis-2"]
S = ["orders-sentinel-0", "orders-sentinel-1", "orders-sentinel-2"]
ADDR = {p: (f"10.0.0.{i}", 6379) for i, p in enumerate(R)}


def sts(config_hash: str = "new", image: str = "redis:7.2", revision: str = "rev-2") -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {"annotations": {names.ANNOTATION_CONFIG_HASH: config_hash}},
                                  "spec": {"containers": [{"name": "redis", "image": image}]}}},
            "status": {"updateRevision": revision}}


def pod(config_hash: str = "new", image: str = "redis:7.2", revision: str = "rev-2") -> dict[str, Any]:
    return {"metadata": {"annotations": {names.ANNOTATION_CONFIG_HASH: config_hash},
                         "labels": {"controller-revision-hash": revision}},
            "spec": {"containers": [{"name": "redis", "image": image}]}}


def test_reasons_say_what_changed() -> None:
    assert outdated_reasons(pod(), sts()) == ()
    assert outdated_reasons(pod(config_hash="old", revision="rev-1"), sts()) == ("config hash old -> new",)
    assert outdated_reasons(pod(image="redis:7.0", revision="rev-1"), sts()) == (
        "image of redis redis:7.0 -> redis:7.2",)
    # Another template change (e.g. resources): the revision says so.
    assert outdated_reasons(pod(revision="rev-1"), sts()) == ("pod template revision rev-1 -> rev-2",)


def observation(outdated: set[str], *, master: str = "orders-redis-0", ready: set[str] | None = None,
                lagging: set[str] = frozenset(), failing_over: bool = False,  # type: ignore[assignment]
                choices: dict[str, dict[str, str | None]] | None = None) -> RollObservation:
    pods = {p: PodState(p, "redis" if p in R else "sentinel", ready is None or p in ready,
                        ("config hash old -> new",) if p in outdated else ()) for p in R + S}
    redis = {}
    for p in R:
        if p == master:
            redis[p] = RedisNode(ADDR[p], True, "master", offset=100)
        else:
            redis[p] = RedisNode(ADDR[p], True, "slave", master=ADDR[master], link_up=p not in lagging,
                                 offset=50 if p in lagging else 100)
    sentinels = {s: SentinelNode((f"10.0.1.{i}", 26379), True, True, ADDR[master],
                                 flags=frozenset({"master", "failover_in_progress"} if failing_over else {"master"}),
                                 replicas=tuple(ADDR[p] for p in R if p != master),
                                 sentinels=tuple(("x", i) for i in range(2)))
                 for i, s in enumerate(S)}
    follows = {p: master for p in R if p != master}
    if choices is None:  # every Sentinel would promote any replica
        choices = {s: {p: None for p in R if p != master} for s in S}
    return RollObservation(pods, redis, sentinels, master, 100, follows, choices, {s: master for s in S})


def test_order_sentinels_then_replicas_then_switchover_then_old_master() -> None:
    everything, why = set(R + S), ("config hash old -> new",)
    assert plan(observation(everything)) == DeletePod("orders-sentinel-2", "sentinel", why, 6)
    assert plan(observation(everything - set(S))) == DeletePod("orders-redis-2", "redis", why, 3)
    assert plan(observation({"orders-redis-0", "orders-redis-1"})).pod == "orders-redis-1"  # type: ignore[union-attr]
    step = plan(observation({"orders-redis-0"}))
    assert step == Failover("orders-redis-0", ("orders-redis-1", "orders-redis-2"), ("config hash old -> new",),
                            tuple(S))
    # After the switch-over the old master is a replica like any other.
    assert plan(observation({"orders-redis-0"}, master="orders-redis-1")).pod == "orders-redis-0"  # type: ignore[union-attr]
    assert plan(observation(set())) == Done()


def test_one_disruption_at_a_time() -> None:
    assert isinstance(plan(observation(set(R), ready=set(R + S) - {"orders-redis-2"})), Wait)
    lagging = plan(observation({"orders-redis-0", "orders-redis-1"}, lagging={"orders-redis-2"}))
    assert isinstance(lagging, Wait)
    assert "orders-redis-2" in lagging.why
    assert isinstance(plan(observation({"orders-redis-0"}, failing_over=True)), Wait)


def test_the_master_is_never_switched_over_while_replicas_are_outdated() -> None:
    for master in R:
        step = plan(observation(set(R), master=master))
        assert isinstance(step, DeletePod)
        assert step.pod != master


def test_no_switch_over_asked_of_a_sentinel_that_would_refuse_it() -> None:
    # Sentinel judges replicas on its last INFO of them (every 10 s): right after a replica's restart
    # it may still see the link down, and SENTINEL FAILOVER would answer NOGOODSLAVE.
    stale = "its last INFO of it had the link to the master down"
    lagging_view = {p: stale for p in R[1:]}
    step = plan(observation({"orders-redis-0"}, choices={s: dict(lagging_view) for s in S}))
    assert isinstance(step, Wait)
    assert f"orders-sentinel-0 would promote none of orders-redis-1 ({stale}), orders-redis-2 ({stale})" in step.why
    one_sees = {s: dict(lagging_view) for s in S}
    one_sees["orders-sentinel-1"]["orders-redis-2"] = None
    step = plan(observation({"orders-redis-0"}, choices=one_sees))
    assert isinstance(step, Failover)
    assert step.through == ("orders-sentinel-1",)
    # A Sentinel that does not list a replica would not promote it either.
    step = plan(observation({"orders-redis-0"}, choices={s: {} for s in S}))
    assert isinstance(step, Wait)
    assert "unknown to it" in step.why


def test_a_sentinel_that_sees_the_master_down_is_not_asked() -> None:
    # Its rules differ then (INFO every second, a longer link-down allowance): it is left out.
    obs = observation({"orders-redis-0"})
    down = dataclasses.replace(obs.sentinels["orders-sentinel-0"], flags=frozenset({"master", "s_down"}))
    step = plan(dataclasses.replace(obs, sentinels={**obs.sentinels, "orders-sentinel-0": down}))
    assert isinstance(step, Failover)
    assert step.through == ("orders-sentinel-1", "orders-sentinel-2")


OLD_ENGINE, NEW_ENGINE = Engine("redis", (7, 0, 15)), Engine("valkey", (9, 1, 2))


def stuck_observation() -> RollObservation:
    """After the switch-over of Redis 7.0 to Valkey 9.1: orders-redis-1 (new) is the master, orders-redis-0
    (the old master, still on Redis 7.0) follows it with its link down, and is not ready."""
    obs = observation({"orders-redis-0", "orders-sentinel-1"}, master="orders-redis-1",
                      ready=set(R + S) - {"orders-redis-0"}, lagging={"orders-redis-0"})
    engines = {"orders-redis-0": OLD_ENGINE, "orders-redis-1": NEW_ENGINE, "orders-redis-2": NEW_ENGINE}
    return dataclasses.replace(obs, redis={p: dataclasses.replace(n, engine=engines[p]) for p, n in obs.redis.items()})


def replace_redis(obs: RollObservation, pod: str, **changes: object) -> RollObservation:
    return dataclasses.replace(obs, redis={**obs.redis, pod: dataclasses.replace(obs.redis[pod], **changes)})


def replace_sentinel(obs: RollObservation, pod: str, **changes: object) -> RollObservation:
    changed = dataclasses.replace(obs.sentinels[pod], **changes)
    return dataclasses.replace(obs, sentinels={**obs.sentinels, pod: changed})


def test_an_old_master_that_cannot_load_the_new_engines_snapshot_is_restarted_first() -> None:
    # The old master, demoted to follow a replica already on a newer engine, cannot load its snapshot:
    # it never becomes ready. It is replaced at once, before any other move, instead of being waited for.
    stuck = stuck_observation()
    step = plan(stuck)
    assert isinstance(step, DeletePod)
    assert (step.pod, step.kind, step.left) == ("orders-redis-0", "redis", 2)
    assert step.reasons[0] == "config hash old -> new"
    assert "link to orders-redis-1 down" in step.reasons[1]


def test_a_stuck_replica_waits_while_anything_else_is_not_as_a_roll_move_requires() -> None:
    stuck = stuck_observation()
    not_ready = dataclasses.replace(stuck.pods["orders-redis-2"], ready=False)
    terminating = dataclasses.replace(stuck.pods["orders-redis-0"], terminating=True)
    waits = {
        "another pod not ready": dataclasses.replace(stuck, pods={**stuck.pods, "orders-redis-2": not_ready}),
        "already deleted": dataclasses.replace(stuck, pods={**stuck.pods, "orders-redis-0": terminating}),
        "no agreed master": dataclasses.replace(stuck, master=None),
        "the master does not answer": replace_redis(stuck, "orders-redis-1", reachable=False),
        "another replica lagging (its probe lags)": replace_redis(stuck, "orders-redis-2", link_up=False),
        "a Sentinel sees the master down": replace_sentinel(stuck, "orders-sentinel-2",
                                                            flags=frozenset({"master", "s_down"})),
        "a Sentinel names another master": dataclasses.replace(stuck, names={**stuck.names,
                                                                              "orders-sentinel-2": "orders-redis-0"}),
        "a Sentinel names none": dataclasses.replace(stuck, names={**stuck.names, "orders-sentinel-2": None}),
        "loading its data": replace_redis(stuck, "orders-redis-0", loading=True),
        "linked (its probe lags)": replace_redis(stuck, "orders-redis-0", link_up=True),
        "unreachable": replace_redis(stuck, "orders-redis-0", reachable=False),
        "the same engine as the master (syncing)": replace_redis(stuck, "orders-redis-0", engine=NEW_ENGINE),
        "an engine not known": replace_redis(stuck, "orders-redis-0", engine=None),
        "following another replica": dataclasses.replace(stuck, follows={**stuck.follows,
                                                                         "orders-redis-0": "orders-redis-2"}),
        "up to date (restarted, syncing)": dataclasses.replace(stuck, pods={
            **stuck.pods, "orders-redis-0": PodState("orders-redis-0", "redis", False)}),
    }
    for why, obs in waits.items():
        assert isinstance(plan(obs), Wait), why

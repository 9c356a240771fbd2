"""The rolling-update plan and the pod/StatefulSet comparison, as pure functions."""

from __future__ import annotations

import dataclasses
from typing import Any

from redis_messaging.builders import names
from redis_messaging.modes.rollout import DeletePod, Done, PodState, Wait, outdated_reasons
from redis_messaging.modes.sentinel.rolling import Failover, RollObservation, plan
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
    return RollObservation(pods, redis, sentinels, master, 100, follows, choices)


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


def test_an_outdated_replica_stuck_unlinked_is_restarted_first() -> None:
    # The old master, demoted to follow a replica already on a newer engine, cannot load its snapshot:
    # it never becomes ready. It is replaced at once, before any other move, instead of being waited for.
    outdated = {"orders-redis-0", "orders-sentinel-1"}
    stuck = observation(outdated, master="orders-redis-1", ready=set(R + S) - {"orders-redis-0"},
                        lagging={"orders-redis-0"})
    step = plan(stuck)
    assert isinstance(step, DeletePod)
    assert (step.pod, step.kind, step.left) == ("orders-redis-0", "redis", 2)
    assert step.reasons[0] == "config hash old -> new"
    assert "link to orders-redis-1 down" in step.reasons[1]
    # One disruption at a time: not while another pod is not ready.
    assert isinstance(plan(dataclasses.replace(stuck, pods={
        **stuck.pods, "orders-redis-2": dataclasses.replace(stuck.pods["orders-redis-2"], ready=False)})), Wait)
    # Not while the Sentinels do not agree on a master that answers as one.
    assert isinstance(plan(dataclasses.replace(stuck, master=None)), Wait)
    down = dataclasses.replace(stuck.redis["orders-redis-1"], reachable=False)
    assert isinstance(plan(dataclasses.replace(stuck, redis={**stuck.redis, "orders-redis-1": down})), Wait)
    # Loading its data, or linked (its probe lags), or unreachable: waited for.
    for node in (dataclasses.replace(stuck.redis["orders-redis-0"], loading=True),
                 dataclasses.replace(stuck.redis["orders-redis-0"], link_up=True),
                 dataclasses.replace(stuck.redis["orders-redis-0"], reachable=False)):
        assert isinstance(plan(dataclasses.replace(stuck, redis={**stuck.redis, "orders-redis-0": node})), Wait)
    # Up to date (restarted, syncing): waited for.
    restarted = PodState("orders-redis-0", "redis", False)
    fresh = dataclasses.replace(stuck, pods={**stuck.pods, "orders-redis-0": restarted})
    assert isinstance(plan(fresh), Wait)

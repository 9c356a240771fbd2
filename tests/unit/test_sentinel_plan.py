"""The Sentinel healing plan: pure decisions from observations."""

from __future__ import annotations

from redis_messaging.api import models
from redis_messaging.reconcile.sentinel_topology import (
    Monitor,
    Observation,
    Promote,
    Replicate,
    Reset,
    SetSentinel,
    plan,
    promote_grace_seconds,
)
from redis_messaging.redis.sentinel import RedisNode, SentinelNode

SPEC = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 5000}})
SETTINGS = {"quorum": "2", "down-after-milliseconds": "5000", "failover-timeout": "60000", "parallel-syncs": "1"}
R = ["r0", "r1", "r2"]
S = ["s0", "s1", "s2"]


def addr(pod: str) -> tuple[str, int]:
    return (f"{pod}.host", 26379 if pod.startswith("s") else 6379)


def master(pod: str, offset: int = 100, replicas: tuple[str, ...] = ()) -> RedisNode:
    return RedisNode(addr(pod), True, "master", offset=offset, replicas=tuple(addr(r) for r in replicas))


def replica(pod: str, of: str, offset: int = 100, link: bool = True) -> RedisNode:
    return RedisNode(addr(pod), True, "slave", master=addr(of), link_up=link, offset=offset)


def down(pod: str) -> RedisNode:
    return RedisNode(addr(pod), False, error="ConnectionError")


def sentinel(pod: str, of: str | None, flags: tuple[str, ...] = ("master",), **kw: object) -> SentinelNode:
    if of is None:
        return SentinelNode(addr(pod), True, monitoring=False)
    others = tuple(addr(s) for s in S if s != pod)
    defaults: dict[str, object] = {"config": dict(SETTINGS), "sentinels": others,
                                   "replicas": tuple(addr(r) for r in R if r != of)}
    defaults.update(kw)
    return SentinelNode(addr(pod), True, monitoring=True, master=addr(of), flags=frozenset(flags),
                        **defaults)  # type: ignore[arg-type]


def sdown(pod: str) -> SentinelNode:
    return SentinelNode(addr(pod), False, error="ConnectionError")


def obs(redis: dict[str, RedisNode], sentinels: dict[str, SentinelNode], masterless: float = 0.0) -> Observation:
    return Observation(redis, sentinels, pod_of=lambda host: host.split(".")[0] if host.endswith(".host") else None,
                       masterless_seconds=masterless)


GRACE = promote_grace_seconds(SPEC)


def healthy_redis(m: str = "r0") -> dict[str, RedisNode]:
    return {p: master(p, replicas=tuple(r for r in R if r != m)) if p == m else replica(p, m) for p in R}


def agreeing(m: str = "r0") -> dict[str, SentinelNode]:
    return {s: sentinel(s, m) for s in S}


def test_a_healthy_topology_needs_nothing() -> None:
    result = plan(obs(healthy_redis(), agreeing()), SPEC, expected_sentinels=3)
    assert result.master == "r0"
    assert result.steps == []
    assert result.available is True
    assert not result.wait


def test_split_brain_demotes_the_master_sentinels_do_not_recognise() -> None:
    redis = healthy_redis()
    redis["r2"] = master("r2", offset=500)  # turned master by hand, even with more data
    result = plan(obs(redis, agreeing()), SPEC, expected_sentinels=3)
    assert result.master == "r0"
    assert result.steps == [Replicate("r2", "r0", split_brain=True)]


def test_replica_following_the_wrong_master_is_repointed() -> None:
    redis = healthy_redis()
    redis["r1"] = replica("r1", "r2")
    assert plan(obs(redis, agreeing()), SPEC, expected_sentinels=3).steps == [Replicate("r1", "r0")]


def test_no_action_while_a_failover_is_in_progress() -> None:
    redis = healthy_redis()
    redis["r2"] = master("r2")  # the promoted replica, while the others still report r0
    sentinels = agreeing()
    sentinels["s1"] = sentinel("s1", "r0", flags=("master", "failover_in_progress"))
    result = plan(obs(redis, sentinels), SPEC, expected_sentinels=3)
    assert result.wait
    assert result.steps == []
    assert result.reason == "FailoverInProgress"


def test_master_down_with_sentinel_quorum_is_left_to_sentinel() -> None:
    redis = healthy_redis()
    redis["r0"] = down("r0")
    result = plan(obs(redis, agreeing()), SPEC, expected_sentinels=3)
    assert result.wait
    assert result.steps == []
    assert result.available is False


def test_no_master_and_no_sentinels_promotes_the_highest_offset() -> None:
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=90, link=False),
             "r2": replica("r2", "r0", offset=120, link=False)}
    result = plan(obs(redis, {s: sdown(s) for s in S}, masterless=GRACE), SPEC, expected_sentinels=3)
    assert result.master == "r2"
    assert result.steps == [Promote("r2", 120), Replicate("r1", "r2")]


def test_no_promotion_before_the_set_has_been_masterless_for_the_grace() -> None:
    # At creation the seed pod may start seconds after the replicas that point at it; a frozen or
    # restarting master comes back: neither is a reason to crown a replica.
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=0, link=False),
             "r2": replica("r2", "r0", offset=0, link=False)}
    assert GRACE == 10.0  # down-after-milliseconds 5000 is below the floor
    for seen in (0.0, 4.0, GRACE - 0.5):
        result = plan(obs(redis, {s: sdown(s) for s in S}, masterless=seen), SPEC, expected_sentinels=3)
        assert result.wait
        assert result.steps == []
        assert result.reason == "NoMaster"
        assert "r2" in result.message
    patient = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 30000}})
    assert promote_grace_seconds(patient) == 30.0
    assert plan(obs(redis, {s: sdown(s) for s in S}, masterless=GRACE), patient, expected_sentinels=3).wait


def test_master_down_and_sentinels_without_majority_promotes() -> None:
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=300, link=False),
             "r2": replica("r2", "r0", offset=120, link=False)}
    sentinels = {"s0": sentinel("s0", "r0"), "s1": sdown("s1"), "s2": sdown("s2")}
    quorum_one = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 1}})
    result = plan(obs(redis, sentinels, masterless=promote_grace_seconds(quorum_one)), quorum_one,
                  expected_sentinels=3)
    assert result.master == "r1"
    assert result.steps[:2] == [Promote("r1", 300), Replicate("r2", "r1")]
    assert Monitor("s0", "r1") in result.steps


def test_sentinels_that_disagree_are_waited_for() -> None:
    sentinels = {"s0": sentinel("s0", "r0"), "s1": sentinel("s1", "r1"), "s2": sentinel("s2", "r2")}
    result = plan(obs(healthy_redis(), sentinels), SPEC, expected_sentinels=3)
    assert result.wait
    assert result.reason == "SentinelsDisagree"


def test_unconfigured_sentinels_are_pointed_at_the_master() -> None:
    sentinels = {"s0": sentinel("s0", None), "s1": sentinel("s1", None), "s2": sentinel("s2", None)}
    result = plan(obs(healthy_redis("r1"), sentinels), SPEC, expected_sentinels=3)
    assert result.master == "r1"
    assert result.steps == [Monitor("s0", "r1"), Monitor("s1", "r1"), Monitor("s2", "r1")]


def test_a_lagging_sentinel_is_repointed_and_drift_is_set() -> None:
    sentinels = agreeing()
    sentinels["s2"] = sentinel("s2", None)
    sentinels["s1"] = sentinel("s1", "r0", config={**SETTINGS, "down-after-milliseconds": "30000"})
    result = plan(obs(healthy_redis(), sentinels), SPEC, expected_sentinels=3)
    assert result.steps == [SetSentinel("s1", (("down-after-milliseconds", "5000"),)), Monitor("s2", "r0")]


def test_sentinel_remembering_dead_processes_is_reset_one_at_a_time() -> None:
    sentinels = agreeing()
    ghosts = (("old-pod.elsewhere", 6379),)
    sentinels["s0"] = sentinel("s0", "r0", replicas=(addr("r1"), addr("r2"), *ghosts))
    sentinels["s1"] = sentinel("s1", "r0", sentinels=(addr("s0"), addr("s2"), ("10.0.0.9", 26379)))
    result = plan(obs(healthy_redis(), sentinels), SPEC, expected_sentinels=3)
    assert len(result.steps) == 1
    assert isinstance(result.steps[0], Reset)
    assert result.steps[0].sentinel == "s0"


def test_no_reset_while_other_work_is_pending() -> None:
    redis = healthy_redis()
    redis["r1"] = replica("r1", "r2")
    sentinels = agreeing()
    sentinels["s0"] = sentinel("s0", "r0", replicas=(("ghost", 6379),))
    steps = plan(obs(redis, sentinels), SPEC, expected_sentinels=3).steps
    assert not any(isinstance(s, Reset) for s in steps)


def test_a_second_master_without_sentinels_keeps_the_one_with_replicas() -> None:
    redis = {"r0": master("r0", offset=50, replicas=("r1",)), "r1": replica("r1", "r0"), "r2": master("r2", offset=900)}
    result = plan(obs(redis, {s: sdown(s) for s in S}), SPEC, expected_sentinels=3)
    assert result.master == "r0"
    assert result.steps == [Replicate("r2", "r0", split_brain=True)]


def test_nothing_reachable_waits() -> None:
    result = plan(obs({p: down(p) for p in R}, {s: sdown(s) for s in S}), SPEC, expected_sentinels=3)
    assert result.master is None
    assert result.wait


def test_a_second_master_is_not_demoted_while_a_newer_configuration_spreads() -> None:
    # s2 led a failover to r1 (epoch 4); s0 and s1 still name r2 (epoch 3) until its hello reaches them.
    redis = healthy_redis("r2")
    redis["r1"] = master("r1")
    sentinels = {"s0": sentinel("s0", "r2", epoch=3), "s1": sentinel("s1", "r2", epoch=3),
                 "s2": sentinel("s2", "r1", epoch=4)}
    result = plan(obs(redis, sentinels), SPEC, expected_sentinels=3)
    assert result.wait
    assert result.steps == []
    assert result.reason == "SentinelsConverging"
    assert "'s2': 4" in result.message


def test_a_dissent_that_is_not_newer_is_repaired() -> None:
    # One Sentinel names r1 with no newer configuration than the quorum naming r2 (it was pointed
    # there, it did not fail over): Sentinel never spreads an equal epoch, so waiting would be forever.
    redis = healthy_redis("r2")
    redis["r1"] = master("r1")
    for epochs in ((0, 0, 0), (3, 3, 2), (3, 0, 3)):
        sentinels = {p: sentinel(p, "r1" if p == "s2" else "r2", epoch=e) for p, e in zip(S, epochs, strict=True)}
        result = plan(obs(redis, sentinels), SPEC, expected_sentinels=3)
        assert result.master == "r2"
        assert result.steps == [Replicate("r1", "r2", split_brain=True), Monitor("s2", "r2")], epochs

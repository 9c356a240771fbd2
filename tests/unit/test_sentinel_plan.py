"""The Sentinel healing plan: pure decisions from observations."""

from __future__ import annotations

from redis_messaging.api import models
from redis_messaging.modes.sentinel.topology import (
    Failover,
    Monitor,
    Observation,
    Promote,
    Replicate,
    Reset,
    SetPriority,
    SetSentinel,
    holds,
    plan,
    promote_grace_seconds,
    richest,
    sentinel_patience_seconds,
)
from redis_messaging.redis.sentinel import NO_MASTER, RedisNode, SentinelNode

SPEC = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 5000}})
SETTINGS = {"quorum": "2", "down-after-milliseconds": "5000", "failover-timeout": "60000", "parallel-syncs": "1"}
R = ["r0", "r1", "r2"]
S = ["s0", "s1", "s2"]


def addr(pod: str) -> tuple[str, int]:
    return (f"{pod}.host", 26379 if pod.startswith("s") else 6379)


HISTORY = "a" * 40  # the replication id every node of a healthy set shares


def master(pod: str, offset: int = 100, replicas: tuple[str, ...] = (), *, replid: str = HISTORY,
           keys: int = 10, **kw: object) -> RedisNode:
    return RedisNode(addr(pod), True, "master", offset=offset, replicas=tuple(addr(r) for r in replicas),
                     replid=replid, keys=keys, **kw)  # type: ignore[arg-type]


def replica(pod: str, of: str, offset: int = 100, link: bool = True, *, replid: str = HISTORY,
            keys: int = 10, **kw: object) -> RedisNode:
    return RedisNode(addr(pod), True, "slave", master=addr(of), link_up=link, offset=offset, replid=replid,
                     keys=keys, **kw)  # type: ignore[arg-type]


def promoted(pod: str, *, at: int, written: int = 0, replicas: tuple[str, ...] = ()) -> RedisNode:
    """A master promoted from HISTORY at offset ``at`` that accepted ``written`` bytes since."""
    return master(pod, offset=at + written, replicas=replicas, replid="b" * 40, replid2=HISTORY, second_offset=at + 1)


def unattached(pod: str, keys: int = 10, offset: int = 0, replid: str = "c" * 40) -> RedisNode:
    """Restarted and waiting to be told whom to follow (redis-start.sh), with replica-priority 0."""
    return RedisNode(addr(pod), True, "slave", master=NO_MASTER, link_up=False, offset=offset, replid=replid,
                     keys=keys, priority=0)


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


def obs(redis: dict[str, RedisNode], sentinels: dict[str, SentinelNode], masterless: float = 0.0,
        dead: frozenset[str] = frozenset()) -> Observation:
    return Observation(redis, sentinels, pod_of=lambda host: host.split(".")[0] if host.endswith(".host") else None,
                       masterless_seconds=masterless, dead=dead)


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


def test_split_brain_demotes_a_master_the_sentinels_do_not_recognise_when_it_holds_nothing_more() -> None:
    redis = healthy_redis()
    redis["r2"] = promoted("r2", at=100)  # turned master by hand, written nothing since
    result = plan(obs(redis, agreeing()), SPEC, expected_sentinels=3)
    assert result.master == "r0"
    assert result.steps == [Replicate("r2", "r0", split_brain=True)]


def test_a_second_master_ahead_of_the_sentinels_choice_gets_a_proper_failover() -> None:
    # r0, which the Sentinels name, stopped at offset 100; r2 was promoted from there and wrote on.
    redis = healthy_redis()
    redis["r2"] = promoted("r2", at=100, written=400)
    result = plan(obs(redis, agreeing()), SPEC, expected_sentinels=3)
    assert result.master == "r2"
    assert result.steps == [SetPriority("r1", "0"), Replicate("r0", "r2", split_brain=True), Failover("s0", "r2")]
    # with a Sentinel out of reach (it may be leading a failover already): wait, demote nothing
    sentinels = agreeing()
    sentinels["s2"] = sdown("s2")
    result = plan(obs(redis, sentinels), SPEC, expected_sentinels=3)
    assert result.steps == []
    assert result.reason == "SecondMaster"


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


def test_no_master_and_no_sentinels_promotes_the_highest_offset_once_the_old_master_is_gone() -> None:
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=90, link=False),
             "r2": replica("r2", "r0", offset=120, link=False)}
    result = plan(obs(redis, {s: sdown(s) for s in S}, masterless=GRACE, dead=frozenset({"r0"})), SPEC,
                  expected_sentinels=3)
    assert result.master == "r2"
    assert [type(s) for s in result.steps] == [Promote, Replicate]
    assert result.steps[0].pod == "r2"
    assert result.steps[1] == Replicate("r1", "r2")


def test_no_promotion_before_the_set_has_been_masterless_for_the_grace() -> None:
    # A frozen or restarting master comes back: no reason to crown a replica before Sentinel would.
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=0, link=False),
             "r2": replica("r2", "r0", offset=0, link=False)}
    assert GRACE == 10.0  # down-after-milliseconds 5000 is below the floor
    gone = frozenset({"r0"})
    for seen in (0.0, 4.0, GRACE - 0.5):
        result = plan(obs(redis, {s: sdown(s) for s in S}, masterless=seen, dead=gone), SPEC, expected_sentinels=3)
        assert result.wait
        assert result.steps == []
        assert result.reason == "NoMaster"
        assert "r1" in result.message  # equal data: the lowest ordinal
    patient = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 30000}})
    assert promote_grace_seconds(patient) == 30.0
    assert plan(obs(redis, {s: sdown(s) for s in S}, masterless=GRACE, dead=gone), patient,
                expected_sentinels=3).wait


def test_master_down_and_sentinels_without_majority_promotes_when_kubernetes_confirms_it_gone() -> None:
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=300, link=False),
             "r2": replica("r2", "r0", offset=120, link=False)}
    sentinels = {"s0": sentinel("s0", "r0"), "s1": sdown("s1"), "s2": sdown("s2")}
    quorum_one = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 1}})
    result = plan(obs(redis, sentinels, masterless=promote_grace_seconds(quorum_one), dead=frozenset({"r0"})),
                  quorum_one, expected_sentinels=3)
    assert result.master == "r1"
    assert [type(s) for s in result.steps[:2]] == [Promote, Replicate]
    assert Monitor("s0", "r1") in result.steps


def test_the_operator_on_the_minority_side_of_a_partition_never_promotes() -> None:
    # The operator reaches r1, r2 and s0; r0 and s1, s2 are on the other side, where r0 may still be
    # the master a Sentinel majority names and clients write to. Its pod runs: nothing is confirmed.
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=300, link=False),
             "r2": replica("r2", "r0", offset=120, link=False)}
    sentinels = {"s0": sentinel("s0", "r0"), "s1": sdown("s1"), "s2": sdown("s2")}
    for masterless in (0.0, GRACE, 10 * GRACE):
        result = plan(obs(redis, sentinels, masterless=masterless), SPEC, expected_sentinels=3)
        assert result.wait, result
        assert result.steps == [], result
        assert result.reason == "NoSafeView"
        assert "r0" in result.message
    # also with no Sentinel reachable at all
    result = plan(obs(redis, {s: sdown(s) for s in S}, masterless=10 * GRACE), SPEC, expected_sentinels=3)
    assert result.steps == []
    assert result.reason == "NoSafeView"


def test_no_promotion_while_a_replica_still_follows_a_master_the_operator_cannot_reach() -> None:
    redis = {"r0": down("r0"), "r1": replica("r1", "r0", offset=300, link=True),
             "r2": replica("r2", "r0", offset=120, link=False)}
    result = plan(obs(redis, {s: sdown(s) for s in S}, masterless=10 * GRACE, dead=frozenset({"r0"})), SPEC,
                  expected_sentinels=3)
    assert result.steps == []
    assert result.reason == "MasterUnreachable"


def test_a_master_a_failover_just_promoted_is_not_demoted_when_its_leader_is_unreachable() -> None:
    # s0 led a failover to r1 and is now out of reach; s1 and s2 still name r0 (they have not heard of it
    # yet), r1 accepted writes since its promotion: demoting it would lose them.
    redis = {"r0": master("r0", offset=500), "r1": promoted("r1", at=480, written=200),
             "r2": replica("r2", "r0", offset=480)}
    sentinels = {"s0": sdown("s0"), "s1": sentinel("s1", "r0", epoch=3), "s2": sentinel("s2", "r0", epoch=3)}
    result = plan(obs(redis, sentinels), SPEC, expected_sentinels=3)
    assert not any(isinstance(s, Replicate) and s.pod == "r1" for s in result.steps), result
    assert result.wait
    assert result.reason == "SecondMaster"


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


def test_a_second_master_without_sentinels_keeps_the_one_that_holds_the_others_data() -> None:
    # r2 was made master at offset 40 and has written nothing since: r0 holds all of it.
    redis = {"r0": master("r0", offset=50, replicas=("r1",)), "r1": replica("r1", "r0", offset=50),
             "r2": promoted("r2", at=40)}
    result = plan(obs(redis, {s: sdown(s) for s in S}), SPEC, expected_sentinels=3)
    assert result.master == "r0"
    assert result.steps == [Replicate("r2", "r0", split_brain=True)]
    # ... and keeps r2 when it is r2 that holds r0's data (r0 stopped at 40, r2 wrote on)
    redis = {"r0": master("r0", offset=40, replicas=("r1",)), "r1": replica("r1", "r0", offset=40),
             "r2": promoted("r2", at=40, written=900)}
    result = plan(obs(redis, {s: sdown(s) for s in S}), SPEC, expected_sentinels=3)
    assert result.master == "r2"
    assert Replicate("r0", "r2", split_brain=True) in result.steps


def test_two_masters_that_each_hold_writes_the_other_lacks_are_both_kept() -> None:
    redis = {"r0": master("r0", offset=700, replicas=("r1",)), "r1": replica("r1", "r0", offset=700),
             "r2": promoted("r2", at=40, written=900)}
    result = plan(obs(redis, {s: sdown(s) for s in S}), SPEC, expected_sentinels=3)
    assert result.steps == []
    assert result.reason == "MastersDiverged"
    assert result.warning


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


def test_holds_compares_replication_histories() -> None:
    base = replica("r1", "r0", offset=100)
    assert holds(master("r0", offset=120), base)  # the same history, further on
    assert not holds(master("r0", offset=80), base)  # the same history, behind
    assert holds(promoted("r2", at=150, written=500), base)  # promoted after base's position
    assert not holds(promoted("r2", at=90, written=500), base)  # promoted before it: base has more
    assert holds(master("r0", offset=120), promoted("r2", at=100))  # promoted, nothing written since
    assert not holds(master("r0", offset=120), promoted("r2", at=100, written=1))
    fresh = unattached("r1", keys=10)  # restarted from AOF: a new history that says nothing
    assert not holds(master("r0", offset=10_000), fresh)
    assert holds(fresh, unattached("r2", keys=0))  # an empty node loses nothing
    assert not holds(RedisNode(addr("r1"), True, "slave", replid=HISTORY, keys=5, loading=True), base)


def test_the_election_prefers_the_history_that_holds_every_other_then_the_most_keys() -> None:
    assert richest({"r0": replica("r0", "rx", offset=90), "r1": replica("r1", "rx", offset=300),
                    "r2": replica("r2", "rx", offset=200)}) == "r1"
    # histories that cannot be compared (every pod restarted from AOF): the most keys, then the most data
    assert richest({"r0": unattached("r0", keys=0), "r1": unattached("r1", keys=500, replid="d" * 40),
                    "r2": unattached("r2", keys=499, replid="e" * 40)}) == "r1"
    same = {p: unattached(p, keys=7, replid=p * 20) for p in ("r0", "r1")}
    same["r1"] = RedisNode(addr("r1"), True, "slave", master=NO_MASTER, replid="x" * 40, keys=7, dataset_bytes=900)
    assert richest(same) == "r1"
    assert richest({"r0": RedisNode(addr("r0"), True, "slave", keys=9, loading=True)}) is None


def test_a_full_restart_elects_the_pod_with_the_most_data_not_ordinal_0() -> None:
    # Every pod restarted and waits (nobody knew a master); the Sentinels restarted too and monitor
    # nothing. r0 came back without its volume's files.
    redis = {"r0": unattached("r0", keys=0), "r1": unattached("r1", keys=480, replid="d" * 40),
             "r2": unattached("r2", keys=500, replid="e" * 40)}
    quiet = {s: sentinel(s, None) for s in S}
    result = plan(obs(redis, quiet), SPEC, expected_sentinels=3)  # every view is safe: no grace to wait
    assert result.master == "r2"
    assert [type(s) for s in result.steps] == [Promote, Replicate, Replicate, Monitor, Monitor, Monitor]
    assert {s.pod for s in result.steps if isinstance(s, Replicate)} == {"r0", "r1"}


def test_a_master_that_restarted_as_a_replica_is_left_to_a_sentinel_failover() -> None:
    redis = {"r0": unattached("r0", keys=0), "r1": replica("r1", "r0", offset=500, link=False),
             "r2": replica("r2", "r0", offset=480, link=False)}
    result = plan(obs(redis, agreeing(), masterless=GRACE), SPEC, expected_sentinels=3)
    assert result.steps == []
    assert result.reason == "MasterIsReplica"
    # Sentinel did not fail over for a whole failover timeout: the operator elects, with every pod in view
    result = plan(obs(redis, agreeing(), masterless=sentinel_patience_seconds(SPEC)), SPEC, expected_sentinels=3)
    assert result.master == "r1"
    assert isinstance(result.steps[0], Promote)
    assert result.steps[0].pod == "r1"


def test_a_replica_in_sync_gets_its_replica_priority_back_and_a_waiting_one_is_attached() -> None:
    redis = healthy_redis()
    redis["r1"] = replica("r1", "r0", priority=0)
    redis["r2"] = unattached("r2", keys=3)
    result = plan(obs(redis, agreeing()), SPEC, expected_sentinels=3)
    assert result.steps == [Replicate("r2", "r0"), SetPriority("r1", "100")]
    custom = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 2},
                                "redis": {"config": {"replica-priority": "7"}}})
    assert SetPriority("r1", "7") in plan(obs(redis, agreeing()), custom, expected_sentinels=3).steps


def test_when_sentinel_has_no_replica_it_may_promote_the_operator_elects_after_the_grace() -> None:
    # A full restart while the Sentinels kept their memory: they name r0, and every pod waits with
    # replica-priority 0, so no Sentinel failover can happen; the operator elects after the grace.
    redis = {"r0": unattached("r0", keys=400), "r1": unattached("r1", keys=500, replid="d" * 40),
             "r2": unattached("r2", keys=450, replid="e" * 40)}
    assert plan(obs(redis, agreeing(), masterless=GRACE - 1), SPEC, expected_sentinels=3).reason == "MasterIsReplica"
    result = plan(obs(redis, agreeing(), masterless=GRACE), SPEC, expected_sentinels=3)
    assert result.master == "r1"
    assert isinstance(result.steps[0], Promote)

"""The failover watch's fence: which Sentinel events start it, and how long it may last."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from redis_messaging.builders.names import Owner
from redis_messaging.modes.sentinel import watch
from redis_messaging.modes.sentinel.watch import fence_seconds
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis.addresses import MapAddresses


def test_a_master_event_names_the_master_it_is_about() -> None:
    down = rs.parse_master_down("+odown", "master orders 10.0.0.7 6379 #quorum 2/2", "orders", None)
    assert down is not None
    assert (down.master_name, down.address, down.event) == ("orders", ("10.0.0.7", 6379), "+odown")
    tried = rs.parse_master_down("+try-failover", "master orders 10.0.0.7 6379", "orders", None)
    assert tried is not None
    assert tried.address == ("10.0.0.7", 6379)


def test_a_vote_is_about_the_master_these_sentinels_monitor() -> None:
    vote = rs.parse_master_down("+vote-for-leader", "4f1c0a2e 7", "orders", ("10.0.0.7", 6379))
    assert vote is not None
    assert (vote.address, vote.master_name) == (("10.0.0.7", 6379), "orders")
    # no master known yet: nothing to fence
    assert rs.parse_master_down("+vote-for-leader", "4f1c0a2e 7", "orders", None) is None


@pytest.mark.parametrize("data", ["", "slave 10.0.0.8:6379 10.0.0.8 6379 @ orders 10.0.0.7 6379",
                                  "master orders 10.0.0.7", "master orders 10.0.0.7 port"])
def test_events_about_anything_else_are_ignored(data: str) -> None:
    assert rs.parse_master_down("+odown", data, "orders", ("10.0.0.7", 6379)) is None


def test_the_fence_lasts_twice_down_after_between_5_and_30_seconds() -> None:
    assert fence_seconds(1000) == 5.0
    assert fence_seconds(5000) == 10.0
    assert fence_seconds(60_000) == 30.0


def test_odown_alone_starts_no_fence() -> None:
    # a paused master looks down to the Sentinels: a fence started without a failover would keep it so
    assert "+odown" not in rs.DOWN_EVENTS
    assert set(rs.DOWN_EVENTS) == {"+try-failover", "+vote-for-leader"}


class FakeRedis:
    """What the fence sees and does, step by step: the old master's role and replicas, the Sentinels'
    view; every command recorded with its time."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.failing_over = True
        self.named = OLD
        self.role = "master"
        self.replicas: tuple[tuple[str, int], ...] = (("10.0.0.8", 6379),)
        self.followers: dict[tuple[str, int], tuple[str, int]] = {}  # other pods: replica -> its master
        self.promoted = False  # NEW is a master
        self.promoted_from = HISTORY  # its replid2

    def pause(self, conns: object, address: object, millis: int) -> None:
        self.calls.append((time.monotonic(), f"pause {millis}"))

    def unpause(self, conns: object, address: object) -> bool:
        self.calls.append((time.monotonic(), "unpause"))
        return True

    def replicate(self, conns: object, address: tuple[str, int], master: tuple[str, int]) -> None:
        if address in self.followers:
            self.calls.append((time.monotonic(), f"{address[0]} replicaof {master[0]}"))
            self.followers[address] = master
            return
        self.calls.append((time.monotonic(), f"replicaof {master[0]}"))
        self.role = "slave"

    def observe_redis(self, conns: object, address: tuple[str, int]) -> rs.RedisNode:
        if address == NEW:  # promoted from the history the replicas of OLD follow, or from another one
            if self.promoted:
                return rs.RedisNode(address, True, "master", replid="n" * 40, replid2=self.promoted_from)
            return rs.RedisNode(address, True, "slave", master=OLD, replid=HISTORY)
        if address in self.followers:
            return rs.RedisNode(address, True, "slave", master=self.followers[address], replid=HISTORY)
        return rs.RedisNode(address, True, self.role, replicas=self.replicas)

    def observe_sentinel(self, conns: object, address: tuple[str, int], name: str) -> rs.SentinelNode:
        flags = frozenset({"master", "failover_in_progress"} if self.failing_over else {"master"})
        return rs.SentinelNode(address, True, monitoring=True, master=self.named, flags=flags)


OLD = ("10.0.0.7", 6379)
NEW = ("10.0.0.9", 6379)
FOLLOWER = ("10.0.0.8", 6379)
HISTORY = "h" * 40  # the replication id of OLD, which its replicas follow


def run_fence(monkeypatch: pytest.MonkeyPatch, fake: FakeRedis, script: Callable[[], None]) -> None:
    monkeypatch.setattr(watch.switchover, "pause_writes", fake.pause)
    monkeypatch.setattr(watch.switchover, "unpause", fake.unpause)
    monkeypatch.setattr(watch.rs, "replicate", fake.replicate)
    monkeypatch.setattr(watch.rs, "observe_redis", fake.observe_redis)
    monkeypatch.setattr(watch.rs, "observe_sentinel", fake.observe_sentinel)
    monkeypatch.setattr(watch, "FENCE_PAUSE_SECONDS", 0.5)
    monkeypatch.setattr(watch, "FENCE_RENEW_SECONDS", 0.3)
    owner = Owner(name="orders", namespace="shop", uid="u")
    addresses = MapAddresses({"orders-redis-0": OLD, "orders-redis-1": FOLLOWER, "orders-redis-2": NEW},
                             {f"orders-sentinel-{i}": (f"10.0.1.{i}", 26379) for i in range(3)})
    pods = [{"metadata": {"name": f"orders-redis-{i}"}} for i in range(3)]
    fence = watch.FailoverWatch(kube=None, addresses=addresses, owner=owner,  # type: ignore[arg-type]
                                pods=lambda: pods if fake.followers else [])
    monkeypatch.setattr(fence, "_post_event", lambda *_: None)
    event = rs.MasterDown("orders", OLD, "+vote-for-leader", time.monotonic())
    thread = threading.Thread(target=fence._fence, args=("orders-redis-0", event, None, 0.4,
                                                        lambda: [addresses.sentinel(owner, f"orders-sentinel-{i}")
                                                                 for i in range(3)]))
    thread.start()
    try:
        script()
    finally:
        thread.join(10)
    assert not thread.is_alive()


def test_the_fence_holds_while_a_sentinel_still_fails_over_then_makes_the_old_master_a_replica(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRedis()
    started = time.monotonic()

    def script() -> None:
        time.sleep(2.0)  # far past the first bound (0.4 s) and the pause (0.5 s): the leader still works
        fake.named, fake.failing_over = NEW, False  # done: every Sentinel names the new master
        time.sleep(0.3)
        fake.replicas = ()  # the last replica re-pointed

    run_fence(monkeypatch, fake, script)
    pauses = [t - started for t, c in fake.calls if c.startswith("pause")]
    # never a gap longer than a pause while the failover ran
    assert all(b - a < 0.5 for a, b in itertools.pairwise(pauses)), pauses
    assert pauses[-1] > 2.0
    assert [c for _, c in fake.calls if not c.startswith("pause")] == ["replicaof 10.0.0.9", "unpause"]


def test_without_a_failover_the_fence_ends_after_its_first_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRedis()
    fake.failing_over = False  # the vote went nowhere: the Sentinels still name the old master
    started = time.monotonic()
    run_fence(monkeypatch, fake, lambda: None)
    assert time.monotonic() - started < 2.0
    # paused through the first bound (0.4 s), never renewed past it, nothing unpaused: the last pause
    # runs out by itself
    assert {c for _, c in fake.calls} == {"pause 500"}
    assert all(t - started < 0.4 for t, _ in fake.calls), fake.calls


def test_once_a_replica_is_promoted_the_others_stop_following_the_old_master(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen master runs the writes waiting in its sockets before the pause when it resumes: once a
    replica is promoted, no other may still follow it. Not before: until the promotion the replicas keep
    receiving what it acknowledged. Sentinel then re-points the detached replica at the promoted one."""
    fake = FakeRedis()
    fake.followers = {FOLLOWER: OLD}
    seen_before: list[list[str]] = []

    def script() -> None:
        time.sleep(0.4)
        seen_before.append([c for _, c in fake.calls if not c.startswith("pause")])
        fake.promoted = True
        time.sleep(0.3)
        fake.followers[FOLLOWER] = NEW  # Sentinel's reconfiguration
        fake.named, fake.failing_over = NEW, False
        fake.replicas = ()

    run_fence(monkeypatch, fake, script)
    assert seen_before == [[]], "a replica re-pointed before any promotion"
    steps = [c for _, c in fake.calls if not c.startswith("pause")]
    assert steps == [f"{FOLLOWER[0]} replicaof {NEW[0]}", "replicaof 10.0.0.9", "unpause"], steps


def test_a_master_of_another_history_is_never_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRedis()
    fake.followers = {FOLLOWER: OLD}
    fake.promoted, fake.promoted_from = True, "x" * 40  # a master, but not promoted from OLD's history

    def script() -> None:
        time.sleep(0.4)
        fake.named, fake.failing_over = NEW, False
        fake.followers[FOLLOWER] = NEW
        fake.replicas = ()

    run_fence(monkeypatch, fake, script)
    assert not [c for _, c in fake.calls if c.startswith(FOLLOWER[0])], fake.calls


def test_a_fence_without_a_failover_points_the_replicas_it_moved_back_at_the_old_master(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRedis()
    fake.failing_over = False
    fake.promoted = True  # a master that the Sentinels do not name, and no failover under way
    fake.followers = {FOLLOWER: OLD}
    run_fence(monkeypatch, fake, lambda: None)
    steps = [c for _, c in fake.calls if not c.startswith("pause")]
    assert steps[0] == f"{FOLLOWER[0]} replicaof {NEW[0]}", steps
    assert steps[-1] == f"{FOLLOWER[0]} replicaof {OLD[0]}", steps
    assert fake.followers[FOLLOWER] == OLD

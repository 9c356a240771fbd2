"""The autoscale loop end to end over an in-memory Redis and Kubernetes: what is measured, decided,
patched and reported, one tick at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from fake_kube import FakeKube

from redis_messaging.api import models
from redis_messaging.autoscale.loop import Autoscaler
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube
from redis_messaging.redis import nodes
from redis_messaging.redis.nodes import Node, Placement, Pools
from redis_messaging.redis.streams import Reclaimed, StreamsNode

Obj = dict[str, Any]
OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
KEY = (OWNER.namespace, OWNER.name)
WHERE = {"namespace": "shop", "resource": "orders", "stream": "orders", "group": "billing"}


class FakeRedis:
    """Answers the commands the loop pipelines: INFO, XLEN, XINFO GROUPS, the lag-counting script and
    XINFO CONSUMERS, from what a test sets on it."""

    def __init__(self) -> None:
        self.group: Obj = {"name": "billing", "lag": 0, "pending": 0, "entries-read": 0, "consumers": 0,
                           "last-delivered-id": "0-0"}
        self.undelivered = 0  # the entries the lag-counting script counts, 1-0 .. <undelivered>-0
        self.consumers: list[Obj] = []  # XINFO CONSUMERS rows: name, pending, idle

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.answers: list[Callable[[], Any]] = []

    def info(self, section: str) -> None:
        self.answers.append(lambda: {"redis_version": "7.2.4"})

    def xlen(self, stream: str) -> None:
        self.answers.append(lambda: 100_000)

    def xinfo_groups(self, stream: str) -> None:
        self.answers.append(lambda: [dict(self.redis.group)])

    def eval(self, script: str, numkeys: int, stream: str, start: str, count: str) -> None:
        # The undelivered entries are 1-0, 2-0, ...: [how many from ``start`` on, at most ``count``,
        # the last one counted]
        ms, _, seq = start.partition("-")
        first = int(ms) + (1 if int(seq or 0) > 0 else 0)
        n = min(max(0, self.redis.undelivered - first + 1), int(count))
        self.answers.append(lambda: [n, f"{first + n - 1}-0" if n else None])

    def xinfo_consumers(self, stream: str, group: str) -> None:
        self.answers.append(lambda: [dict(c) for c in self.redis.consumers])

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [answer() for answer in self.answers]


class FakePools:
    def __init__(self, node: StreamsNode) -> None:
        self.streams_node = node

    def node(self, resource: Any, password: Any, address: Any, tls: Any = None) -> StreamsNode:
        return self.streams_node

    def forget(self, resource: Any) -> None:
        pass


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def autoscale(**kw: Any) -> Obj:
    return {"target": {"name": "billing-worker"}, "maxReplicas": 50, "backlogPerReplica": 1000, **kw}


def setup(replicas: int, redis: FakeRedis, *, node_clock: Callable[[], float] | None = None,
          wall: Callable[[], float] | None = None, monotonic: Callable[[], float] | None = None,
          **spec: Any) -> tuple[Autoscaler, FakeKube]:
    """An autoscaler for one resource whose stream orders has the group billing, consumed by the
    Deployment billing-worker with ``replicas``."""
    kube = FakeKube()
    kube.objects[("Deployment", "shop", "billing-worker")] = {
        "kind": "Deployment", "metadata": {"name": "billing-worker", "namespace": "shop"},
        "spec": {"replicas": replicas}}
    body: Obj = {"apiVersion": models.API_VERSION, "kind": models.KIND,
                 "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-orders"}}
    kube.objects[(models.KIND, "shop", "orders")] = body
    node = StreamsNode(cast(Any, redis), clock=node_clock) if node_clock else StreamsNode(cast(Any, redis))
    clocks: dict[str, Callable[[], float]] = {}
    if wall is not None:
        clocks["clock"] = wall
    if monotonic is not None:
        clocks["monotonic"] = monotonic
    autoscaler = Autoscaler(cast(Kube, kube), cast(Pools, FakePools(node)), **clocks)
    parsed = models.parse_spec({"streams": [{"name": "orders", "groups": [
        {"name": "billing", "autoscale": autoscale(**spec)}]}]})
    autoscaler.place(body, OWNER, parsed, None, Placement(Node("orders-redis-0", ("127.0.0.1", 6379))), {}, {})
    return autoscaler, kube


def replicas(kube: FakeKube) -> int:
    return int(kube.objects[("Deployment", "shop", "billing-worker")]["spec"]["replicas"])


def group_status(kube: FakeKube) -> Obj:
    status: Obj = kube.objects[(models.KIND, "shop", "orders")]["status"]["streams"][0]["groups"][0]
    return status


# -- a lag counted up to the cap ------------------------------------------------------------------


def test_a_lag_counted_up_to_the_cap_is_reported_and_decided_as_a_lower_bound() -> None:
    redis = FakeRedis()
    redis.group.update(lag=None, **{"entries-read": None})  # Redis does not know the lag
    redis.undelivered = 30_000  # the count stops at 10,000
    autoscaler, kube = setup(40, redis, scaleDownStabilizationSeconds=0)
    autoscaler.tick(KEY)
    assert replicas(kube) == 40
    status = group_status(kube)
    assert (status["lag"], status["lagEstimated"], status["lagCapped"]) == (10_000, True, True)
    assert "lower bound" in status["lastDecision"]
    m = autoscaler.metrics
    assert m.group_lag.value(**WHERE) == 10_000
    assert m.group_lag_capped.value(**WHERE) == 1


# -- consumers of pods that are gone ----------------------------------------------------------------


def pod(name: str, phase: str, **meta: Any) -> Obj:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "shop", **meta}, "status": {"phase": phase}}


def test_the_consumer_of_an_evicted_pod_is_reclaimed_from_and_never_receives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    redis = FakeRedis()
    redis.group.update(pending=8, consumers=3)
    # w-b was evicted by the kubelet: phase Failed, no deletionTimestamp. It holds the fewest entries,
    # which made it the receiver of w-c's (a pod that is gone) while it counted as alive.
    redis.consumers = [{"name": "w-a", "pending": 3, "idle": 10}, {"name": "w-b", "pending": 0, "idle": 10},
                       {"name": "w-c", "pending": 5, "idle": 90_000}]
    autoscaler, kube = setup(2, redis)
    for item in (pod("w-a", "Running"), pod("w-b", "Failed"), pod("w-d", "Pending")):
        kube.objects[("Pod", "shop", item["metadata"]["name"])] = item
    calls: list[tuple[str, str, set[str], str | None]] = []

    def reclaim(node: Any, stream: str, group: str, live: set[str], claimer: str | None,
                *, min_idle_ms: int = 0) -> Reclaimed:
        calls.append((stream, group, live, claimer))
        return Reclaimed(claimed=5, deleted=2)

    monkeypatch.setattr(nodes, "reclaim", reclaim)
    autoscaler.tick(KEY)
    assert calls == [("orders", "billing", {"w-a", "w-d"}, "w-a")]
    [event] = [e for e in kube.events if e["reason"] == "PendingReclaimed"]
    assert "(w-b, w-c) for w-a" in event["message"]


def setup_groups(redis: FakeRedis, *groups: Obj) -> tuple[Autoscaler, FakeKube]:
    """An autoscaler for one resource whose stream orders has ``groups`` (none autoscaled unless said)."""
    kube = FakeKube()
    body: Obj = {"apiVersion": models.API_VERSION, "kind": models.KIND,
                 "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-orders"}}
    kube.objects[(models.KIND, "shop", "orders")] = body
    autoscaler = Autoscaler(cast(Kube, kube), cast(Pools, FakePools(StreamsNode(cast(Any, redis)))))
    parsed = models.parse_spec({"streams": [{"name": "orders", "groups": list(groups)}]})
    autoscaler.place(body, OWNER, parsed, None, Placement(Node("orders-redis-0", ("127.0.0.1", 6379))), {}, {})
    return autoscaler, kube


def recording_reclaim(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, set[str], str | None]]:
    calls: list[tuple[str, str, set[str], str | None]] = []

    def reclaim(node: Any, stream: str, group: str, live: set[str], claimer: str | None,
                *, min_idle_ms: int = 0) -> Reclaimed:
        calls.append((stream, group, live, claimer))
        return Reclaimed(claimed=5, deleted=1)

    monkeypatch.setattr(nodes, "reclaim", reclaim)
    return calls


def test_a_group_without_autoscale_gets_the_entries_of_its_gone_consumers_claimed_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    redis = FakeRedis()
    redis.group.update(pending=5, consumers=2)
    redis.consumers = [{"name": "w-a", "pending": 0, "idle": 10}, {"name": "w-gone", "pending": 5, "idle": 90_000}]
    autoscaler, kube = setup_groups(redis, {"name": "billing"})  # no autoscale: whoever scales w-a
    kube.objects[("Pod", "shop", "w-a")] = pod("w-a", "Running")
    calls = recording_reclaim(monkeypatch)
    autoscaler.tick(KEY)
    assert calls == [("orders", "billing", {"w-a"}, "w-a")]
    [event] = [e for e in kube.events if e["reason"] == "PendingReclaimed"]
    assert "(w-gone) for w-a" in event["message"]


def test_a_group_that_says_reclaim_false_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    redis = FakeRedis()
    redis.group.update(pending=5, consumers=1)
    redis.consumers = [{"name": "vm-worker-1", "pending": 5, "idle": 90_000}]  # not a pod: runs elsewhere
    autoscaler, kube = setup_groups(redis, {"name": "billing", "reclaim": False})
    calls = recording_reclaim(monkeypatch)
    autoscaler.tick(KEY)
    assert calls == []
    assert "orphanedPending" not in group_status(kube)


# -- clocks ---------------------------------------------------------------------------------------


def wall_and_monotonic() -> tuple[Clock, Clock]:
    return Clock(1_800_000_000.0), Clock(5000.0)


def advance(seconds: float, *clocks: Clock) -> None:
    for clock in clocks:
        clock.now += seconds


def test_a_wall_clock_step_back_does_not_hold_a_scale_down() -> None:
    wall, mono = wall_and_monotonic()
    redis = FakeRedis()
    redis.group.update(lag=8000, consumers=8)
    # The measurements are stamped with the wall clock too: decisions must not go by them.
    autoscaler, kube = setup(8, redis, node_clock=wall, wall=wall, monotonic=mono, scaleDownStabilizationSeconds=120)
    autoscaler.tick(KEY)  # recommends 8
    wall.now -= 3600  # the wall clock steps back an hour (e.g. corrected by NTP)
    redis.group.update(lag=3000)
    for _ in range(11):
        advance(10, wall, mono)
        autoscaler.tick(KEY)
    assert replicas(kube) == 8  # 110 s: the 8 is still within the 120 s window
    advance(10, wall, mono)
    autoscaler.tick(KEY)
    assert replicas(kube) == 3, group_status(kube)["lastDecision"]  # 120 s, not 120 s + an hour
    # What the status shows as a time stays a wall-clock time.
    assert group_status(kube)["lastScaleTime"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall.now))


def test_a_wall_clock_step_forward_does_not_cut_the_idle_time_before_zero() -> None:
    wall, mono = wall_and_monotonic()
    redis = FakeRedis()  # no lag, nothing pending
    autoscaler, kube = setup(1, redis, node_clock=wall, wall=wall, monotonic=mono, idleSecondsBeforeZero=300)
    autoscaler.tick(KEY)  # idle from now
    wall.now += 3600
    for _ in range(29):
        advance(10, wall, mono)
        autoscaler.tick(KEY)
    assert replicas(kube) == 1, group_status(kube)["lastDecision"]  # idle 290 s
    advance(10, wall, mono)
    autoscaler.tick(KEY)
    assert replicas(kube) == 0

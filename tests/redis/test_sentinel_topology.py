"""Sentinel mode heals itself: real redis-server and redis-sentinel processes on loopback, started
from the rendered configuration, with the operator's topology controller acting on them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engines
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sentinel_env import SentinelEnv
from sentinel_harness import OWNER, PASSWORD, SPEC, Harness, deadline_loop, wait_healthy

from redis_messaging.api import models
from redis_messaging.modes.base import TopologyReport
from redis_messaging.modes.sentinel.topology import promote_grace_seconds
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis.sentinel import NO_MASTER

pytestmark = pytest.mark.redis


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with SentinelEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        yield Harness(env)


def test_three_redis_three_sentinels_come_up_and_agree(harness: Harness) -> None:
    report = wait_healthy(harness)
    assert report.master == "orders-redis-0"
    assert report.available is True
    assert report.actions == []
    assert report.labels == {"orders-redis-0": "master", "orders-redis-1": "replica", "orders-redis-2": "replica"}
    assert harness.masters() == ["orders-redis-0"]
    # status.engine: what the processes run, from their INFO server
    assert report.status["engine"] == engines.summary_of(harness.env.info("orders-redis-0", "server"))


def test_master_killed_replica_promoted_watcher_follows_and_writes_resume(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    switches: list[rs.SwitchMaster] = []
    stopped = threading.Event()
    conns = rs.Connections(PASSWORD, timeout=0.5)
    sentinels = [h.env.address(p) for p in h.env.sentinel_pods]
    watcher = threading.Thread(target=rs.watch_switch_master,
                               args=(conns, lambda: sentinels, OWNER.master_name, switches.append, stopped))
    watcher.start()
    try:
        client = h.sentinel_client().master_for(OWNER.master_name, socket_timeout=0.5)
        client.set("before", "1")
        time.sleep(1.0)  # the watcher subscribes
        killed_at = time.monotonic()
        h.env.kill("orders-redis-0")
        first_write = None
        for _ in deadline_loop(20, "a write accepted after the failover", 0.05):
            try:
                client.set("after", "1")
                first_write = time.monotonic()
                break
            except (RedisError, OSError):
                continue
        assert first_write is not None
        for _ in deadline_loop(5, "+switch-master seen by the watcher"):
            if switches:
                break
        new_master = h.addresses.pod_of(OWNER, switches[0].new[0])
        assert new_master in ("orders-redis-1", "orders-redis-2")
        h.env.restart("orders-redis-0")  # the StatefulSet brings the pod back
        report = wait_healthy(h)
        # The master is the one Sentinel switched to last: Sentinel's pick, or the replica that was ahead
        # of it, which the pass has Sentinel fail over to (its last INFO of the replicas may be 10 s old).
        for _ in deadline_loop(10, f"the watcher seeing the switch to {report.master}"):
            if h.addresses.pod_of(OWNER, switches[-1].new[0]) == report.master:
                break
        assert all(h.addresses.pod_of(OWNER, s.new[0]) != "orders-redis-0" for s in switches)
        new_master = report.master
        assert report.labels[new_master] == "master"
        assert report.labels["orders-redis-0"] == "replica"
        assert client.get("before") == b"1"
        # an unavailability of about down-after (1 s) plus Sentinel's election, well under failover-timeout
        assert first_write - killed_at < 10
    finally:
        stopped.set()
        watcher.join(5)
        conns.close()


def test_restarted_old_master_rejoins_as_replica(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    h.env.kill("orders-redis-0")
    h.env.sentinel_master(timeout=20, other_than=h.env.address("orders-redis-0"))
    h.env.restart("orders-redis-0")
    report = wait_healthy(h)
    assert report.master != "orders-redis-0"
    assert h.roles()["orders-redis-0"] == "slave"


def test_partitioned_master_loses_no_acknowledged_write(harness: Harness) -> None:
    """SIGSTOP the master beyond down-after while a writer runs with WAIT 1 (min-replicas-to-write 1)."""
    h = harness
    wait_healthy(h)
    acknowledged: list[int] = []
    stop_writer = threading.Event()

    def writer() -> None:
        sentinel = h.sentinel_client()
        i = 0
        end = time.monotonic() + 25
        while not stop_writer.is_set() and time.monotonic() < end:
            i += 1
            try:
                client = sentinel.master_for(OWNER.master_name, socket_timeout=0.5)
                client.rpush("acked", i)
                if client.execute_command("WAIT", 1, 500) >= 1:  # type: ignore[no-untyped-call]
                    acknowledged.append(i)
            except (RedisError, OSError):
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(1.0)
        h.env.stop("orders-redis-0")  # frozen: looks like a network partition
        h.env.sentinel_master(timeout=20, other_than=h.env.address("orders-redis-0"))
        time.sleep(1.0)
        h.env.cont("orders-redis-0")
        time.sleep(2.0)
    finally:
        stop_writer.set()
        thread.join(30)
    report = wait_healthy(h)
    assert h.masters() == [report.master]
    assert report.master != "orders-redis-0"
    assert h.roles()["orders-redis-0"] == "slave"
    stored = {int(x) for x in h.env.client(report.master).lrange("acked", 0, -1)}
    missing = [i for i in acknowledged if i not in stored]
    assert len(acknowledged) > 20, "the writer barely wrote: the test proves nothing"
    assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:10]}"


def test_forced_split_brain_is_repaired_by_one_pass(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    h.env.client("orders-redis-2").execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
    assert h.masters() == ["orders-redis-0", "orders-redis-2"]
    report = h.heal()
    assert [a.reason for a in report.actions] == ["SplitBrainRepaired"]
    assert h.masters() == ["orders-redis-0"]
    for _ in deadline_loop(15, "orders-redis-2 replicating the master again", 0.2):
        info = h.env.info("orders-redis-2")
        if info.get("role") == "slave" and info.get("master_link_status") == "up":
            break


def test_all_sentinels_and_master_down_promotes_highest_offset(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    master = h.env.client("orders-redis-0")
    for i in range(200):
        master.set(f"k{i}", i)
    master.execute_command("WAIT", 2, 2000)  # type: ignore[no-untyped-call]
    # orders-redis-1 falls behind: cut from the master (it follows nobody) while more is written
    lagging = h.env.client("orders-redis-1")
    lagging.execute_command("REPLICAOF", *NO_MASTER)  # type: ignore[no-untyped-call]
    master.config_set("min-replicas-to-write", 0)
    for i in range(200, 300):
        master.set(f"k{i}", i)
    master.execute_command("WAIT", 1, 2000)  # type: ignore[no-untyped-call]
    for pod in h.env.sentinel_pods:
        h.env.kill(pod)
    h.env.kill("orders-redis-0")
    # The operator's clock: the set is masterless, but for less than the grace — it waits.
    now = [0.0]
    h.topology.clock = lambda: now[0]
    waiting = h.heal()
    for _ in deadline_loop(10, "orders-redis-1 to notice that its master is gone", 0.2):
        if waiting.reason != "MasterUnreachable":  # orders-redis-2 may not have seen its master die yet
            break
        waiting = h.heal()
    assert waiting.actions == [], waiting
    assert waiting.reason == "NoMaster", waiting  # orders-redis-0's container is not running: Kubernetes says so
    assert "orders-redis-2" in waiting.message
    assert h.masters() == []
    now[0] += promote_grace_seconds(SPEC)
    report = h.heal()
    assert report.master == "orders-redis-2", report
    assert [a.reason for a in report.actions][:1] == ["MasterPromoted"]
    assert "orders-redis-2" in report.actions[0].message
    for _ in deadline_loop(15, "orders-redis-1 replicating the promoted master", 0.2):
        info = h.env.info("orders-redis-1")
        if info.get("master_link_status") == "up" and info.get("master_host") == h.env.address("orders-redis-2")[0]:
            break
    assert h.env.client("orders-redis-2").get("k299") == "299"


def test_passes_during_a_failover_never_undo_it(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    h.env.kill("orders-redis-0")
    reports: list[TopologyReport] = []
    for _ in range(20):  # 20 passes spread over the failover
        reports.append(h.heal())
        time.sleep(0.25)
    forbidden = [a for r in reports for a in r.actions if a.reason in ("MasterPromoted", "SplitBrainRepaired")]
    assert forbidden == [], forbidden
    new = h.env.sentinel_master(timeout=20, other_than=h.env.address("orders-redis-0"))
    h.env.restart("orders-redis-0")
    final = wait_healthy(h)
    assert h.env.address(final.master or "") == new  # the operator follows Sentinel's choice
    chosen = {r.master for r in reports if r.master not in (None, "orders-redis-0")}
    assert chosen <= {final.master}, f"the operator named several masters during the failover: {chosen}"


def test_sentinel_that_forgot_the_master_is_repointed(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    h.env.client("orders-sentinel-1").execute_command("SENTINEL", "REMOVE", OWNER.master_name)  # type: ignore[no-untyped-call]
    report = h.heal()
    assert [a.reason for a in report.actions] == ["SentinelReconfigured"]
    wait_healthy(h)
    assert h.env.sentinel_masters()["orders-sentinel-1"] == h.env.address("orders-redis-0")


def test_a_sentinel_pointed_at_a_second_master_is_no_failover_to_wait_for(harness: Harness) -> None:
    # A Sentinel names a second master with no newer configuration than the quorum (it was pointed
    # there; it did not fail over). Sentinel never spreads an equal config-epoch, so waiting for the
    # Sentinels to converge would be waiting forever: the operator repairs both at once.
    h = harness
    wait_healthy(h)
    epochs = {p: int(h.env.client(p).sentinel_master(OWNER.master_name)["config-epoch"])
              for p in h.env.sentinel_pods}
    h.env.client("orders-redis-2").execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
    stray = h.env.client("orders-sentinel-2")
    stray.execute_command("SENTINEL", "REMOVE", OWNER.master_name)  # type: ignore[no-untyped-call]
    host, port = h.env.address("orders-redis-2")
    stray.execute_command("SENTINEL", "MONITOR", OWNER.master_name, host, str(port), "2")  # type: ignore[no-untyped-call]
    stray.execute_command("SENTINEL", "SET", OWNER.master_name, "auth-pass", PASSWORD)  # type: ignore[no-untyped-call]
    assert int(stray.sentinel_master(OWNER.master_name)["config-epoch"]) <= max(epochs.values())
    report = h.heal()
    assert [a.reason for a in report.actions] == ["SplitBrainRepaired", "SentinelReconfigured"], report
    final = wait_healthy(h)
    assert final.master == "orders-redis-0"
    assert set(h.env.sentinel_masters().values()) == {h.env.address("orders-redis-0")}
    assert h.masters() == ["orders-redis-0"]


def test_sentinel_settings_follow_the_spec(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    changed = models.parse_spec({**SPEC.model_dump(by_alias=True),
                                 "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 2500,
                                              "failoverTimeout": 5000}})
    report = h.topology.check_and_heal(changed, OWNER, [], PASSWORD)
    assert {a.reason for a in report.actions} == {"SentinelReconfigured"}
    for pod in h.env.sentinel_pods:
        master: dict[str, Any] = h.env.client(pod).sentinel_master(OWNER.master_name)
        assert int(master["down-after-milliseconds"]) == 2500


def test_subscriber_resubscribed_after_failover_receives_messages(harness: Harness) -> None:
    h = harness
    wait_healthy(h)
    sentinel = h.sentinel_client()
    h.env.kill("orders-redis-0")
    h.env.sentinel_master(timeout=20, other_than=h.env.address("orders-redis-0"))
    received: list[bytes] = []
    for _ in deadline_loop(15, "a subscription on the new master", 0.2):
        try:
            sub = sentinel.master_for(OWNER.master_name, socket_timeout=1).pubsub()
            sub.subscribe("events")
            break
        except (RedisConnectionError, OSError):
            continue
    publisher = sentinel.master_for(OWNER.master_name, socket_timeout=1)
    for _ in deadline_loop(10, "a message published after the failover", 0.05):
        publisher.publish("events", b"hello")
        msg = sub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg and msg["type"] == "message":
            received.append(msg["data"])
            break
    sub.close()
    assert received == [b"hello"]

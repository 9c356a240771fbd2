"""Nothing acknowledged is lost in Sentinel mode when things go wrong: real redis-server and
redis-sentinel processes started from the rendered files, the operator's topology controller acting on
them as the reconcile pass would, and every write counted only once a replica acknowledged it (WAIT).

Each case is one a review found losing data: a master back without its data and followed by its
replicas, a promotion by an operator that sees only a minority, a full restart crowning ordinal 0, a
planned switch-over that did not wait for the replicas.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError
from sentinel_env import SentinelEnv
from sentinel_harness import OWNER, PASSWORD, Harness, deadline_loop

from redis_messaging.api import models
from redis_messaging.modes.sentinel import rolling
from redis_messaging.modes.sentinel.rolling import SentinelRoller
from redis_messaging.modes.sentinel.topology import promote_grace_seconds
from redis_messaging.redis.sentinel import NO_MASTER

pytestmark = pytest.mark.redis

KEYS = 500


def spec_for(persistence: str, down_after: int = 3000) -> models.RedisMessagingSpec:
    return models.parse_spec({
        "redis": {"replicas": 3},
        "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": down_after, "failoverTimeout": 10000},
        "persistence": {"mode": persistence},
    })


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[list[SentinelEnv]]:
    made: list[SentinelEnv] = []
    yield made
    for env in made:
        env.close()


def started(made: list[SentinelEnv], spec: models.RedisMessagingSpec, base: Path) -> SentinelEnv:
    env = SentinelEnv(spec, OWNER, base, password=PASSWORD, extra_env={"RMSG_BOOTSTRAP_WAIT_SECONDS": "4"})
    made.append(env)
    env.start()
    env.wait_replication(timeout=30)
    env.sentinel_master(timeout=30)
    return env


def write_acknowledged(env: SentinelEnv, master: str, count: int = KEYS, prefix: str = "k") -> None:
    """``count`` keys, each acknowledged by every replica (WAIT), or the test stops."""
    client = env.client(master)
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"{prefix}{i}", i)
    pipe.execute()
    replicas = len(env.redis_pods) - 1
    acked = client.execute_command("WAIT", replicas, 5000)  # type: ignore[no-untyped-call]
    assert acked == replicas, f"only {acked} replicas acknowledged the writes"


def keys_by_pod(env: SentinelEnv) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for pod in env.redis_pods:
        try:
            out[pod] = int(env.client(pod).dbsize())
        except RedisError as exc:
            out[pod] = type(exc).__name__
    return out


def heal_until_every_pod_holds(h: Harness, count: int, timeout: float) -> str:
    """Operator passes until one master and every pod in sync holds ``count`` keys; returns the master."""
    state = ""
    for _ in deadline_loop(timeout, f"every pod holding {count} keys in one replication set ({state})", 0.5):
        report = h.heal()
        held = keys_by_pod(h.env)
        state = f"{report.reason}: {report.message}; keys {held}"
        if report.healthy and report.master is not None and all(v == count for v in held.values()):
            return report.master
        if any(v == 0 for v in held.values()) and not any(v == count for v in held.values()):
            raise AssertionError(f"every copy of the data is gone: {state}")
    raise AssertionError("unreachable")


@pytest.mark.parametrize("case", ["persistence-none", "aof-volume-emptied"])
def test_a_master_back_without_its_data_is_never_followed_by_its_replicas(make_env: list[SentinelEnv],
                                                                          tmp_path: Path, case: str) -> None:
    """The master's redis-server is SIGKILLed and restarted by the kubelet before down-after passes, with
    nothing on its volume: it must not come back as the master its replicas sync from."""
    env = started(make_env, spec_for("none" if case == "persistence-none" else "aof"), tmp_path)
    h = Harness(env, spec=env.spec)
    master = heal_until_every_pod_holds(h, 0, 30)
    write_acknowledged(env, master)
    env.kill(master)
    if case == "aof-volume-emptied":
        env.empty_volume(master)
    env.restart(master)  # at once: well within down-after-milliseconds
    new_master = heal_until_every_pod_holds(h, KEYS, 60)
    assert new_master != master, "the pod that came back empty serves as master"
    assert "starting as replica" in env.log(master, since_start=True)


def test_an_operator_that_sees_only_a_minority_promotes_nobody(make_env: list[SentinelEnv], tmp_path: Path) -> None:
    """The operator reaches orders-redis-1, orders-redis-2 and one Sentinel; the master and two Sentinels
    are on the other side, where clients still write. However long it waits, it promotes nobody."""
    env = started(make_env, spec_for("aof", down_after=1000), tmp_path)
    master = heal_until_every_pod_holds(Harness(env, spec=env.spec), 0, 30)
    assert master == "orders-redis-0"
    cut = Harness(env, spec=env.spec, cut_off=frozenset({"orders-redis-0", "orders-sentinel-1", "orders-sentinel-2"}))
    now = [0.0]
    cut.topology.clock = lambda: now[0]
    writer = env.client(master)
    for i in range(10):
        report = cut.heal()
        assert [a.reason for a in report.actions if a.reason == "MasterPromoted"] == [], report
        writer.set(f"during-{i}", i)
        now[0] += promote_grace_seconds(env.spec)
    assert cut.masters() == ["orders-redis-0"]
    assert report.reason in ("MasterUnreachable", "NoSafeView"), report
    assert writer.execute_command("WAIT", 2, 2000) == 2  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("case", ["ordinal-0-empty", "ordinal-0-behind"])
def test_a_full_restart_seeds_from_the_pod_with_the_most_data(make_env: list[SentinelEnv], tmp_path: Path,
                                                              case: str) -> None:
    """Every process is SIGKILLed (Sentinels too: their state is in memory) and started again; ordinal 0
    has less data than the others. The set must come back with every key, from the richest pod."""
    env = started(make_env, spec_for("aof"), tmp_path)
    h = Harness(env, spec=env.spec)
    master = heal_until_every_pod_holds(h, 0, 30)
    assert master == "orders-redis-0"
    write_acknowledged(env, master)
    total = KEYS
    if case == "ordinal-0-behind":
        # the master moves to orders-redis-1, orders-redis-0 is cut from it while more is written
        env.request_failover("orders-sentinel-0")
        new = env.sentinel_master(timeout=20, other_than=env.address("orders-redis-0"))
        master = env.pod_at(new)
        for _ in deadline_loop(20, "the old master replicating the new one", 0.2):
            try:  # Sentinel ends the demoted master's client connections (CLIENT KILL TYPE normal)
                if env.info("orders-redis-0").get("master_link_status") == "up":
                    break
            except RedisError:
                continue
        env.client("orders-redis-0").execute_command("REPLICAOF", *NO_MASTER)  # type: ignore[no-untyped-call]
        client = env.client(master)
        for i in range(100):
            client.set(f"late{i}", i)
        assert client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        total += 100
    # What the test is about is which pod seeds the set, not Redis's own windows: every AOF holds what
    # its process has (no write postponed behind a slow fsync, no rewrite after a full sync under way,
    # whose end a SIGKILL would lose and which a loaded machine makes long).
    for pod in env.redis_pods:
        for _ in deadline_loop(30, f"{pod}'s AOF written and no rewrite under way", 0.1):
            p = env.info(pod, "persistence")
            if not (p.get("aof_buffer_length") or p.get("aof_rewrite_in_progress")
                    or p.get("aof_rewrite_scheduled")):
                break
    for pod in env.pod_names:
        env.kill(pod)
    if case == "ordinal-0-empty":
        env.empty_volume("orders-redis-0")
    env.start()
    seeded = heal_until_every_pod_holds(h, total, 90)
    assert seeded != "orders-redis-0"


def test_the_prestop_hook_hands_over_only_once_the_replicas_caught_up(make_env: list[SentinelEnv],
                                                                      tmp_path: Path) -> None:
    """A replica that cannot catch up (frozen): the pre-stop hook resumes writes and asks for no failover."""
    env = started(make_env, spec_for("aof"), tmp_path)
    h = Harness(env, spec=env.spec)
    master = heal_until_every_pod_holds(h, 0, 30)
    write_acknowledged(env, master, 50)
    env.stop("orders-redis-2")
    env.client(master).set("while-frozen", 1)  # orders-redis-2 cannot have it
    started_at = time.monotonic()
    result = env.run_script(master, "prestop.sh", timeout=30)
    took = time.monotonic() - started_at
    assert result.returncode == 0, result.stderr
    assert "no switch-over" in result.stderr
    assert took < 15, f"the hook took {took:.1f}s"
    assert env.info(master)["role"] == "master"
    assert env.client(master).set("after", 1)  # writes are not paused any more
    time.sleep(2)  # a failover asked for would be under way by now
    assert env.sentinel_master(timeout=5) == env.address(master)
    env.cont("orders-redis-2")


def test_the_rolling_switch_over_waits_for_the_replicas_to_catch_up(make_env: list[SentinelEnv],
                                                                    tmp_path: Path) -> None:
    env = started(make_env, spec_for("aof"), tmp_path)
    h = Harness(env, spec=env.spec)
    master = heal_until_every_pod_holds(h, 0, 30)
    step = SentinelRoller(None, h.addresses, timeout=0.5)
    env.stop("orders-redis-2")
    env.client(master).set("while-frozen", 1)
    switched, why = step.failover(env.spec, OWNER, PASSWORD, rolling.Failover(master, (), ()))
    assert switched is None
    assert "did not catch up" in why
    assert env.client(master).set("after", 1), "writes stay paused"
    time.sleep(2)
    assert env.sentinel_master(timeout=5) == env.address(master)
    env.cont("orders-redis-2")
    for _ in deadline_loop(10, "orders-redis-2 catching up", 0.2):
        if env.info("orders-redis-2").get("master_link_status") == "up":
            break
    switched, why = step.failover(env.spec, OWNER, PASSWORD, rolling.Failover(master, (), ()))
    assert switched is not None, why
    new = env.sentinel_master(timeout=20, other_than=env.address(master))
    assert env.client(env.pod_at(new)).get("while-frozen") == "1"
    assert rolling.CATCH_UP_SECONDS <= 5


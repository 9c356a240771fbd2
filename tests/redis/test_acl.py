"""ACL users and rotation of the default password on real redis-server and redis-sentinel processes,
started from the rendered configuration (SentinelEnv), driven by the operator's own AclStep.

* a declared user can XADD / XREADGROUP on its streams and is refused on other keys and commands;
  it exists on every node (ACLs are not replicated), also on a node restarted before any operator
  pass (the start script reads the mounted users' Secrets); rule changes and removed users follow.
* rotation without downtime: the new password is added everywhere (Redis masterauth, Sentinel
  auth-pass and sentinel-pass too), the writer moves to it, the old one is removed, while a writer
  appends continuously: zero failed writes, every acknowledged entry there. Afterwards the processes
  work with the new password only: a restarted replica re-syncs, Sentinel fails over.
* no password in any log line: the operator's and redis-py's (captured at DEBUG) and the processes'.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError
from sentinel_env import SentinelEnv

from redis_messaging.api import models
from redis_messaging.builders import config
from redis_messaging.builders.names import Owner
from redis_messaging.reconcile.acl import AclStep
from redis_messaging.redis import acl
from redis_messaging.redis.addresses import MapAddresses

pytestmark = pytest.mark.redis

OLD = "acl-old-Pa55word-\\with\"quotes"
NEW = "acl-new-Pa55word-rotated"
APP = "billing-app-Pa55word"
OWNER = Owner(name="orders", namespace="shop", uid="uid-acl")
RULES = "~orders* resetchannels -@all +@stream +ping +hello +auth +client"
SPEC = models.parse_spec({
    "auth": {"secretName": "orders-password", "rotationGraceSeconds": 0,
             "users": [{"name": "billing", "secretName": "billing-password", "rules": RULES}]},
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
})
SECRETS = (OLD, NEW, APP)


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    path.chmod(0o600)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SentinelEnv]:
    with SentinelEnv(SPEC, OWNER, tmp_path / "pods", password=OLD) as pods:
        for name in pods.redis_pods:  # the projected users volume of the redis pods
            pod = pods.pod(name)
            write_secret(pod.root / "users" / "user-0", APP)
            pod.env["RMSG_USERS_DIR"] = str(pod.root / "users")
        pods.start()
        pods.wait_replication(timeout=30)
        pods.sentinel_master(timeout=30)
        eventually(lambda: all(quorum_ok(pods, s, OLD) for s in pods.sentinel_pods), "Sentinels know each other",
                   timeout=30)
        yield pods


def replicas_known(env: SentinelEnv, password: str) -> bool:
    """Every Sentinel knows every replica, none down (Sentinel learns them from the master's INFO every
    10 s; a replica it does not know would not be re-pointed by a failover)."""
    want = len(env.redis_pods) - 1
    for pod in env.sentinel_pods:
        try:
            replicas = env.client(pod, password=password).execute_command("SENTINEL", "REPLICAS", OWNER.master_name)
        except RedisError:  # not up yet (refused) or not ready (an error reply)
            return False
        flags = [dict(zip(r[::2], r[1::2], strict=True)).get("flags", "") if isinstance(r, list) else r.get("flags", "")
                 for r in replicas]
        if len(flags) != want or any("down" in f or "disconnected" in f for f in flags):
            return False
    return True


def quorum_ok(env: SentinelEnv, sentinel: str, password: str) -> bool:
    """SENTINEL CKQUORUM: enough Sentinels that know each other and reach the master to fail over."""
    try:
        reply = env.client(sentinel, password=password).execute_command("SENTINEL", "CKQUORUM", OWNER.master_name)
    except RedisError:  # not up yet (refused) or not ready (an error reply)
        return False
    return str(reply).startswith("OK") and "3 usable" in str(reply)


@pytest.fixture
def step(env: SentinelEnv) -> AclStep:
    addresses = MapAddresses({p: env.address(p) for p in env.redis_pods},
                             {p: env.address(p) for p in env.sentinel_pods})
    return AclStep(None, addresses, timeout=1.0)


@pytest.fixture(autouse=True)
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for secret in SECRETS:
        assert secret not in text


def no_secret_in_process_logs(env: SentinelEnv) -> None:
    for pod in env.pod_names:
        text = env.log(pod)
        for secret in SECRETS:
            assert secret not in text, pod


def as_user(env: SentinelEnv, pod: str, user: str, password: str) -> redis.Redis:
    return env.client(pod, username=user, password=password)


def user_works(env: SentinelEnv, pod: str) -> bool:
    try:
        return bool(as_user(env, pod, "billing", APP).ping())
    except RedisError:
        return False


def test_declared_user_can_use_its_streams_and_nothing_else(env: SentinelEnv, step: AclStep) -> None:
    master = env.wait_replication()
    for pod in env.redis_pods:  # from the start script, before any pass of the operator
        assert user_works(env, pod), pod
    app = acl.User("billing", APP, RULES)
    done, failed = step.apply_users(SPEC, OWNER, OLD, [app])
    assert failed == {}
    assert sorted(done) == sorted(f"billing on {p}" for p in env.redis_pods)  # rules it did not apply itself
    assert step.apply_users(SPEC, OWNER, OLD, [app]) == ([], {})  # then nothing to do

    client = as_user(env, master, "billing", APP)
    client.xgroup_create("orders", "billing", id="0", mkstream=True)
    client.xadd("orders", {"n": "1"})
    client.xadd("orders-eu", {"n": "2"})
    got = client.xreadgroup("billing", "c1", {"orders": ">"}, count=10)
    assert [e[1] for e in got[0][1]] == [{"n": "1"}]
    for refused in (lambda: client.xadd("invoices", {"n": "1"}),  # another key
                    lambda: client.set("orders-plain", "x"),  # a command outside +@stream
                    lambda: client.execute_command("FLUSHALL"),
                    lambda: client.execute_command("CONFIG", "GET", "requirepass")):
        with pytest.raises(NoPermissionError):
            refused()
    with pytest.raises(RedisError):
        as_user(env, master, "billing", "wrong-password").ping()

    # A changed rule reaches every node; a restarted node still has the user before any pass.
    wider = acl.User("billing", APP, RULES + " ~invoices")
    done, failed = step.apply_users(SPEC, OWNER, OLD, [wider])
    assert failed == {}
    assert sorted(done) == sorted(f"billing on {p}" for p in env.redis_pods)
    assert step.apply_users(SPEC, OWNER, OLD, [wider]) == ([], {})  # idempotent: nothing to do
    client.xadd("invoices", {"n": "1"})
    replica = next(p for p in env.redis_pods if p != master)
    env.restart(replica)
    env.wait_ready(replica, timeout=30)
    assert user_works(env, replica)

    # A user no longer declared is deleted everywhere.
    done, failed = step.apply_users(SPEC, OWNER, OLD, [])
    assert failed == {}
    assert sorted(done) == sorted(f"billing deleted on {p}" for p in env.redis_pods)
    assert not any(user_works(env, p) for p in env.redis_pods)
    no_secret_in_process_logs(env)


class Writer(threading.Thread):
    """Appends to a stream on the master as fast as it can; reconnects with the password it is told."""

    def __init__(self, env: SentinelEnv, master: str, password: str) -> None:
        super().__init__(daemon=True)
        self.env, self.master, self.password = env, master, password
        self.acked: list[str] = []
        self.failures: list[str] = []
        self.reconnects = 0
        self.stop = threading.Event()
        self._move = threading.Event()
        self._client = self._connect()

    def _connect(self) -> redis.Redis:
        ip, port = self.env.address(self.master)
        return redis.Redis(host=ip, port=port, password=self.password, socket_timeout=2, decode_responses=True)

    def move_to(self, password: str) -> None:
        """What an application does when the connection Secret changes: reconnect with the new password."""
        self.password = password
        self._move.set()

    def run(self) -> None:
        while not self.stop.is_set():
            if self._move.is_set():
                self._move.clear()
                old, self._client = self._client, self._connect()
                old.close()
                self.reconnects += 1
            try:
                self.acked.append(self._client.xadd("rotation", {"i": str(len(self.acked))}))
            except (RedisError, OSError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.002)
        self._client.close()


def accepts(env: SentinelEnv, pod: str, password: str) -> bool:
    try:
        return bool(env.client(pod, password=password).ping())
    except RedisError:
        return False


def test_rotation_keeps_every_write_and_ends_with_the_new_password_only(env: SentinelEnv, step: AclStep,
                                                                         tmp_path: Path) -> None:
    master = env.wait_replication()
    writer = Writer(env, master, OLD)
    writer.start()
    try:
        time.sleep(0.3)
        # 1. add: every process takes the new password next to the old one.
        assert step.add_everywhere(SPEC, OWNER, NEW, OLD) == {}
        for pod in env.pod_names:
            assert accepts(env, pod, OLD), pod
            assert accepts(env, pod, NEW), pod
        assert step.add_everywhere(SPEC, OWNER, NEW, OLD) == {}  # idempotent (a pass that ran twice)
        assert set(step.old_passwords_left(SPEC, OWNER, NEW)) == set(env.pod_names)
        time.sleep(0.3)
        # 2. publish: the application moves to the new password (fresh connections).
        writer.move_to(NEW)
        eventually(lambda: writer.reconnects == 1, "writer reconnected")
        time.sleep(0.3)
        # 3. remove: only the new password works anywhere; open connections keep working.
        removed, failed = step.remove_old_everywhere(SPEC, OWNER, NEW)
        assert failed == {}
        assert sorted(removed) == sorted(env.pod_names)
        assert step.old_passwords_left(SPEC, OWNER, NEW) == []
        assert step.remove_old_everywhere(SPEC, OWNER, NEW) == ([], {})  # nothing left to do
        time.sleep(0.3)
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.failures == []
    assert len(writer.acked) > 100
    for pod in env.pod_names:
        assert not accepts(env, pod, OLD), pod
        assert accepts(env, pod, NEW), pod
    master_client = env.client(master, password=NEW)
    assert master_client.xlen("rotation") == len(writer.acked)
    print(f"\nrotation: {len(writer.acked)} writes acknowledged, {len(writer.failures)} failed")

    # The processes now talk to each other with the new password only: the pods' Secret files are
    # updated (as the kubelet does), a restarted replica re-syncs, and Sentinel still fails over.
    for pod in env.pod_names:
        write_secret(env.pod(pod).auth_dir / "password", NEW)
    env.password = NEW
    replica = next(p for p in env.redis_pods if p != master)
    env.restart(replica)
    assert env.wait_replication(timeout=30) == master
    for pod in env.sentinel_pods:
        assert quorum_ok(env, pod, NEW), pod
    eventually(lambda: replicas_known(env, NEW), "Sentinels know both replicas", timeout=30)

    env.request_failover(env.sentinel_pods[0])
    new_master = env.sentinel_master(timeout=30, other_than=env.address(master))
    assert env.pod_at(new_master) != master
    try:
        assert env.wait_replication(timeout=30) == env.pod_at(new_master)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{env.log_tail(*env.sentinel_pods, lines=40)}") from None
    no_secret_in_process_logs(env)


def test_errors_never_carry_a_password(env: SentinelEnv, step: AclStep) -> None:
    # A process that accepts none of the passwords, and a rule Redis refuses: the messages name the
    # process and the rule, not the passwords tried.
    failed = step.add_everywhere(SPEC, OWNER, NEW, "not-the-password")
    assert set(failed) == set(env.pod_names)
    assert all(NEW not in why and "not-the-password" not in why for why in failed.values())
    bad = acl.User("billing", APP, "~orders* +@nonsense")
    _, failed = step.apply_users(SPEC, OWNER, OLD, [bad])
    assert set(failed) == set(env.redis_pods)
    assert all("+@nonsense" in why and APP not in why for why in failed.values()), failed
    with pytest.raises(ResponseError):
        env.client(env.redis_pods[0]).execute_command("ACL", "SETUSER", "x", "+@nonsense")


def eventually(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.05)


EXPORTER = "exporter-own-Pa55word"


def test_exporter_user_outlives_a_rotation_of_the_default_password(tmp_path: Path) -> None:
    """The exporters log in as their own read-only user on Redis and on Sentinel, from the start
    scripts and from the operator, and still do after the default password was rotated away."""
    with SentinelEnv(SPEC, OWNER, tmp_path / "pods", password=OLD) as env:
        for pod in env.pod_names:  # the projected users volume: the app user (redis), the exporter (all)
            users = env.pod(pod).root / "users"
            write_secret(users / "exporter", EXPORTER)
            write_secret(users / "user-0", APP)
            env.pod(pod).env["RMSG_USERS_DIR"] = str(users)
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        for pod in env.sentinel_pods:  # every Sentinel listening, not only one naming the master
            env.wait_ready(pod, timeout=30)
        step = AclStep(None, MapAddresses({p: env.address(p) for p in env.redis_pods},
                                          {p: env.address(p) for p in env.sentinel_pods}), timeout=1.0)

        def exporter_works() -> None:
            for pod in env.redis_pods:
                client = as_user(env, pod, config.EXPORTER_USER, EXPORTER)
                assert "redis_version" in client.info("server"), pod
                assert "maxmemory" in client.info("memory"), pod  # redis_memory_max_bytes: from INFO
                with pytest.raises(NoPermissionError):  # its reply would hold requirepass and masterauth
                    client.config_get("maxmemory")
                with pytest.raises(NoPermissionError):
                    client.set("k", "v")
                with pytest.raises(NoPermissionError):
                    client.execute_command("CONFIG", "SET", "maxmemory", "1")
            for pod in env.sentinel_pods:
                client = as_user(env, pod, config.EXPORTER_USER, EXPORTER)
                masters = client.execute_command("SENTINEL", "MASTERS")
                assert masters, pod
                with pytest.raises(NoPermissionError):
                    client.execute_command("SENTINEL", "RESET", OWNER.master_name)

        exporter_works()  # from the start scripts, before any pass of the operator
        assert step.add_everywhere(SPEC, OWNER, NEW, OLD) == {}
        removed, failed = step.remove_old_everywhere(SPEC, OWNER, NEW)
        assert (sorted(removed), failed) == (sorted(env.pod_names), {})
        for pod in env.pod_names:
            assert not accepts(env, pod, OLD), pod
        exporter_works()  # the default password rotated away: the exporters are not locked out

        # Lost on a Redis and on a Sentinel: the operator's pass sets it again, with each kind's rules.
        redis_pod, sentinel_pod = env.redis_pods[1], env.sentinel_pods[1]
        for pod in (redis_pod, sentinel_pod):
            env.client(pod, password=NEW).execute_command("ACL", "DELUSER", config.EXPORTER_USER)
        users = [acl.User("billing", APP, RULES), acl.User(config.EXPORTER_USER, EXPORTER, config.EXPORTER_RULES_REDIS)]
        done, failed = step.apply_users(SPEC, OWNER, NEW, users)
        assert failed == {}
        assert f"{config.EXPORTER_USER} on {redis_pod}" in done
        assert f"{config.EXPORTER_USER} on {sentinel_pod}" in done
        exporter_works()
        for pod in env.pod_names:
            assert EXPORTER not in env.log(pod), pod

"""A master the Sentinels fail over is fenced: it acknowledges no write that the promoted replica lacks.

The master freezes (SIGSTOP, like a partition) long enough for the Sentinels to call it down, and
resumes as they start the failover. Unfenced, it takes writes again at once, and a replica that still
follows it acknowledges them (``WAIT 1``) until Sentinel re-points that replica at the promoted one:
those writes are then gone from every pod. The failover watch pauses the old master's writes on
``+odown`` / ``+try-failover`` until it is a replica. Real redis-server and redis-sentinel processes,
and a client that writes to the master it knows, as fast as it can, like the nemesis workload."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sentinel_env import Address, SentinelEnv, eventually, sentinel_knows_all

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.sentinel.watch import FailoverWatch
from redis_messaging.redis.addresses import MapAddresses

pytestmark = pytest.mark.redis

T = TypeVar("T")

PASSWORD = "fence-Pa55word"
OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
DOWN_AFTER_MS = 1000
SPEC = models.parse_spec({
    "auth": {"enabled": True},
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": DOWN_AFTER_MS, "failoverTimeout": 5000},
})
WRITE_SECONDS = 40.0  # the writer's bound, whatever happens
WRITES = 200_000  # and its count bound
RESUME_AFTER_PROMOTION = 0.3  # seconds


class Recorder:
    """What the watch asks of the API server: pod labels, the status, Events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        pass

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        pass

    def event(self, involved: dict[str, Any], *, reason: str, message: str, **_: Any) -> None:
        with self.lock:
            self.events.append((reason, message))

    def reasons(self) -> list[str]:
        with self.lock:
            return [r for r, _ in self.events]


class Writer:
    """Writes ``k<i>`` to the master it knows, each acknowledged by ``WAIT 1``; on an error it asks the
    Sentinels for the master again. Records every acknowledged key."""

    def __init__(self, env: SentinelEnv, master: Address) -> None:
        self.env = env
        self.master = master
        self.acked: list[str] = []
        self.errors = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def _client(self, address: Address) -> redis.Redis:
        return redis.Redis(host=address[0], port=address[1], password=PASSWORD, socket_timeout=1,
                           socket_connect_timeout=1, decode_responses=True, retry=Retry(NoBackoff(), 0))

    def _run(self) -> None:
        client = self._client(self.master)
        end = time.monotonic() + WRITE_SECONDS
        for i in range(WRITES):
            if self.stopped.is_set() or time.monotonic() > end:
                break
            key = f"k{i}"
            try:
                client.set(key, i)
                if int(client.execute_command("WAIT", 1, 1000)) >= 1:  # type: ignore[no-untyped-call]
                    self.acked.append(key)
            except (RedisError, OSError):
                self.errors += 1
                client.close()
                time.sleep(0.05)
                named = self.env.sentinel_masters()
                found = next((a for a in named.values() if a is not None), None)
                client = self._client(found or self.master)
        client.close()

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(WRITE_SECONDS + 10)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SentinelEnv]:
    with SentinelEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        eventually(lambda: all(sentinel_knows_all(env, p) for p in env.sentinel_pods), timeout=30,
                   what="every Sentinel knows the others and the replicas")
        yield env


def odown(env: SentinelEnv) -> bool:
    """Whether a Sentinel holds the master objectively down (a failover is about to start)."""
    for pod in env.sentinel_pods:
        try:
            reply = env.client(pod, socket_timeout=0.5).execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "MASTER", OWNER.master_name)
        except RedisError:
            continue
        info = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else dict(reply)
        if "o_down" in str(info.get("flags", "")):
            return True
    return False


def test_a_master_back_during_its_failover_acknowledges_nothing_the_promoted_replica_lacks(
        env: SentinelEnv) -> None:
    old = env.sentinel_master()
    old_pod = env.pod_at(old)
    addresses = MapAddresses({p: env.address(p) for p in env.redis_pods},
                             {p: env.address(p) for p in env.sentinel_pods})
    kube = Recorder()
    watch = FailoverWatch(kube, addresses, OWNER, pods=env.pod_objects)  # type: ignore[arg-type]
    watch.ensure(redis_replicas=3, sentinel_replicas=3, password=PASSWORD, down_after_milliseconds=DOWN_AFTER_MS)
    try:
        time.sleep(1.0)  # subscribed
        with Writer(env, old) as writer:
            eventually(lambda: len(writer.acked) > 100, timeout=10, what="writes acknowledged")
            env.stop(old_pod)
            try:
                eventually(lambda: odown(env), timeout=15, what="the Sentinels hold the master down")
            finally:
                env.cont(old_pod)
            new = env.sentinel_master(timeout=30, other_than=old)
            eventually(lambda: env.info(old_pod)["role"] == "slave", timeout=30, what=f"{old_pod} a replica")
            eventually(lambda: int(env.info(old_pod).get("master_port", 0)) == new[1]
                       and env.info(old_pod).get("master_link_status") == "up", timeout=30,
                       what=f"{old_pod} synced with the new master")
            acked_at_switch = len(writer.acked)
            eventually(lambda: len(writer.acked) > acked_at_switch + 100, timeout=15,
                       what="writes acknowledged by the new master")
    finally:
        watch.stop(timeout=10)
    new_pod = env.pod_at(new)
    client = env.client(new_pod)
    pipe = client.pipeline(transaction=False)
    for key in writer.acked:
        pipe.exists(key)
    missing = [k for k, present in zip(writer.acked, pipe.execute(), strict=True) if not present]
    assert missing == [], f"{len(missing)} of {len(writer.acked)} acknowledged writes lost: {missing[:10]}"
    assert "MasterFenced" in kube.reasons(), kube.events
    # the pause ended: PUBLISH (held by a pause, allowed on a replica) answers at once
    assert env.client(old_pod, socket_timeout=1).publish("fence-check", "x") == 0


def resp(*args: str) -> bytes:
    return b"".join([f"*{len(args)}\r\n".encode(), *(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)])


def replies(sock: socket.socket, count: int, timeout: float) -> list[str]:
    """The first ``count`` replies (simple ones: status, error, integer) read from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\r\n") < count and time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return [line.decode() for line in data.split(b"\r\n")[:count]]


def follows(env: SentinelEnv, pod: str) -> Address | None:
    info = env.info(pod)
    return (str(info["master_host"]), int(info["master_port"])) if "master_host" in info else None


def test_writes_waiting_in_a_frozen_masters_sockets_are_acknowledged_by_no_replica(env: SentinelEnv) -> None:
    """The master freezes; a client's write and its ``WAIT 1`` wait in the master's socket. The master
    resumes a moment (RESUME_AFTER_PROMOTION) after the Sentinels promoted a replica, while they wait to
    see the promotion before they re-point the other one (about a second): it runs the write before
    anything else, and a replica that still followed it would acknowledge it, although the promoted
    replica lacks it. The fence detached that replica once the promotion happened: the write is
    acknowledged by nobody, or it is on the new master."""
    old = env.sentinel_master()
    old_pod = env.pod_at(old)
    others = [p for p in env.redis_pods if p != old_pod]
    addresses = MapAddresses({p: env.address(p) for p in env.redis_pods},
                             {p: env.address(p) for p in env.sentinel_pods})
    watch = FailoverWatch(Recorder(), addresses, OWNER, pods=env.pod_objects)  # type: ignore[arg-type]
    watch.ensure(redis_replicas=3, sentinel_replicas=3, password=PASSWORD, down_after_milliseconds=DOWN_AFTER_MS)
    probe = socket.create_connection(old, timeout=5)
    try:
        time.sleep(1.0)  # subscribed
        probe.sendall(resp("AUTH", PASSWORD))
        assert replies(probe, 1, 5) == ["+OK"]
        env.stop(old_pod)
        promoted: list[str] = []
        try:
            probe.sendall(resp("SET", "probe", "1") + resp("WAIT", "1", "3000"))

            def one_promoted() -> bool:
                promoted.extend(p for p in others if env.info(p).get("role") == "master")
                return bool(promoted)

            eventually(one_promoted, timeout=30, what="a replica promoted", interval=0.01)
            (other,) = (p for p in others if p != promoted[0])
            until = time.monotonic() + RESUME_AFTER_PROMOTION
            while time.monotonic() < until and follows(env, other) != env.address(promoted[0]):
                time.sleep(0.01)  # (unless Sentinel re-points it sooner: then there is no window to try)
        finally:
            env.cont(old_pod)
        answered = replies(probe, 2, 10)
        new = env.sentinel_master(timeout=30, other_than=old)
        assert env.pod_at(new) == promoted[0]
        eventually(lambda: env.info(old_pod)["role"] == "slave", timeout=30, what=f"{old_pod} a replica")
    finally:
        probe.close()
        watch.stop(timeout=10)
    acknowledged = len(answered) == 2 and answered[0] == "+OK" and answered[1].startswith(":") \
        and int(answered[1][1:]) >= 1
    holds = env.client(promoted[0]).exists("probe") == 1
    assert holds or not acknowledged, (
        f"the write waiting in {old_pod}'s socket was acknowledged ({answered}) and {promoted[0]}, the promoted "
        "replica, lacks it")
    print(f"[redis] a write waiting in the frozen master's socket: {answered}; on the new master: {holds}")

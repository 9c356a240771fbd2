"""The failover watch does not go deaf: a Sentinel that stops answering without closing the connection
(a frozen process, like a lost node or a partition) is given up within a bounded time, and the failover
that follows is seen through another Sentinel. Real redis-server and redis-sentinel processes."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from redis.exceptions import RedisError
from sentinel_env import Address, SentinelEnv, eventually, sentinel_knows_all

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.redis import sentinel as rs

pytestmark = pytest.mark.redis

T = TypeVar("T")

PASSWORD = "watch-silence-Pa55word"
OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
DOWN_AFTER_SECONDS = 1.0
SPEC = models.parse_spec({
    "auth": {"enabled": True},
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": int(DOWN_AFTER_SECONDS * 1000),
                 "failoverTimeout": 5000},
})
# The watch's own connection timeout, as FailoverWatchers uses it.
WATCH_TIMEOUT_SECONDS = 2.0
# From freezing the subscribed Sentinel to a subscription on another one: the silence allowed, the
# watch's poll interval, and a connection to the next Sentinel.
MOVED_ON_WITHIN = rs.WATCH_SILENCE_SECONDS + 1.5
# From the master's death to the switch reported: Sentinel's down-after, its election and promotion,
# which happen meanwhile on the two Sentinels still answering.
REPORTED_WITHIN = DOWN_AFTER_SECONDS + 7.0
# From the other Sentinels listed to a switch made meanwhile reported: the watch may still be waiting out
# the frozen Sentinel's silence or its connection timeout, or its longest wait between two rounds.
MAX_BACKOFF_SECONDS = 5.0  # watch_switch_master's default
CAUGHT_UP_WITHIN = rs.WATCH_SILENCE_SECONDS + WATCH_TIMEOUT_SECONDS + MAX_BACKOFF_SECONDS + 1.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SentinelEnv]:
    with SentinelEnv(SPEC, OWNER, tmp_path, password=PASSWORD) as env:
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        eventually(lambda: all(sentinel_knows_all(env, p) for p in env.sentinel_pods), timeout=30,
                   what="every Sentinel knows the other Sentinels and the replicas (they can fail over)")
        yield env


def subscribers(env: SentinelEnv, pod: str, *, pinging: bool = False) -> int:
    """Clients of a Sentinel with a subscription (Sentinels subscribe only on Redis: these are the
    watch's); ``pinging``: only those that sent a PING since (the watch is past its first look)."""
    try:
        clients = env.client(pod).client_list()
    except RedisError:
        return 0
    return sum(1 for c in clients if int(c.get("sub", 0)) > 0 and (not pinging or c.get("cmd") == "ping"))


def given_up(caplog: pytest.LogCaptureFixture) -> list[Address]:
    """The Sentinels the watch gave up as silent, from its log."""
    return [(str(args[0]), int(args[1])) for r in caplog.records if (args := cast(tuple[Any, ...], r.args))
            and r.name == rs.__name__ and r.levelno == logging.WARNING and "no answer" in r.getMessage()]


class Watch:
    """watch_switch_master in a thread, as FailoverWatchers runs it, over the Sentinels that
    ``sentinels`` lists at each round (in that order: the first one answering is subscribed to)."""

    def __init__(self, sentinels: Callable[[], list[Address]]) -> None:
        self.switches: list[tuple[float, rs.SwitchMaster]] = []
        self.stopped = threading.Event()
        self.conns = rs.Connections(PASSWORD, timeout=WATCH_TIMEOUT_SECONDS)
        self.thread = threading.Thread(
            target=rs.watch_switch_master,
            args=(self.conns, sentinels, OWNER.master_name,
                  lambda event: self.switches.append((time.monotonic(), event)), self.stopped),
            name="watch under test", daemon=True)

    def first_switch(self) -> tuple[float, rs.SwitchMaster] | None:
        """When the first switch was reported, and the switch."""
        return self.switches[0] if self.switches else None

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.conns.close()
        assert not self.thread.is_alive(), "the watch did not stop"


def test_a_frozen_sentinel_is_given_up_and_the_failover_seen_through_another(
        env: SentinelEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=rs.__name__)
    first, *others = env.sentinel_pods
    old_master = env.sentinel_master()
    with Watch(lambda: [env.address(p) for p in env.sentinel_pods]) as watch:
        eventually(lambda: subscribers(env, first) == 1, timeout=10, what=f"the watch subscribed on {first}")
        # A Sentinel that answers is kept: longer than the silence allowed, still the one subscribed to.
        time.sleep(rs.WATCH_SILENCE_SECONDS + 1)
        assert subscribers(env, first) == 1
        assert given_up(caplog) == []
        try:
            env.stop(first)  # SIGSTOP: the connection stays open, nothing answers
            frozen_at = time.monotonic()
            env.kill(env.pod_at(old_master))
            killed_at = time.monotonic()

            moved_at = eventually(
                lambda: time.monotonic() if sum(subscribers(env, p) for p in others) == 1 else None,
                timeout=MOVED_ON_WITHIN, what=f"the watch subscribed on another Sentinel than the frozen {first}")
            reported_at, switch = eventually(watch.first_switch,
                                             timeout=REPORTED_WITHIN, what="the switch reported")
            new_master = env.sentinel_master(timeout=10, other_than=old_master)
            time.sleep(max(0.0, moved_at + rs.WATCH_SILENCE_SECONDS + 1 - time.monotonic()))
        finally:
            env.cont(first)
    assert moved_at - frozen_at < MOVED_ON_WITHIN, f"moved on after {moved_at - frozen_at:.1f}s"
    assert reported_at - killed_at < REPORTED_WITHIN, f"reported {reported_at - killed_at:.1f}s after the kill"
    assert switch.old == old_master
    assert switch.new == new_master
    assert given_up(caplog) == [env.address(first)]  # that one only: the one it moved to answers


def test_a_failover_made_while_the_watch_was_deaf_is_followed_once_it_listens_again(
        env: SentinelEnv, caplog: pytest.LogCaptureFixture) -> None:
    # The watch knows only the first Sentinel while that one is frozen and the others fail over: it
    # hears nothing. Given the others afterwards, it finds the newer master they name and reports it.
    caplog.set_level(logging.INFO, logger=rs.__name__)
    first = env.sentinel_pods[0]
    listed = [first]
    old_master = env.sentinel_master()
    with Watch(lambda: [env.address(p) for p in listed]) as watch:
        # listening, its look at the master this Sentinel names taken
        eventually(lambda: subscribers(env, first, pinging=True) == 1, timeout=10,
                   what=f"the watch subscribed on {first}")
        try:
            env.stop(first)
            env.kill(env.pod_at(old_master))
            new_master = env.sentinel_master(timeout=20, other_than=old_master)
            assert watch.switches == []
            listed[:] = env.sentinel_pods
            listening_again = time.monotonic()
            reported_at, switch = eventually(watch.first_switch,
                                             timeout=CAUGHT_UP_WITHIN, what="the missed switch reported")
        finally:
            env.cont(first)
    assert reported_at - listening_again < CAUGHT_UP_WITHIN
    assert (switch.old, switch.new) == (old_master, new_master)


def test_sentinels_that_never_answer_are_logged_once_each_not_at_every_round(
        caplog: pytest.LogCaptureFixture) -> None:
    """A resource whose Sentinels are all unreachable (its pods not started, a whole node lost) keeps
    its watch retrying; the log says so once per Sentinel, not three lines per round for ever."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:  # a port nothing listens on: connection refused at once
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    nowhere = [("127.0.0.1", p) for p in ports]
    caplog.set_level(logging.INFO, logger=rs.__name__)
    with Watch(lambda: nowhere):
        time.sleep(4.0)  # rounds after 0.5, 1 and 2 s of backoff: at least four rounds
    failures = [r for r in caplog.records if r.name == rs.__name__ and "no subscription" in r.getMessage()]
    assert sorted((str(r.args[0]), int(r.args[1])) for r in failures if isinstance(r.args, tuple)) == sorted(nowhere)

"""Sentinel-mode topology: observe Redis and Sentinel processes, and the few commands that heal them.

Every function takes addresses (host, port) and a password; none knows about Kubernetes. Reads are
pipelined, one round trip per process. Nothing here decides anything: the plan is made by
:mod:`redis_messaging.modes.sentinel.topology` from what these functions observe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.backoff import NoBackoff
from redis.client import Redis
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from redis_messaging.builders import names
from redis_messaging.redis import DRIVER_INFO
from redis_messaging.redis.engine import Engine, engine_of
from redis_messaging.redis.tls import ClientTls
from redis_messaging.redis.tls import options as tls_options

log = logging.getLogger(__name__)

Address = tuple[str, int]

ERRORS = (RedisError, OSError)
"""What a command to an unreachable or failing process raises: for callers outside this package."""


class Connections:
    """One client per address, reused across passes (its pool reconnects by itself).

    No retries: a pass observes many processes, and an unreachable one must cost one timeout, not
    several; the next pass is the retry."""

    def __init__(self, password: str | None, *, timeout: float = 2.0, decode: bool = True,
                 connect_timeout: float | None = None, tls: ClientTls | None = None) -> None:
        self.password = password
        self.tls = tls
        self.timeout = timeout
        self.decode = decode
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._clients: dict[Address, Redis] = {}
        self._lock = threading.Lock()

    def get(self, address: Address) -> Redis:
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                client = Redis(host=address[0], port=address[1], password=self.password,
                               socket_timeout=self.timeout, socket_connect_timeout=self.connect_timeout,
                               decode_responses=self.decode, retry=Retry(NoBackoff(), 0),
                               driver_info=DRIVER_INFO, **tls_options(self.tls))
                self._clients[address] = client
            return client

    def set_password(self, password: str | None) -> None:
        if password == self.password:
            return
        self.close()
        self.password = password

    def set_tls(self, tls: ClientTls | None) -> None:
        """A renewed CA or client key pair: new clients from now on."""
        if tls == self.tls:
            return
        self.close()
        self.tls = tls

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _cmd(client: Redis, *args: str) -> Any:
    """A raw command (redis-py leaves execute_command untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------------------------
# Observation


NO_MASTER: Address = (names.NO_MASTER_HOST, names.NO_MASTER_PORT)
"""The master a Redis pod names while it waits to be told whom to follow (see redis-start.sh): it holds
its data, accepts no write, and no other pod can sync from it."""


@dataclass(frozen=True)
class RedisNode:
    address: Address
    reachable: bool
    role: str = ""  # "master" | "slave"
    master: Address | None = None  # for a replica: the master it follows
    link_up: bool = False
    offset: int = 0  # master_repl_offset on a master, slave_repl_offset on a replica
    replicas: tuple[Address, ...] = ()
    error: str = ""
    # The replication history this process holds (INFO replication): the id of its current history,
    # and the id of the one before with the offset up to which it shares it (after a promotion).
    replid: str = ""
    replid2: str = ""
    second_offset: int = -1
    keys: int = 0  # keys in every database (INFO keyspace)
    dataset_bytes: int = 0  # used_memory_dataset: tells apart datasets with as many keys
    loading: bool = False  # still loading its RDB/AOF: what it holds is not known yet
    priority: int = 100  # replica-priority: 0 means Sentinel never promotes it
    engine: Engine | None = None  # what the process runs (INFO server)

    @property
    def is_master(self) -> bool:
        return self.reachable and self.role == "master"

    @property
    def unattached(self) -> bool:
        """A replica that waits to be told whom to follow (it names :data:`NO_MASTER`)."""
        return self.reachable and self.role == "slave" and self.master == NO_MASTER

    @property
    def empty(self) -> bool:
        """Holds no key and no replication history worth keeping."""
        return self.reachable and not self.loading and self.keys == 0


def _parse_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _keys(parsed: dict[str, Any]) -> int:
    """The keys of every database, from INFO keyspace (``db0:keys=1,expires=0,...``)."""
    total = 0
    for key, value in parsed.items():
        if not (str(key).startswith("db") and str(key)[2:].isdigit()):
            continue
        fields = value if isinstance(value, dict) else dict(
            part.split("=", 1) for part in str(value).split(",") if "=" in part)
        total += _int(fields.get("keys"))
    return total


def observe_redis(conns: Connections, address: Address) -> RedisNode:
    """Role, master, replication history, data size and engine of one Redis: one INFO of five sections."""
    try:
        raw = _cmd(conns.get(address), "INFO", "replication", "keyspace", "memory", "persistence", "server")
    except (RedisError, OSError) as exc:
        return RedisNode(address, reachable=False, error=f"{type(exc).__name__}: {exc}")
    parsed: dict[str, Any] = raw if isinstance(raw, dict) else _parse_info(str(raw))
    replicas = []
    for key, value in parsed.items():
        if str(key).startswith("slave") and str(key)[5:].isdigit():
            fields = value if isinstance(value, dict) else dict(
                part.split("=", 1) for part in str(value).split(",") if "=" in part)
            if "ip" in fields and "port" in fields:
                replicas.append((str(fields["ip"]), int(fields["port"])))
    info = {str(k): str(v) for k, v in parsed.items()}
    role = info.get("role", "")
    replid2 = info.get("master_replid2", "")
    facts: dict[str, Any] = {
        "replid": info.get("master_replid", ""),
        "replid2": "" if not replid2.strip("0") else replid2,  # all zeroes: no history before this one
        "second_offset": _int(info.get("second_repl_offset"), -1),
        "keys": _keys(parsed),
        "dataset_bytes": _int(info.get("used_memory_dataset")),
        "loading": info.get("loading") == "1",
        "priority": _int(info.get("slave_priority", info.get("replica_priority")), 100),
        "engine": engine_of(info),
    }
    if role == "master":
        return RedisNode(address, True, role, offset=_int(info.get("master_repl_offset")),
                         replicas=tuple(replicas), **facts)
    master = (info.get("master_host", ""), _int(info.get("master_port")))
    return RedisNode(address, True, role, master=master, link_up=info.get("master_link_status") == "up",
                     offset=_int(info.get("slave_repl_offset")), **facts)


# What Sentinel (sentinelSelectSlave, Redis 7) asks of a replica before it promotes it while the master
# is up, as SENTINEL FAILOVER does: answers to PING within 5 PING periods, an INFO at most 3 INFO
# periods old, and a link to the master down no longer than 10 down-after periods when last reported.
PROMOTE_PING_MS = 5 * 1000
PROMOTE_INFO_MS = 3 * 10_000
PROMOTE_LINK_DOWN_PERIODS = 10


@dataclass(frozen=True)
class ReplicaView:
    """One replica as one Sentinel sees it (SENTINEL REPLICAS): what that Sentinel's choice rests on,
    which lags the replica itself by up to an INFO period (10 s)."""
    address: Address
    flags: frozenset[str] = frozenset()
    last_ok_ping_ms: int = 0
    info_refresh_ms: int = 0
    link_down_ms: int = 0
    priority: int = 100
    reported: bool = True  # False: no INFO of it yet (Sentinel shows its master as "?")

    def not_promotable(self, down_after_ms: int) -> str | None:
        """Why this Sentinel would answer NOGOODSLAVE rather than promote this replica while the master
        is up; None: it would. Worded without figures, so that a condition made of it stays the same
        from one pass to the next."""
        down = sorted({"s_down", "o_down", "disconnected"} & self.flags)
        if down:
            return f"{','.join(down)} in its view"
        if self.last_ok_ping_ms > PROMOTE_PING_MS:
            return f"no PING answer for more than {PROMOTE_PING_MS // 1000} s"
        if not self.reported:
            return "no INFO of it yet"
        if self.priority == 0:
            return "replica-priority 0 in its last INFO of it"
        if self.info_refresh_ms > PROMOTE_INFO_MS:
            return f"its last INFO of it is more than {PROMOTE_INFO_MS // 1000} s old"
        if down_after_ms > 0 and self.link_down_ms > PROMOTE_LINK_DOWN_PERIODS * down_after_ms:
            return (f"its last INFO of it had the link to the master down for more than "
                    f"{PROMOTE_LINK_DOWN_PERIODS} x down-after-milliseconds")
        return None


@dataclass(frozen=True)
class SentinelNode:
    address: Address
    reachable: bool
    monitoring: bool = False
    master: Address | None = None
    flags: frozenset[str] = frozenset()
    failover_state: str = ""
    epoch: int = 0  # config-epoch of the master it names: a failover it took part in raises it
    config: dict[str, str] = field(default_factory=dict)
    replicas: tuple[Address, ...] = ()
    sentinels: tuple[Address, ...] = ()
    error: str = ""
    replica_views: tuple[ReplicaView, ...] = ()

    @property
    def failing_over(self) -> bool:
        return bool({"failover_in_progress", "promoted"} & self.flags) or self.failover_state not in (
            "", "none", "failover_state_none")

    @property
    def master_down(self) -> bool:
        return bool({"o_down", "s_down"} & self.flags)


def _pairs(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply or [])
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _replica_views(reply: Any) -> tuple[ReplicaView, ...]:
    out = []
    for entry in reply or []:
        fields = _pairs(entry)
        if "ip" in fields and "port" in fields:
            out.append(ReplicaView(
                (fields["ip"], int(fields["port"])),
                flags=frozenset(f for f in fields.get("flags", "").split(",") if f),
                last_ok_ping_ms=_int(fields.get("last-ok-ping-reply")),
                info_refresh_ms=_int(fields.get("info-refresh")),
                link_down_ms=_int(fields.get("master-link-down-time")),
                priority=_int(fields.get("slave-priority", fields.get("replica-priority")), 100),
                reported=fields.get("master-host", "?") != "?"))
    return tuple(out)


def _addresses(reply: Any) -> tuple[Address, ...]:
    out = []
    for entry in reply or []:
        fields = _pairs(entry)
        if "ip" in fields and "port" in fields:
            out.append((fields["ip"], int(fields["port"])))
    return tuple(out)


def observe_sentinel(conns: Connections, address: Address, master_name: str) -> SentinelNode:
    client = conns.get(address)
    try:
        pipe = client.pipeline(transaction=False)
        for sub in ("MASTER", "REPLICAS", "SENTINELS"):
            pipe.execute_command("SENTINEL", sub, master_name)  # type: ignore[no-untyped-call]
        replies = pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        return SentinelNode(address, reachable=False, error=f"{type(exc).__name__}: {exc}")
    master_reply, replicas_reply, sentinels_reply = replies
    if isinstance(master_reply, ResponseError):
        if "No such master" in str(master_reply):
            return SentinelNode(address, reachable=True, monitoring=False)
        return SentinelNode(address, reachable=True, error=str(master_reply))
    info = _pairs(master_reply)
    views = () if isinstance(replicas_reply, ResponseError) else _replica_views(replicas_reply)
    return SentinelNode(
        address,
        reachable=True,
        monitoring=True,
        master=(info.get("ip", ""), int(info.get("port", 0) or 0)),
        flags=frozenset(f for f in info.get("flags", "").split(",") if f),
        failover_state=info.get("failover-state", ""),
        epoch=int(info.get("config-epoch", 0) or 0),
        config={k: info[k] for k in ("quorum", "down-after-milliseconds", "failover-timeout",
                                     "parallel-syncs") if k in info},
        replicas=tuple(v.address for v in views),
        sentinels=() if isinstance(sentinels_reply, ResponseError) else _addresses(sentinels_reply),
        replica_views=views,
    )


# ---------------------------------------------------------------------------------------------
# Commands


def replicate(conns: Connections, address: Address, master: Address) -> None:
    _cmd(conns.get(address), "REPLICAOF", master[0], str(master[1]))


def promote(conns: Connections, address: Address) -> None:
    _cmd(conns.get(address), "REPLICAOF", "NO", "ONE")


def set_priority(conns: Connections, address: Address, priority: str) -> None:
    """``replica-priority``: 0 keeps Sentinel from promoting a replica whose data is not vouched for."""
    _cmd(conns.get(address), "CONFIG", "SET", "replica-priority", priority)


def sentinel_monitor(conns: Connections, address: Address, master_name: str, master: Address,
                     quorum: int, settings: dict[str, str]) -> None:
    """(Re)point one Sentinel at ``master``, then set its options (auth-pass included)."""
    client = conns.get(address)
    try:
        _cmd(client, "SENTINEL", "REMOVE", master_name)
    except ResponseError as exc:
        if "No such master" not in str(exc):
            raise
    _cmd(client, "SENTINEL", "MONITOR", master_name, master[0], str(master[1]), str(quorum))
    sentinel_set(conns, address, master_name, settings)


def sentinel_set(conns: Connections, address: Address, master_name: str, settings: dict[str, str]) -> None:
    if not settings:
        return
    args: list[str] = []
    for key, value in settings.items():
        args += [key, value]
    _cmd(conns.get(address), "SENTINEL", "SET", master_name, *args)


def sentinel_reset(conns: Connections, address: Address, master_name: str) -> None:
    _cmd(conns.get(address), "SENTINEL", "RESET", master_name)


def sentinel_failover(conns: Connections, address: Address, master_name: str) -> None:
    _cmd(conns.get(address), "SENTINEL", "FAILOVER", master_name)


# ---------------------------------------------------------------------------------------------
# Following failovers as they happen


@dataclass(frozen=True)
class SwitchMaster:
    master_name: str
    old: Address
    new: Address
    received_at: float  # time.monotonic()


@dataclass(frozen=True)
class MasterDown:
    """A Sentinel's word that a failover of a master begins: ``+try-failover`` (this Sentinel starts
    one, also for ``SENTINEL FAILOVER``) or ``+vote-for-leader`` (it votes for the Sentinel that will
    fail over; every Sentinel asked votes, so this one is heard also when another one leads). The
    parser also reads ``+odown`` and the like (``master <name> <ip> <port> ...``)."""

    master_name: str
    address: Address
    event: str
    received_at: float  # time.monotonic()


DOWN_EVENTS = ("+try-failover", "+vote-for-leader")


def parse_master_down(event: str, data: str, master_name: str, current: Address | None) -> MasterDown | None:
    """``master <name> <ip> <port> [...]``, the payload of a Sentinel event about a master; a vote
    (``<runid> <epoch>``) names no master: it is about ``current``, the one master these Sentinels
    monitor (None: not known yet)."""
    parts = data.split()
    if event == "+vote-for-leader":
        return MasterDown(master_name, current, event, time.monotonic()) if current is not None else None
    if len(parts) < 4 or parts[0] != "master" or not parts[3].isdigit():
        return None
    return MasterDown(parts[1], (parts[2], int(parts[3])), event, time.monotonic())


def parse_switch_master(data: str) -> SwitchMaster | None:
    parts = data.split()
    if len(parts) != 5:
        return None
    name, old_host, old_port, new_host, new_port = parts
    return SwitchMaster(name, (old_host, int(old_port)), (new_host, int(new_port)), time.monotonic())


# A Sentinel that stops answering without closing the connection (its node lost, a partition) leaves
# a subscription waiting forever: nothing arrives, and nothing fails. So the watch sends PING on the
# subscribed connection every WATCH_PING_SECONDS and gives the Sentinel up when nothing (a reply or a
# message) has come back for WATCH_SILENCE_SECONDS; it then subscribes on the next Sentinel. A silent
# Sentinel is thus left within WATCH_SILENCE_SECONDS + the poll interval (0.5 s), plus one connection
# timeout per further silent Sentinel tried.
WATCH_PING_SECONDS = 1.0
WATCH_SILENCE_SECONDS = 3.0


class SilentSentinel(RedisError):
    """The subscribed Sentinel has answered nothing for longer than the watch allows."""


def named_master(conns: Connections, address: Address, master_name: str) -> tuple[Address, int] | None:
    """The master one Sentinel names now and its config-epoch (None: it does not monitor it)."""
    try:
        reply = _cmd(conns.get(address), "SENTINEL", "MASTER", master_name)
    except ResponseError:
        return None
    info = _pairs(reply)
    return (info.get("ip", ""), int(info.get("port", 0) or 0)), int(info.get("config-epoch", 0) or 0)


def watch_switch_master(conns: Connections, sentinels: Callable[[], Iterable[Address]], master_name: str,
                        on_switch: Callable[[SwitchMaster], None], stopped: threading.Event,
                        *, on_down: Callable[[MasterDown], None] | None = None,
                        poll: float = 0.5, max_backoff: float = 5.0, ping_every: float = WATCH_PING_SECONDS,
                        silence: float = WATCH_SILENCE_SECONDS) -> None:
    """Subscribe to ``+switch-master`` on one reachable Sentinel at a time until ``stopped``.

    A broken connection, or a Sentinel silent for ``silence`` seconds (see WATCH_SILENCE_SECONDS),
    moves on to the next Sentinel; when none answers, the next round waits longer (up to
    ``max_backoff``). A switch made while the watch was not listening is not lost: on subscribing,
    the master the Sentinel names is compared with the one last known, and a different one of a
    newer config-epoch is reported like a switch (a Sentinel with an older view is not believed).
    ``on_switch`` runs in this thread; a switch may be reported twice (a catch-up and the message
    of the same switch), so it must be idempotent. With ``on_down``, the Sentinel's ``+try-failover``
    and ``+vote-for-leader`` about this master are reported too (in this thread: it must not block).
    """
    backoff = poll
    last_error: dict[Address, str] = {}  # per Sentinel: a failure is logged when it changes, not each round
    known: tuple[Address, int] | None = None  # the master last reported or found, and its config-epoch
    while not stopped.is_set():
        for address in list(sentinels()):
            if stopped.is_set():
                return
            pubsub = conns.get(address).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
            try:
                pubsub.subscribe("+switch-master", *(DOWN_EVENTS if on_down is not None else ()))
                named = named_master(conns, address, master_name)  # after subscribing: no switch in between
                if named is not None:
                    if known is not None and named[0] != known[0] and named[1] > known[1]:
                        log.info("sentinel %s:%s names %s:%s as the master, switched while the watch did not "
                                 "listen; following it", *address, *named[0])
                        on_switch(SwitchMaster(master_name, known[0], named[0], time.monotonic()))
                    if known is None or named[1] >= known[1]:
                        known = named
                if last_error:
                    log.info("sentinel %s:%s: subscribed to +switch-master", *address)
                last_error.clear()
                backoff = poll
                heard = pinged = time.monotonic()
                while not stopped.is_set():
                    now = time.monotonic()
                    if now - heard > silence:
                        raise SilentSentinel(f"no answer for {now - heard:.1f}s")
                    if now - pinged >= ping_every:
                        pubsub.ping()
                        pinged = now
                    # Read replies raw: any of them is a sign of life, the plain PONG a Sentinel answers
                    # too (redis-py's get_message would swallow that one as an unknown reply).
                    response = pubsub.parse_response(  # type: ignore[no-untyped-call,unused-ignore]
                        block=False, timeout=min(poll, ping_every))
                    if response is None:
                        continue
                    heard = time.monotonic()
                    message = (pubsub.handle_message(response)  # type: ignore[no-untyped-call,unused-ignore]
                               if isinstance(response, list) else None)
                    if message is None or message.get("type") != "message":
                        continue
                    channel = str(message.get("channel", ""))
                    if channel in DOWN_EVENTS:
                        down = parse_master_down(channel, str(message.get("data", "")), master_name,
                                                 known[0] if known is not None else None)
                        if on_down is not None and down is not None and down.master_name == master_name:
                            on_down(down)
                        continue
                    event = parse_switch_master(str(message.get("data", "")))
                    if event is not None and event.master_name == master_name:
                        on_switch(event)
                        # and its config-epoch, for the comparison at the next subscription
                        known = (event.new, known[1] if known is not None else 0)
                        with contextlib.suppress(RedisError, OSError):
                            found = named_master(conns, address, master_name)
                            if found is not None and found[0] == event.new:
                                known = found
            except (RedisError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, SilentSentinel):
                    log.warning("sentinel %s:%s: %s on the +switch-master subscription; trying the next one",
                                *address, exc)
                elif error != last_error.get(address):
                    log.info("sentinel %s:%s: no subscription (%s); trying the next one", *address, error)
                last_error[address] = error
            finally:
                with contextlib.suppress(RedisError, OSError):
                    pubsub.close()
        stopped.wait(backoff)
        backoff = min(backoff * 2, max_backoff)

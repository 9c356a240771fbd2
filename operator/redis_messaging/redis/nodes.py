"""The Redis nodes that hold a resource's streams, and the stream work the operator runs on them.

* :class:`Placement`: which node owns which stream. In sentinel mode the master owns every stream;
  in cluster mode the master of the shard serving the slot of the stream's key (:meth:`Placement.sharded`),
  so callers that loop over :meth:`Placement.by_node` send every command to the node that owns the key.
* :class:`Pools`: one set of clients per resource (its password from the reconcile pass), shared by the
  reconcile pass (groups, retention) and the autoscaler (measurement, reclaim). One client per node
  address; what is learnt about a server (its version) is learnt once per client.
* :func:`dead_letter_stream` and :func:`dead_letter_refusals`: where a group's dead letters go, and which
  groups cannot have them (in cluster mode, a dead-letter stream on another slot than its stream).
* :func:`provision`, :func:`consumers`, :func:`reclaim` and :func:`dead_letter` wrap
  :mod:`redis_messaging.redis.streams` so that a Redis failure comes back as a value or as
  :class:`NodeUnavailable`: the layers above never import the Redis client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from redis_messaging.api import models
from redis_messaging.api.models import Stream
from redis_messaging.redis import cluster as rc
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis import streams as st
from redis_messaging.redis.tls import ClientTls

log = logging.getLogger(__name__)

Address = tuple[str, int]
GroupKey = tuple[str, str]  # (stream, group)
Resource = tuple[str, str]  # (namespace, name) of a RedisMessaging


QUEUE_PREFIX = "list:"


def queue_key(queue: str) -> tuple[str, str]:
    """A list queue autoscales like a stream group; its key among the groups is ("list:<name>", name)."""
    return (f"{QUEUE_PREFIX}{queue}", queue)


def queues_as_streams(queues: Iterable[models.Queue]) -> list[Stream]:
    """Autoscaled queues in the shape that conflict detection reads: one pseudo-group per queue."""
    return [Stream(name=queue_key(q.name)[0], groups=[models.Group(name=q.name, autoscale=q.autoscale)])
            for q in queues if q.autoscale is not None]


DEAD_LETTER_SUFFIX = ":dead-letters"


def hash_tag(key: str) -> str | None:
    """The hash tag of a key as Redis Cluster reads it (the text between the first ``{`` and the first
    ``}`` after it, when not empty), or None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


def dead_letter_stream(stream: str, group: models.Group) -> str:
    """The group's dead-letter stream: as declared, else ``<stream>:dead-letters`` when the stream's name
    has a hash tag (the suffix keeps it), else ``{<stream>}:dead-letters`` (its tag is the stream's name).
    Either default is on the stream's slot, but for names with a ``}`` and no tag (then it must be given)."""
    if group.dead_letter_stream is not None:
        return group.dead_letter_stream
    return f"{stream}{DEAD_LETTER_SUFFIX}" if hash_tag(stream) is not None else f"{{{stream}}}{DEAD_LETTER_SUFFIX}"


def dead_letter_refusals(spec: models.RedisMessagingSpec) -> dict[GroupKey, str]:
    """The groups with ``maxDeliveries`` whose dead letters cannot be moved, with why: the dead-letter
    stream is the stream itself, or, in cluster mode, on another hash slot (the copy and the
    acknowledgement run in one script, and a script touches the keys of one slot only)."""
    out: dict[GroupKey, str] = {}
    for stream in spec.streams:
        for group in stream.groups:
            if group.max_deliveries is None:
                continue
            target = dead_letter_stream(stream.name, group)
            where = f"{stream.name}/{group.name}"
            if target == stream.name:
                out[(stream.name, group.name)] = f"{where}: the dead-letter stream is the stream itself"
            elif spec.mode == "cluster" and rc.slot_of(target) != rc.slot_of(stream.name):
                tag = hash_tag(stream.name)
                hint = f"{{{tag if tag is not None else stream.name}}}"
                out[(stream.name, group.name)] = (
                    f"{where}: dead-letter stream {target} is on hash slot {rc.slot_of(target)}, the stream on "
                    f"{rc.slot_of(stream.name)}; in cluster mode it must share the stream's slot: give it the hash "
                    f"tag {hint}, e.g. {hint}{DEAD_LETTER_SUFFIX}")
    return out


class NodeUnavailable(RuntimeError):
    """A Redis node did not answer, or refused a command, e.g. a master that became a replica."""


@dataclass(frozen=True)
class Node:
    name: str  # the pod, e.g. orders-redis-0
    address: Address
    shard: str | None = None  # cluster mode: the shard it is the master of, e.g. orders-shard-1


@dataclass(frozen=True)
class Placement:
    """Where the streams of one resource live. Sentinel mode: every stream on the master. Cluster
    mode: the master of the shard whose slot ranges hold the slot of the stream's key."""

    master: Node
    slots: tuple[tuple[int, int, Node], ...] = ()  # cluster mode: (first slot, last slot, master)

    @classmethod
    def sharded(cls, shards: Sequence[tuple[Node, Sequence[tuple[int, int]]]]) -> Placement | None:
        """Cluster mode: every shard master with the slot ranges it serves; None without any master."""
        slots = tuple(sorted((start, end, node) for node, ranges in shards for start, end in ranges))
        if not slots:
            return None
        return cls(master=slots[0][2], slots=slots)

    def by_node(self, streams: Iterable[Stream]) -> list[tuple[Node, list[Stream]]]:
        """The streams grouped by the node that owns them, in declaration order."""
        grouped: dict[Node, list[Stream]] = {}
        for stream in streams:
            grouped.setdefault(self.node_of(stream.name), []).append(stream)
        return list(grouped.items())

    def nodes(self) -> tuple[Node, ...]:
        """Every master node, once (sentinel mode: the master)."""
        return tuple(dict.fromkeys([self.master, *(node for _, _, node in self.slots)]))

    def node_of(self, stream: str) -> Node:
        """The node that owns ``stream`` (cluster mode: the master of the shard of its key's slot)."""
        if not self.slots:
            return self.master
        slot = rc.slot_of(stream)
        for start, end, node in self.slots:
            if start <= slot <= end:
                return node
        return self.master  # a slot no shard serves: the command fails there and says so


class Pools:
    """Clients of every resource, by (namespace, name), reused across passes and ticks."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._connections: dict[Resource, rs.Connections] = {}
        self._lock = threading.Lock()

    def node(self, resource: Resource, password: str | None, address: Address,
             tls: ClientTls | None = None) -> st.StreamsNode:
        with self._lock:
            conns = self._connections.get(resource)
            if conns is None:
                conns = self._connections[resource] = rs.Connections(password, timeout=self.timeout)
            conns.set_password(password)
            conns.set_tls(tls)
            return st.node_of(conns.get(address))

    def forget(self, resource: Resource) -> None:
        with self._lock:
            conns = self._connections.pop(resource, None)
        if conns is not None:
            conns.close()

    def close_all(self) -> None:
        with self._lock:
            all_conns = list(self._connections.values())
            self._connections.clear()
        for conns in all_conns:
            conns.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ResponseError) else str(exc)


# ---------------------------------------------------------------------------------------------
# Groups and retention (the reconcile pass)


@dataclass(frozen=True)
class Provisioned:
    stream: str
    created: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()
    trimmed: int = 0
    error: str | None = None


def provision(node: st.StreamsNode, stream: Stream) -> Provisioned:
    """Create the declared groups (pruning undeclared ones when asked), then apply retention."""
    try:
        ensured = st.ensure_groups(node, stream)
    except (RedisError, OSError) as exc:
        return Provisioned(stream.name, error=f"stream {stream.name}: groups not ensured: {_describe(exc)}")
    try:
        trimmed = st.trim(node, stream)
    except (RedisError, OSError) as exc:
        return Provisioned(stream.name, ensured.created, ensured.pruned,
                           error=f"stream {stream.name}: retention not applied: {_describe(exc)}")
    return Provisioned(stream.name, ensured.created, ensured.pruned, trimmed)


# ---------------------------------------------------------------------------------------------
# Consumers (the autoscaler)


@dataclass(frozen=True)
class Consumer:
    pending: int
    idle_ms: int


def consumers(node: st.StreamsNode, groups: Sequence[GroupKey]) -> dict[GroupKey, dict[str, Consumer]]:
    """The consumers of every group, in one pipelined round trip (``XINFO CONSUMERS`` per group).

    A missing stream or group has no consumers. Raises :class:`NodeUnavailable` when the node does
    not answer; a group whose reply is another error is left out (and logged).
    """
    if not groups:
        return {}
    pipe = node.client.pipeline(transaction=False)
    for stream, group in groups:
        pipe.xinfo_consumers(stream, group)
    try:
        replies = pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        raise NodeUnavailable(_describe(exc)) from None
    out: dict[GroupKey, dict[str, Consumer]] = {}
    for key, reply in zip(groups, replies, strict=True):
        if isinstance(reply, Exception):
            text = str(reply).lower()
            if "no such key" in text or "nogroup" in text:
                out[key] = {}
            else:
                log.warning("consumers of %s/%s: %s", key[0], key[1], reply)
            continue
        rows: list[Any] = list(reply)
        out[key] = {_text(c["name"]): Consumer(int(c.get("pending") or 0), int(c.get("idle") or 0))
                    for c in rows}
    return out


def reclaim(node: st.StreamsNode, stream: str, group: str, live: set[str], claimer: str | None,
            *, min_idle_ms: int = 0) -> st.Reclaimed:
    """:func:`redis_messaging.redis.streams.reclaim_orphans`, raising :class:`NodeUnavailable`."""
    try:
        return st.reclaim_orphans(node, stream, group, live, claimer, min_idle_ms=min_idle_ms)
    except (RedisError, OSError) as exc:
        raise NodeUnavailable(f"{stream}/{group}: {_describe(exc)}") from None


def dead_letter(node: st.StreamsNode, stream: str, group: str, target: str, max_deliveries: int, *,
                min_idle_ms: int = 0, start: str = "-") -> st.DeadLettered:
    """:func:`redis_messaging.redis.streams.dead_letter`, raising :class:`NodeUnavailable`."""
    try:
        return st.dead_letter(node, stream, group, target, max_deliveries, min_idle_ms=min_idle_ms, start=start)
    except (RedisError, OSError) as exc:
        raise NodeUnavailable(f"{stream}/{group}: {_describe(exc)}") from None

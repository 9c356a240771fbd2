"""Declared streams and consumer groups: create them, measure them, trim them safely, reclaim orphans.

Everything here takes a synchronous ``redis.Redis`` client connected to the one node (a sentinel
master, or the cluster shard that owns the stream's slot) and never raises because a stream or a
group is missing: that is reported in the result instead.

Measurement (:func:`collect`) costs one pipelined round trip per node per tick, whatever the number
of streams and groups: ``XLEN`` and ``XINFO GROUPS`` for every watched stream. ``XINFO GROUPS``
reports lag and entries-read since Redis 7.0. Redis reports a *null* lag when it cannot know it
(an entry was deleted after the group's last-delivered-id, or the group was created at an
arbitrary id); a null lag is unknown, never 0. It is then counted, in further round trips, by a
bounded scan of the entries after the last-delivered-id (at most ``estimate_cap`` entries, counted
server-side so no entry crosses the network) and marked as estimated; a count that reached the cap
is marked as capped too: the lag is at least that count, never exactly it.

Retention (:func:`trim`) trims by the declared policy (``maxLen`` or ``minAge``) but, unless the
policy says ``unsafe``, never past an entry that some group has not been delivered yet or still has
pending; what the groups need is read in the script that trims.

No command sent here reads or removes more than SCRIPT_ENTRIES entries: counting a lag up to its cap
or trimming a long stream is many short scripts, so the Redis being served never stalls for it.

Reclaim (:func:`reclaim_orphans`) moves the pending entries of consumers whose process is gone to a
live consumer, counting the hand-over as a delivery, and deletes a consumer only when it has nothing
pending, atomically, because ``XGROUP DELCONSUMER`` throws a consumer's pending entries away.

Dead letters (:func:`dead_letter`): an entry delivered more than a group's ``maxDeliveries`` times and
idle long enough is copied to the group's dead-letter stream and acknowledged in the group, in one
script: nothing is lost if the operator dies between the two, and nothing is copied twice.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.client import Redis
from redis.exceptions import RedisError, ResponseError

from redis_messaging.api.models import Stream
from redis_messaging.redis.engine import parse_version

log = logging.getLogger(__name__)

DEFAULT_ESTIMATE_CAP = 10_000
"""At most this many entries are counted to estimate a null lag."""
LAG_SINCE = (7, 0, 0)
"""XINFO GROUPS reports entries-read and lag since this Redis version."""
DEFAULT_TRIM_SCAN = 100_000
"""A trim removes at most this many entries per call of :func:`trim`; the next call continues."""
SCRIPT_ENTRIES = 1_000
"""The budget of one script call: it reads or removes at most this many entries (a few milliseconds
of Redis time at most, whatever the stream's length; ``tests/redis/test_streams_cost.py`` measures it
on 1,000,000-entry streams). Longer work is several calls, and other clients' commands run between
them: the operator never stalls the Redis it serves."""

_MAX_SEQ = 2**64 - 1
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

# The entries after an id (exclusive), at most ARGV[2] of them, counted server-side: {count, the id
# of the last one counted (false when none)}. The estimate of a null lag calls it again from that id.
_COUNT_AFTER = """
local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
if #r == 0 then return {0, false} end
return {#r, r[#r][1]}
"""

# Retention in one script, so that no group can be created or moved back between the moment its
# needs are read and the trim (a separate boundary and trim would lose the entries it expects).
#   KEYS[1] the stream; ARGV[1] maxLen ('' for none); ARGV[2] the minAge boundary id ('' for none);
#   ARGV[3] at most this many entries go (SCRIPT_ENTRIES); ARGV[4] '1': never past what a group needs,
#   '0': unsafe; ARGV[5] '~' for an approximate trim, else ''; ARGV[6] 'boundary': only return what
#   the groups need (nil: nothing), 'trim': trim and return how many entries went; ARGV[7..] pairs of
#   (declared group, the first id it will need) for declared groups that may not exist yet.
# A group needs every entry after its last-delivered-id and every entry it has pending. Ids compare
# as (ms, seq) decimal strings, exactly (a Lua number would round a 64-bit sequence).
_RETAIN = """
local key = KEYS[1]
local function num(s) s = string.gsub(s, '^0+', '') if s == '' then return '0' end return s end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then ms, seq = id, '0' end
  return num(ms), num(seq)
end
local function numless(a, b) if #a ~= #b then return #a < #b end return a < b end
local function less(x, y)
  local xm, xs = parse(x)
  local ym, ys = parse(y)
  if xm ~= ym then return numless(xm, ym) end
  return numless(xs, ys)
end
local function incr(s)
  local out, i = '', #s
  while i > 0 do
    local d = string.byte(s, i) - 48
    if d < 9 then return string.sub(s, 1, i - 1) .. string.char(49 + d) .. out end
    out, i = '0' .. out, i - 1
  end
  return '1' .. out
end
local function after(id)
  local ms, seq = parse(id)
  if seq == '18446744073709551615' then return incr(ms) .. '-0' end
  return ms .. '-' .. incr(seq)
end
if redis.call('EXISTS', key) == 0 then return false end
local needed = false
local function lower(id) if not needed or less(id, needed) then needed = id end end
if ARGV[4] == '1' then
  local existing = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    existing[f['name']] = true
    lower(after(f['last-delivered-id']))
    if tonumber(f['pending']) > 0 then
      local p = redis.call('XPENDING', key, f['name'])
      if p[2] then lower(p[2]) end
    end
  end
  for i = 7, #ARGV, 2 do
    if not existing[ARGV[i]] then lower(ARGV[i + 1]) end
  end
end
if ARGV[6] == 'boundary' then return needed end
local most = tonumber(ARGV[3])
local r = redis.call('XRANGE', key, '-', '+', 'COUNT', most + 1)
if #r == 0 then return 0 end
local cap = false
if #r > most then cap = r[most + 1][1] end
local boundary = false
if ARGV[1] ~= '' then
  local excess = redis.call('XLEN', key) - tonumber(ARGV[1])
  if excess > 0 then
    if excess < #r then boundary = r[excess + 1][1] else boundary = cap end
  end
end
if ARGV[2] ~= '' then
  local age = ARGV[2]
  if cap and less(cap, age) then age = cap end
  if not boundary or less(boundary, age) then boundary = age end
end
if not boundary then return 0 end
if needed and less(needed, boundary) then boundary = needed end
if not less(r[1][1], boundary) then return 0 end
if ARGV[5] == '~' then return redis.call('XTRIM', key, 'MINID', '~', boundary) end
return redis.call('XTRIM', key, 'MINID', boundary)
"""

# Hand the pending entries of one consumer to another, each hand-over counted as a delivery: at most
# ARGV[5] entries of consumer ARGV[2] of group ARGV[1] from id ARGV[6] on (inclusive) are looked at, and
# those idle at least ARGV[4] ms go to ARGV[3] with their delivery count raised by one. XCLAIM without
# JUSTID raises it too but reads every body into the script; JUSTID with RETRYCOUNT reads none. Returns
# {entries looked at, entries claimed, the last id looked at (false when none)}. An entry deleted from
# the stream while pending is dropped from the pending list by XCLAIM (Redis >= 7.0) and not counted.
_CLAIM = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], '+', tonumber(ARGV[5]), ARGV[2])
if #rows == 0 then return {0, 0, false} end
local idle, claimed = tonumber(ARGV[4]), 0
for _, row in ipairs(rows) do
  if row[3] >= idle then
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], idle, row[1], 'JUSTID', 'RETRYCOUNT', row[4] + 1)
    claimed = claimed + #got
  end
end
return {#rows, claimed, rows[#rows][1]}
"""

DEAD_LETTER_FIELDS = ("dead-letter.id", "dead-letter.stream", "dead-letter.group", "dead-letter.deliveries",
                      "dead-letter.consumer")
"""The fields a dead letter starts with (the entry's id, its stream, the group, its delivery count, the
consumer that had it last), before the entry's own fields. An entry deleted from its stream while
pending has ``dead-letter.deleted`` 1 instead of its fields."""
DEAD_LETTER_MAX_FIELDS = 3000
"""An entry with more fields than this is dead-lettered without them (``dead-letter.omitted``: how many
there were): a script passes at most a few thousand values to one command."""

# Dead letters of one group, in one script so that the copy and the acknowledgement go together:
#   KEYS[1] the stream, KEYS[2] its dead-letter stream (same slot); ARGV[1] the group, ARGV[2]
#   maxDeliveries, ARGV[3] min idle ms, ARGV[4] at most this many pending entries looked at, ARGV[5]
#   from this id on (inclusive), ARGV[6] DEAD_LETTER_MAX_FIELDS.
# Every pending entry looked at that was delivered more than maxDeliveries times and is idle at least
# min idle ms is added to KEYS[2] (DEAD_LETTER_FIELDS, then its own fields) and acknowledged. The copy
# comes first: a script that fails stops before the acknowledgement of the entry it was at, and an
# acknowledged entry is no longer pending, so it is never copied twice. Returns {entries looked at,
# entries moved, the last id looked at (false when none)}.
_DEAD_LETTER = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[5], '+', tonumber(ARGV[4]))
if #rows == 0 then return {0, 0, false} end
local most, idle, widest, moved = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[6]), 0
for _, row in ipairs(rows) do
  if row[4] > most and row[3] >= idle then
    local f = {'dead-letter.id', row[1], 'dead-letter.stream', KEYS[1], 'dead-letter.group', ARGV[1],
               'dead-letter.deliveries', tostring(row[4]), 'dead-letter.consumer', row[2]}
    local e = redis.call('XRANGE', KEYS[1], row[1], row[1])
    if #e == 0 then
      f[11] = 'dead-letter.deleted'
      f[12] = '1'
    elseif #e[1][2] > 2 * widest then
      f[11] = 'dead-letter.omitted'
      f[12] = tostring(#e[1][2] / 2)
    else
      for _, v in ipairs(e[1][2]) do f[#f + 1] = v end
    end
    redis.call('XADD', KEYS[2], '*', unpack(f))
    redis.call('XACK', KEYS[1], ARGV[1], row[1])
    moved = moved + 1
  end
end
return {#rows, moved, rows[#rows][1]}
"""

# Delete consumer ARGV[2] of group ARGV[1] only if it has no pending entry; 1 when deleted.
# Done in one script so no entry can be delivered to it between the check and the delete.
_DELETE_IF_EMPTY = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


# ---------------------------------------------------------------------------------------------
# Small helpers: replies may be bytes or str depending on the client's decode_responses.


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; a bare ``"5"`` means ``(5, 0)``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def format_id(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def next_id(entry_id: str) -> str:
    """The smallest id greater than ``entry_id`` (works on every Redis version, unlike ``(id``)."""
    ms, seq = parse_id(entry_id)
    return format_id((ms + 1, 0) if seq == _MAX_SEQ else (ms, seq + 1))


def duration_ms(text: str) -> int:
    """``"1h30m"`` -> 5400000; the format of ``StreamRetention.minAge``."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * _DURATION_MS[u] for n, u in parts)


def _is_missing_key(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "no such key" in str(exc).lower()


def _is_missing_group(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "nogroup" in str(exc).lower()


# ---------------------------------------------------------------------------------------------
# Node wrapper: what is learnt once per client.


class StreamsNode:
    """A client plus what is learnt once about its server (the version), never per tick.

    :func:`collect` and friends accept a plain ``Redis`` too; they then keep one
    :class:`StreamsNode` per client object (weakly referenced), so the version is still read once.
    """

    def __init__(
        self,
        client: Redis,
        *,
        estimate_cap: int = DEFAULT_ESTIMATE_CAP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if estimate_cap < 1:
            raise ValueError("estimate_cap must be at least 1")
        self.client = client
        self.estimate_cap = estimate_cap
        self.clock = clock
        self.version: tuple[int, int, int] | None = None

    @property
    def reports_lag(self) -> bool:
        """Whether XINFO GROUPS has lag and entries-read (None: not known yet)."""
        return self.version is not None and self.version >= LAG_SINCE

    def learn_version(self, info: Any) -> None:
        raw = info.get("redis_version", "0.0.0") if isinstance(info, Mapping) else "0.0.0"
        numbers = [*(parse_version(_text(raw)) or ()), 0, 0, 0]
        self.version = (numbers[0], numbers[1], numbers[2])
        if not self.reports_lag:
            log.warning(
                "Redis %s reports no lag in XINFO GROUPS (needs 7.0); every lag will be estimated",
                ".".join(map(str, self.version)),
            )


_nodes: weakref.WeakKeyDictionary[Redis, StreamsNode] = weakref.WeakKeyDictionary()


def node_of(client: Redis | StreamsNode) -> StreamsNode:
    """The :class:`StreamsNode` of a client (created on first use, then kept with the client)."""
    if isinstance(client, StreamsNode):
        return client
    node = _nodes.get(client)
    if node is None:
        node = _nodes[client] = StreamsNode(client)
    return node


def _client(client: Redis | StreamsNode) -> Redis:
    return client.client if isinstance(client, StreamsNode) else client


# ---------------------------------------------------------------------------------------------
# Groups as declared.


@dataclass(frozen=True)
class GroupsEnsured:
    created: tuple[str, ...]
    """Groups created by this call (empty when they all existed)."""
    pruned: tuple[str, ...] = ()
    """Groups destroyed because they are not declared and the stream says ``prune``."""


def ensure_groups(client: Redis | StreamsNode, stream: Stream) -> GroupsEnsured:
    """Create the declared groups that do not exist (``XGROUP CREATE ... MKSTREAM``), idempotently.

    ``BUSYGROUP`` (the group exists, maybe created by someone else a moment ago) is success.
    With ``stream.prune``, groups that exist but are not declared are destroyed, pending entries
    and all: that is what pruning means. One round trip, plus one more when something is pruned.
    """
    r = _client(client)
    pipe = r.pipeline(transaction=False)
    for group in stream.groups:
        pipe.xgroup_create(stream.name, group.name, id=group.start_id, mkstream=True)
    if stream.prune:
        pipe.xinfo_groups(stream.name)
    replies = pipe.execute(raise_on_error=False)

    created: list[str] = []
    for group, reply in zip(stream.groups, replies, strict=False):
        if isinstance(reply, Exception):
            if isinstance(reply, ResponseError) and "BUSYGROUP" in str(reply):
                continue
            raise reply
        created.append(group.name)

    pruned: list[str] = []
    if stream.prune:
        info = replies[len(stream.groups)]
        if isinstance(info, Exception):
            if not _is_missing_key(info):
                raise info
            info = []
        declared = {g.name for g in stream.groups}
        extra = [_text(g["name"]) for g in info if _text(g["name"]) not in declared]
        if extra:
            pipe = r.pipeline(transaction=False)
            for name in extra:
                pipe.xgroup_destroy(stream.name, name)
            for name, reply in zip(extra, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, Exception):
                    log.warning("could not prune group %s of stream %s: %s", name, stream.name, reply)
                elif reply:
                    pruned.append(name)
    if created or pruned:
        log.info("stream %s: created groups %s, pruned %s", stream.name, created, pruned)
    return GroupsEnsured(created=tuple(created), pruned=tuple(pruned))


# ---------------------------------------------------------------------------------------------
# Measurement.


@dataclass(frozen=True)
class Target:
    """A stream to measure, and which of its groups (None: every group it has)."""

    stream: str
    groups: tuple[str, ...] | None = None

    @classmethod
    def of(cls, stream: Stream) -> Target:
        """The groups declared in a stream spec."""
        return cls(stream.name, tuple(g.name for g in stream.groups))


@dataclass(frozen=True)
class GroupMeasurement:
    """One consumer group at one instant; satisfies ``redis_messaging.autoscale.decide.GroupSample``."""

    stream: str
    group: str
    at: float
    """When measured, by the node's clock: monotonic unless told otherwise, as decisions need."""
    lag: int | None = None
    """Entries not delivered to the group yet; None when unknown (never read as 0)."""
    lag_estimated: bool = False
    """Redis reported a null lag and this one was counted (at most the estimate cap)."""
    lag_capped: bool = False
    """The estimate reached the cap: the true lag is at least ``lag``, a lower bound that the autoscaler
    never scales down on."""
    pending: int | None = None
    entries_read: int | None = None
    consumers: int | None = None
    last_delivered_id: str | None = None
    error: str | None = None
    """Why nothing could be measured, e.g. ``"stream orders does not exist"``."""

    @property
    def backlog(self) -> int | None:
        if self.lag is None or self.pending is None:
            return None
        return self.lag + self.pending


@dataclass(frozen=True)
class StreamMeasurement:
    stream: str
    at: float
    length: int | None
    groups: tuple[GroupMeasurement, ...]
    error: str | None = None

    def group(self, name: str) -> GroupMeasurement | None:
        return next((g for g in self.groups if g.group == name), None)


def _targets(targets: Iterable[Target | Stream | str]) -> list[Target]:
    merged: dict[str, Target] = {}
    for t in targets:
        target = Target.of(t) if isinstance(t, Stream) else Target(t) if isinstance(t, str) else t
        seen = merged.get(target.stream)
        if seen is None:
            merged[target.stream] = target
        elif seen.groups is not None:
            more = None if target.groups is None else tuple(dict.fromkeys(seen.groups + target.groups))
            merged[target.stream] = Target(target.stream, more)
    return list(merged.values())


@dataclass(frozen=True)
class QueueMeasurement:
    """A list queue at one instant: its length is its backlog (it has no pending entries)."""

    queue: str
    at: float
    length: int | None = None
    error: str | None = None

    # what redis_messaging.autoscale.decide.GroupSample asks for
    @property
    def lag(self) -> int | None:
        return self.length

    @property
    def pending(self) -> int | None:
        return None if self.length is None else 0

    lag_estimated: bool = False
    lag_capped: bool = False
    entries_read: int | None = None
    consumers: int | None = None  # a list has none


@dataclass(frozen=True)
class ChannelMeasurement:
    channel: str
    sharded: bool
    at: float
    subscribers: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class NodeMeasurement:
    streams: list[StreamMeasurement]
    queues: list[QueueMeasurement]
    channels: list[ChannelMeasurement]


def collect(
    client: Redis | StreamsNode,
    targets: Iterable[Target | Stream | str],
    *,
    estimate_cap: int | None = None,
) -> list[StreamMeasurement]:
    """Measure every group of every target stream of one node in one pipelined round trip.

    A second round trip happens only when some lag is null (and on Redis < 7.0, where every lag
    is estimated). The first call on a client also asks for the server version, in the same
    pipeline. Missing streams and groups, and an unreachable node, come back as measurements
    with ``error`` set; this function does not raise for them.
    """
    return collect_node(client, targets, estimate_cap=estimate_cap).streams


def collect_node(
    client: Redis | StreamsNode,
    targets: Iterable[Target | Stream | str],
    *,
    queues: Sequence[str] = (),
    channels: Sequence[tuple[str, bool]] = (),
    estimate_cap: int | None = None,
) -> NodeMeasurement:
    """:func:`collect`, plus the length of list queues (``LLEN``) and the subscriber count of Pub/Sub
    channels (``PUBSUB NUMSUB``, ``PUBSUB SHARDNUMSUB`` for shard channels), in the same round trip.

    ``channels`` are (name, sharded) pairs. Subscribers are counted on this node only.
    """
    node = node_of(client)
    cap = estimate_cap or node.estimate_cap
    wanted = _targets(targets)
    plain = [c for c, sharded in channels if not sharded]
    shard_channels = [c for c, sharded in channels if sharded]
    if not wanted and not queues and not channels:
        return NodeMeasurement([], [], [])

    pipe = node.client.pipeline(transaction=False)
    ask_version = node.version is None
    if ask_version:
        pipe.info("server")
    for t in wanted:
        pipe.xlen(t.stream)
        pipe.xinfo_groups(t.stream)
    for q in queues:
        pipe.llen(q)
    if plain:
        pipe.execute_command("PUBSUB", "NUMSUB", *plain)  # type: ignore[no-untyped-call]
    if shard_channels:
        pipe.execute_command("PUBSUB", "SHARDNUMSUB", *shard_channels)  # type: ignore[no-untyped-call]
    try:
        replies = pipe.execute(raise_on_error=False)
    except RedisError as exc:
        at = node.clock()
        why = f"redis unreachable: {exc}"
        return NodeMeasurement([_failed(t, at, why) for t in wanted],
                               [QueueMeasurement(q, at, error=why) for q in queues],
                               [ChannelMeasurement(c, s, at, error=why) for c, s in channels])
    at = node.clock()
    if ask_version:
        info = replies.pop(0)
        if not isinstance(info, Exception):
            node.learn_version(info)
    extra = replies[2 * len(wanted):]
    del replies[2 * len(wanted):]
    measured_queues = []
    for q, reply in zip(queues, extra[:len(queues)], strict=True):
        if isinstance(reply, Exception):
            measured_queues.append(QueueMeasurement(q, at, error=f"queue {q}: {reply}"))
        else:
            measured_queues.append(QueueMeasurement(q, at, length=int(reply)))
    extra = extra[len(queues):]
    measured_channels = []
    for names_, sharded in ((plain, False), (shard_channels, True)):
        if not names_:
            continue
        reply = extra.pop(0)
        counts = _numsub(reply) if not isinstance(reply, Exception) else {}
        for c in names_:
            if isinstance(reply, Exception):
                measured_channels.append(ChannelMeasurement(c, sharded, at, error=f"channel {c}: {reply}"))
            else:
                measured_channels.append(ChannelMeasurement(c, sharded, at, subscribers=counts.get(c, 0)))
    return NodeMeasurement(_measure_streams(node, wanted, replies, at, cap), measured_queues, measured_channels)


def _numsub(reply: Any) -> dict[str, int]:
    if isinstance(reply, dict):
        return {_text(k): int(v) for k, v in reply.items()}
    items = list(reply or [])
    out: dict[str, int] = {}
    for entry in items:
        if isinstance(entry, (list, tuple)) and len(entry) == 2:
            out[_text(entry[0])] = int(entry[1])
    if not out:
        out = {_text(items[i]): int(items[i + 1]) for i in range(0, len(items) - 1, 2)}
    return out


def _measure_streams(node: StreamsNode, wanted: list[Target], replies: list[Any], at: float,
                     cap: int) -> list[StreamMeasurement]:

    out: list[StreamMeasurement] = []
    to_estimate: list[tuple[int, int]] = []  # (stream index, group index)
    for i, t in enumerate(wanted):
        length, groups_info = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups_info, Exception):
            message = (
                f"stream {t.stream} does not exist" if _is_missing_key(groups_info)
                else f"stream {t.stream}: {groups_info}"
            )
            out.append(_failed(t, at, message))
            continue
        by_name = {_text(g["name"]): g for g in groups_info}
        names = t.groups if t.groups is not None else tuple(by_name)
        measured: list[GroupMeasurement] = []
        for name in names:
            g = by_name.get(name)
            if g is None:
                measured.append(GroupMeasurement(
                    t.stream, name, at, error=f"group {name} of stream {t.stream} does not exist"
                ))
                continue
            lag = _opt_int(g.get("lag"))
            if lag is None:
                to_estimate.append((i, len(measured)))
            measured.append(GroupMeasurement(
                stream=t.stream,
                group=name,
                at=at,
                lag=lag,
                pending=_opt_int(g.get("pending")),
                entries_read=_opt_int(g.get("entries-read")),
                consumers=_opt_int(g.get("consumers")),
                last_delivered_id=_text(g.get("last-delivered-id", "0-0")),
            ))
        out.append(StreamMeasurement(
            stream=t.stream,
            at=at,
            length=None if isinstance(length, Exception) else int(length),
            groups=tuple(measured),
        ))

    if to_estimate:
        out = _estimate(node, out, to_estimate, cap)
    return out


def _failed(target: Target, at: float, message: str) -> StreamMeasurement:
    groups = tuple(GroupMeasurement(target.stream, g, at, error=message) for g in target.groups or ())
    return StreamMeasurement(target.stream, at, None, groups, error=message)


def _estimate(
    node: StreamsNode, out: list[StreamMeasurement], where: Sequence[tuple[int, int]], cap: int
) -> list[StreamMeasurement]:
    """Count, server-side and bounded, the entries after each null-lag group's last-delivered-id: in
    pipelined rounds of one script call per group, each counting at most SCRIPT_ENTRIES entries from
    where the previous one stopped, until the end of the stream or ``cap`` entries."""
    counted: dict[tuple[int, int], int] = {}
    cursor: dict[tuple[int, int], str] = {}
    for i, j in where:
        counted[(i, j)] = 0
        cursor[(i, j)] = out[i].groups[j].last_delivered_id or "0-0"
    open_ = list(where)
    while open_:
        pipe = node.client.pipeline(transaction=False)
        asked = []
        for at in open_:
            step = min(SCRIPT_ENTRIES, cap - counted[at])
            asked.append((at, step))
            pipe.eval(_COUNT_AFTER, 1, out[at[0]].stream, next_id(cursor[at]), str(step))
        try:
            replies = pipe.execute(raise_on_error=False)
        except RedisError as exc:
            log.warning("could not estimate null lags: %s", exc)
            for at in open_:
                counted.pop(at, None)
            break
        open_ = []
        for (at, step), reply in zip(asked, replies, strict=True):
            if isinstance(reply, Exception):
                log.warning("could not estimate the lag of %s/%s: %s", out[at[0]].stream,
                            out[at[0]].groups[at[1]].group, reply)
                counted.pop(at)
                continue
            n = int(reply[0])
            counted[at] += n
            if n == step and counted[at] < cap:
                cursor[at] = _text(reply[1])
                open_.append(at)
    groups = [list(s.groups) for s in out]
    for (i, j), n in counted.items():
        g = groups[i][j]
        groups[i][j] = GroupMeasurement(
            stream=g.stream, group=g.group, at=g.at, lag=n, lag_estimated=True, lag_capped=n >= cap,
            pending=g.pending, entries_read=g.entries_read, consumers=g.consumers,
            last_delivered_id=g.last_delivered_id,
        )
    return [
        StreamMeasurement(s.stream, s.at, s.length, tuple(gs), s.error)
        for s, gs in zip(out, groups, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Retention.


def _declared_needs(stream: Stream) -> list[str]:
    """(group, first id it will need) for the declared groups that start at an id: one that does not
    exist yet needs what follows that id (``$`` needs nothing that is there now)."""
    out: list[str] = []
    for group in stream.groups:
        if group.start_id != "$":
            out += [group.name, next_id(group.start_id)]
    return out


def safe_boundary(client: Redis | StreamsNode, stream: Stream) -> str | None:
    """The oldest id that some group still needs, or None when no group needs anything (what the
    retention script reads before it trims, in the same script).

    A group needs every entry after its last-delivered-id and every entry it has pending. A group
    that is declared but not created yet with an explicit start id needs what follows that id.
    """
    r = _client(client)
    found = r.eval(_RETAIN, 1, stream.name, "", "", "0", "1", "", "boundary", *_declared_needs(stream))
    return None if found is None else _text(found)


def trim(
    client: Redis | StreamsNode,
    stream: Stream,
    *,
    now_ms: int | None = None,
    approximate: bool = False,
    max_scan: int = DEFAULT_TRIM_SCAN,
) -> int:
    """Apply the stream's retention policy; return how many entries were removed.

    ``maxLen`` keeps the newest entries, ``minAge`` the entries younger than the age (by the
    server's clock unless ``now_ms`` is given; stream ids start with the time they were added in
    milliseconds); with both, an entry goes when either says so. Unless ``retention.unsafe``, the
    trim stops at the oldest entry that a group has not been delivered or still has pending
    (:func:`safe_boundary`), read in the same script as the trim, so no group created or moved back
    meanwhile loses an entry. Each script call removes at most SCRIPT_ENTRIES entries; a call of
    this function removes at most ``max_scan``, and the next call continues.
    """
    policy = stream.retention
    if policy.max_len is None and policy.min_age is None:
        return 0
    r = _client(client)
    age_boundary = ""
    if policy.min_age is not None:
        if now_ms is None:
            seconds, micros = r.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        age_boundary = format_id((max(0, now_ms - duration_ms(policy.min_age)), 0))
    max_len = "" if policy.max_len is None else str(policy.max_len)
    declared = [] if policy.unsafe else _declared_needs(stream)
    removed = 0
    while removed < max_scan:
        step = min(SCRIPT_ENTRIES, max_scan - removed)
        went = int(r.eval(_RETAIN, 1, stream.name, max_len, age_boundary, str(step),
                          "0" if policy.unsafe else "1", "~" if approximate else "", "trim", *declared) or 0)
        removed += went
        if went < step:
            break
    if removed and not policy.unsafe:
        log.debug("stream %s: %d entries trimmed", stream.name, removed)
    return removed


# ---------------------------------------------------------------------------------------------
# Consumers whose process is gone.


@dataclass(frozen=True)
class Reclaimed:
    claimed: int
    """Pending entries moved from dead consumers to the claimer."""
    deleted: int
    """Dead consumers deleted (only ever with nothing pending)."""
    orphaned: int = 0
    """Entries still pending with dead consumers after this call (none claimable, or the bound hit)."""


def pending_by_consumer(client: Redis | StreamsNode, stream: str, group: str) -> dict[str, int]:
    """Pending entries of every consumer of a group, zeros included (e.g. for pod-deletion-cost).

    A missing stream or group gives an empty mapping.
    """
    r = _client(client)
    try:
        consumers = r.xinfo_consumers(stream, group)
    except ResponseError as exc:
        if _is_missing_key(exc) or _is_missing_group(exc):
            return {}
        raise
    return {_text(c["name"]): int(c["pending"]) for c in consumers}


def reclaim_orphans(
    client: Redis | StreamsNode,
    stream: str,
    group: str,
    live_consumers: set[str],
    claimer: str | None,
    *,
    batch: int = SCRIPT_ENTRIES,
    max_entries: int = 100_000,
    min_idle_ms: int = 0,
) -> Reclaimed:
    """Give the pending entries of dead consumers to ``claimer``; delete dead consumers left empty.

    A consumer is dead when its name is not in ``live_consumers`` (consumer name = pod name, see
    :mod:`redis_messaging.consumer`). Its pending entries idle at least ``min_idle_ms`` are moved by a
    script that lists them (``XPENDING ... consumer``) and claims them (``XCLAIM ... JUSTID RETRYCOUNT``)
    in batches of at most ``batch`` (and SCRIPT_ENTRIES), at most ``max_entries`` per call; no entry
    body crosses the network. Each hand-over raises the entry's delivery count by one, as a delivery
    does: an entry that kills every consumer it reaches has a count that grows, so ``maxDeliveries``
    sees it (``XCLAIM ... JUSTID`` alone would leave the count as it was, for ever). The claimer finds
    the entries when it re-reads its own pending entries. With ``claimer`` None (no live consumer)
    nothing is claimed. A dead consumer is deleted only when it has nothing pending, checked and
    deleted in one Lua script.
    """
    if batch < 1 or max_entries < 0:
        raise ValueError("batch must be at least 1 and max_entries not negative")
    batch = min(batch, SCRIPT_ENTRIES)
    pending = pending_by_consumer(client, stream, group)
    dead = {name: n for name, n in pending.items() if name not in live_consumers}
    if not dead:
        return Reclaimed(0, 0)
    r = _client(client)
    claimed = 0
    if claimer is not None:
        budget = max_entries
        for name, count in dead.items():
            if count == 0:
                continue
            cursor = "-"
            rounds = -(-min(count, budget) // batch) + 1  # bounded: one more to see the end
            for _ in range(rounds):
                if budget <= 0:
                    break
                step = min(batch, budget)
                looked, moved, last = r.eval(_CLAIM, 1, stream, group, name, claimer, str(min_idle_ms),
                                             str(step), cursor)
                budget -= int(looked)
                claimed += int(moved)
                if int(looked) < step:
                    break
                cursor = next_id(_text(last))
        if claimed:
            log.info("stream %s group %s: claimed %d pending entries of dead consumers for %s",
                     stream, group, claimed, claimer)

    pipe = r.pipeline(transaction=False)
    names = list(dead)
    for name in names:
        pipe.eval(_DELETE_IF_EMPTY, 1, stream, group, name)
    deleted = 0
    for name, reply in zip(names, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(reply, Exception):
            log.warning("could not delete consumer %s of %s/%s: %s", name, stream, group, reply)
        elif int(reply) == 1:
            deleted += 1
    left = pending_by_consumer(client, stream, group)
    orphaned = sum(n for name, n in left.items() if name not in live_consumers)
    return Reclaimed(claimed=claimed, deleted=deleted, orphaned=orphaned)


# ---------------------------------------------------------------------------------------------
# Entries no consumer manages to process.


@dataclass(frozen=True)
class DeadLettered:
    moved: int
    """Entries copied to the dead-letter stream and acknowledged in the group."""
    looked: int
    """Pending entries looked at."""
    resume: str | None = None
    """Where the next call goes on (the bound was hit), or None: the end of the pending list was reached."""


def dead_letter(
    client: Redis | StreamsNode,
    stream: str,
    group: str,
    dead_letter_stream: str,
    max_deliveries: int,
    *,
    min_idle_ms: int = 0,
    start: str = "-",
    max_entries: int = 10 * SCRIPT_ENTRIES,
) -> DeadLettered:
    """Move the pending entries of ``group`` delivered more than ``max_deliveries`` times (XPENDING's
    delivery count) and idle at least ``min_idle_ms`` to ``dead_letter_stream``: each is copied there
    (:data:`DEAD_LETTER_FIELDS`, then its own fields) and acknowledged in the group in the same script.

    The pending list is read from ``start`` on, SCRIPT_ENTRIES entries per script, at most
    ``max_entries`` per call; ``resume`` says where the next call goes on. In cluster mode both keys
    must be on the same slot (a script touches one slot): the caller checks it. A missing stream or
    group moves nothing.
    """
    if max_deliveries < 1 or max_entries < 1:
        raise ValueError("max_deliveries and max_entries must be at least 1")
    r = _client(client)
    moved = looked = 0
    cursor = start
    for _ in range(-(-max_entries // SCRIPT_ENTRIES)):
        step = min(SCRIPT_ENTRIES, max_entries - looked)
        try:
            n, m, last = r.eval(_DEAD_LETTER, 2, stream, dead_letter_stream, group, str(max_deliveries),
                                str(min_idle_ms), str(step), cursor, str(DEAD_LETTER_MAX_FIELDS))
        except ResponseError as exc:
            if _is_missing_key(exc) or _is_missing_group(exc):
                return DeadLettered(moved, looked)
            raise
        looked += int(n)
        moved += int(m)
        if int(n) < step:
            cursor = ""
            break
        cursor = next_id(_text(last))
        if looked >= max_entries:
            break
    if moved:
        log.info("stream %s group %s: %d entries delivered more than %d times moved to %s", stream, group,
                 moved, max_deliveries, dead_letter_stream)
    return DeadLettered(moved, looked, cursor or None)

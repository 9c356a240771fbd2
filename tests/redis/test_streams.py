"""Declared streams against a real redis-server: groups, lag, retention, reclaim, round trips."""

from __future__ import annotations

from typing import Any

import pytest
from _server import RedisServer, counting_client, free_port, server_fixtures
from redis.backoff import NoBackoff
from redis.client import Redis
from redis.retry import Retry

from redis_messaging.api.models import Group, Stream, StreamRetention
from redis_messaging.redis.streams import (
    StreamsNode,
    Target,
    collect,
    ensure_groups,
    node_of,
    parse_id,
    pending_by_consumer,
    reclaim_orphans,
    safe_boundary,
    trim,
)

pytestmark = pytest.mark.redis


server, r = server_fixtures("redis-streams")


def add(r: Redis, key: str, n: int, start_ms: int = 1) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, {"n": str(i)}, id=f"{start_ms + i}-0")
    return [str(x) for x in pipe.execute()]


def read(r: Redis, key: str, group: str, consumer: str, count: int) -> list[str]:
    reply: Any = r.xreadgroup(group, consumer, {key: ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


def first_id(r: Redis, key: str) -> str:
    reply: Any = r.xrange(key, count=1)
    return str(reply[0][0])


def stream(name: str, *groups: str, **kw: object) -> Stream:
    declared = [{"name": g, "startId": "0"} for g in groups]
    return Stream.model_validate({"name": name, "groups": declared, **kw})


# -- groups ---------------------------------------------------------------------------------------


def test_groups_are_created_once_and_the_stream_with_them(r: Redis) -> None:
    spec = Stream(name="orders", groups=[Group(name="billing", start_id="0"), Group(name="audit")])
    first = ensure_groups(r, spec)
    assert set(first.created) == {"billing", "audit"}
    assert r.exists("orders") == 1  # MKSTREAM
    second = ensure_groups(r, spec)
    assert second.created == ()
    assert {g["name"] for g in r.xinfo_groups("orders")} == {"billing", "audit"}


def test_undeclared_groups_are_pruned_only_when_asked(r: Redis) -> None:
    ensure_groups(r, stream("orders", "billing", "old"))
    kept = ensure_groups(r, stream("orders", "billing"))
    assert kept.pruned == ()
    pruned = ensure_groups(r, stream("orders", "billing", prune=True))
    assert pruned.pruned == ("old",)
    assert [g["name"] for g in r.xinfo_groups("orders")] == ["billing"]


# -- measurement ----------------------------------------------------------------------------------


def test_lag_and_pending_are_read(r: Redis) -> None:
    add(r, "orders", 10)
    ensure_groups(r, stream("orders", "billing"))
    got = read(r, "orders", "billing", "pod-a", 4)
    r.xack("orders", "billing", got[0])

    [m] = collect(r, [Target("orders", ("billing",))])
    g = m.group("billing")
    assert g is not None
    assert m.length == 10
    assert (g.lag, g.pending, g.entries_read, g.consumers) == (6, 3, 4, 1)
    assert not g.lag_estimated
    assert g.error is None
    assert g.backlog == 9


def test_null_lag_after_a_deleted_entry_is_estimated_never_zero(r: Redis) -> None:
    ids = add(r, "orders", 6)
    ensure_groups(r, stream("orders", "billing"))
    read(r, "orders", "billing", "pod-a", 2)
    r.xdel("orders", ids[4])  # after the last-delivered-id: Redis can no longer tell the lag
    assert r.xinfo_groups("orders")[0]["lag"] is None

    [m] = collect(r, ["orders"])
    g = m.group("billing")
    assert g is not None
    assert g.lag == 3  # entries 3, 4 and 6 are still to be delivered
    assert g.lag_estimated
    assert not g.lag_capped


def test_null_lag_of_a_group_created_at_an_arbitrary_id_is_estimated(r: Redis) -> None:
    ids = add(r, "orders", 50)
    r.xgroup_create("orders", "late", id=ids[19])
    assert r.xinfo_groups("orders")[0]["lag"] is None

    [m] = collect(StreamsNode(r, estimate_cap=10), ["orders"])
    g = m.group("late")
    assert g is not None
    assert g.lag == 10  # 30 entries follow, the count stops at the cap: at least 10, never 0
    assert g.lag_estimated
    assert g.lag_capped

    [m] = collect(r, ["orders"])
    g = m.group("late")
    assert g is not None
    assert (g.lag, g.lag_capped) == (30, False)


def test_missing_stream_and_group_are_reported_not_raised(r: Redis) -> None:
    ensure_groups(r, stream("orders", "billing"))
    measured = collect(r, [Target("orders", ("billing", "ghost")), Target("nope", ("billing",))])
    by_name = {m.stream: m for m in measured}
    ghost = by_name["orders"].group("ghost")
    assert ghost is not None
    assert ghost.error == "group ghost of stream orders does not exist"
    assert ghost.lag is None
    assert by_name["nope"].error == "stream nope does not exist"
    missing = by_name["nope"].group("billing")
    assert missing is not None
    assert missing.error == "stream nope does not exist"


def test_an_unreachable_node_is_reported_not_raised(server: RedisServer) -> None:
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    [m] = collect(dead, [Target("orders", ("billing",))])
    assert m.error is not None
    assert m.error.startswith("redis unreachable")


def test_one_pipelined_round_trip_per_node_for_many_groups(server: RedisServer, r: Redis) -> None:
    streams = [stream(f"s{i}", *(f"g{j}" for j in range(10))) for i in range(30)]
    for s in streams:
        ensure_groups(r, s)
        add(r, s.name, 5)
    client, trips = counting_client(server)
    client.ping()  # connection handshake out of the way

    trips.count = 0
    first = collect(client, streams)
    assert trips.count == 1  # the version is asked once, inside the same pipeline
    assert node_of(client).version is not None
    assert node_of(client).reports_lag

    trips.count = 0
    for _ in range(3):
        again = collect(client, streams)
    assert trips.count == 3
    assert sum(len(m.groups) for m in again) == 300
    assert all(g.lag == 5 and g.pending == 0 for m in first for g in m.groups)

    # A null lag costs one more round trip for all such groups of the node together.
    r.xdel("s3", "5-0")
    r.xdel("s7", "5-0")
    trips.count = 0
    measured = collect(client, streams)
    assert trips.count == 2
    estimated = [g for m in measured for g in m.groups if g.lag_estimated]
    assert len(estimated) == 20
    assert all(g.lag == 4 for g in estimated)


# -- retention ------------------------------------------------------------------------------------


def _prepare_retention(r: Redis) -> list[str]:
    """100 entries; group a delivered 60 and acked 40 of them; group b delivered 80, acked all."""
    ids = add(r, "orders", 100)
    ensure_groups(r, stream("orders", "a", "b"))
    got = read(r, "orders", "a", "pod-a", 60)
    r.xack("orders", "a", *got[:40])
    got = read(r, "orders", "b", "pod-b", 80)
    r.xack("orders", "b", *got)
    return ids


def test_safe_retention_never_removes_an_undelivered_or_pending_entry(r: Redis) -> None:
    ids = _prepare_retention(r)
    spec = stream("orders", "a", "b", retention=StreamRetention(max_len=10))
    assert safe_boundary(r, spec) == ids[40]  # the oldest entry group a still has pending
    assert trim(r, spec) == 40
    assert first_id(r, "orders") == ids[40]
    assert r.xpending("orders", "a")["pending"] == 20
    assert trim(r, spec) == 0  # nothing more until group a acknowledges

    # group a acknowledges everything: now only the undelivered entries of group a (61..) matter
    pending = [row["message_id"] for row in r.xpending_range("orders", "a", "-", "+", 100)]
    r.xack("orders", "a", *pending)
    assert trim(r, spec) == 20
    assert first_id(r, "orders") == ids[60]
    assert r.xlen("orders") == 40


def test_safe_retention_keeps_entries_a_declared_group_will_start_from(r: Redis) -> None:
    add(r, "orders", 20)
    spec = Stream.model_validate(
        {"name": "orders", "groups": [{"name": "new", "startId": "0"}], "retention": {"maxLen": 5}}
    )
    assert trim(r, spec) == 0
    assert r.xlen("orders") == 20


def test_unsafe_retention_trims_by_policy(r: Redis) -> None:
    _prepare_retention(r)
    spec = stream("orders", "a", "b", retention=StreamRetention(max_len=10, unsafe=True))
    assert trim(r, spec) == 90
    assert r.xlen("orders") == 10


def test_min_age_retention_is_safe_too(r: Redis) -> None:
    ids = _prepare_retention(r)  # ids are 1-0 .. 100-0: "added" at 1 ms .. 100 ms
    policy = {"minAge": "1s"}
    safe = Stream.model_validate(
        {"name": "orders", "groups": [{"name": "a"}, {"name": "b"}], "retention": policy}
    )
    assert trim(r, safe, now_ms=1050) == 40  # the policy says < 50 ms, group a needs 41..
    assert first_id(r, "orders") == ids[40]
    unsafe = safe.model_copy(update={"retention": StreamRetention(min_age="1s", unsafe=True)})
    assert trim(r, unsafe, now_ms=1070) == 29  # everything older than 70 ms
    assert first_id(r, "orders") == "70-0"


def test_with_both_policies_an_entry_goes_when_either_says_so(r: Redis) -> None:
    add(r, "orders", 100)  # ids 1-0 .. 100-0
    spec = stream("orders", retention=StreamRetention(max_len=50, min_age="1s"))
    assert trim(r, spec, now_ms=1030) == 50  # maxLen is the stricter: keep 51..100
    assert trim(r, spec, now_ms=1080) == 29  # now minAge is: keep 80..100
    assert first_id(r, "orders") == "80-0"


def test_a_safe_max_len_trim_is_bounded_per_call_and_resumes(r: Redis) -> None:
    add(r, "orders", 100)
    spec = stream("orders", retention=StreamRetention(max_len=10))
    assert [trim(r, spec, max_scan=30) for _ in range(4)] == [30, 30, 30, 0]
    assert r.xlen("orders") == 10


class Interleaved(Redis):
    """A client after whose first command another client's ``action`` runs, once: what a producer or
    an administrator could do between two round trips of the operator's."""

    def __init__(self, action: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.action = action
        self.calls = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.action()
        return super().execute_command(*args, **options)


@pytest.mark.parametrize("move", ["created", "moved back"])
def test_a_group_created_or_moved_back_during_a_trim_loses_nothing(server: RedisServer, r: Redis,
                                                                  move: str) -> None:
    """Between two commands of the operator's trims, a group is created at an old id, or moved back
    to it. Whatever of the stream is still there from that id on must stay: what the groups need is
    read in the same script that trims."""
    ids = add(r, "orders", 300)
    ensure_groups(r, stream("orders", "a"))
    r.xack("orders", "a", *read(r, "orders", "a", "pod-a", 250))
    there: list[str] = []

    def action() -> None:
        there.append(first_id(r, "orders"))
        if move == "created":
            r.xgroup_create("orders", "late", id=ids[99])
        else:
            r.xgroup_setid("orders", "a", id=ids[99])

    ours = Interleaved(action, host=server.host, port=server.port, decode_responses=True)
    spec = stream("orders", "a", retention=StreamRetention(max_len=10))
    try:
        removed = [trim(ours, spec), trim(ours, spec)]
    finally:
        ours.close()
    assert there, "the action never ran"
    kept_from = max(parse_id(there[0]), parse_id(ids[100]))
    assert parse_id(first_id(r, "orders")) <= kept_from, (
        f"trimmed {removed}: entries from {ids[100]} were still there when the group was {move} at {ids[99]}")


def test_no_policy_trims_nothing(r: Redis) -> None:
    add(r, "orders", 10)
    assert trim(r, stream("orders")) == 0
    assert r.xlen("orders") == 10


# -- reclaim --------------------------------------------------------------------------------------


def _prepare_reclaim(r: Redis) -> None:
    add(r, "orders", 20)
    ensure_groups(r, stream("orders", "g"))
    read(r, "orders", "g", "pod-dead", 7)
    got = read(r, "orders", "g", "pod-quiet", 2)
    r.xack("orders", "g", *got)  # a dead consumer with nothing pending
    read(r, "orders", "g", "pod-live", 2)


def test_reclaim_moves_pending_entries_to_a_live_consumer_then_deletes_the_dead(r: Redis) -> None:
    _prepare_reclaim(r)
    assert pending_by_consumer(r, "orders", "g") == {"pod-dead": 7, "pod-quiet": 0, "pod-live": 2}

    result = reclaim_orphans(r, "orders", "g", {"pod-live"}, "pod-live", batch=3)
    assert (result.claimed, result.deleted, result.orphaned) == (7, 2, 0)
    assert pending_by_consumer(r, "orders", "g") == {"pod-live": 9}
    assert r.xpending("orders", "g")["pending"] == 9  # nothing was dropped


def test_a_dead_consumer_with_pending_entries_is_kept_when_no_one_can_claim(r: Redis) -> None:
    _prepare_reclaim(r)
    result = reclaim_orphans(r, "orders", "g", set(), None)
    assert (result.claimed, result.deleted, result.orphaned) == (0, 1, 9)  # only pod-quiet goes
    assert pending_by_consumer(r, "orders", "g") == {"pod-dead": 7, "pod-live": 2}


def test_reclaim_is_bounded_and_resumes(r: Redis) -> None:
    _prepare_reclaim(r)
    first = reclaim_orphans(r, "orders", "g", {"pod-live"}, "pod-live", batch=2, max_entries=4)
    assert (first.claimed, first.orphaned) == (4, 3)
    assert pending_by_consumer(r, "orders", "g")["pod-dead"] == 3
    second = reclaim_orphans(r, "orders", "g", {"pod-live"}, "pod-live", batch=2, max_entries=4)
    assert (second.claimed, second.orphaned) == (3, 0)
    assert pending_by_consumer(r, "orders", "g") == {"pod-live": 9}


def pending_rows(r: Redis, key: str, group: str) -> dict[str, tuple[str, int]]:
    """Every pending entry: id -> (consumer, delivery count)."""
    rows: Any = r.xpending_range(key, group, "-", "+", 1000)
    return {str(row["message_id"]): (str(row["consumer"]), int(row["times_delivered"])) for row in rows}


def test_a_hand_over_counts_as_a_delivery(r: Redis) -> None:
    _prepare_reclaim(r)
    held = {i: n for i, (owner, n) in pending_rows(r, "orders", "g").items() if owner == "pod-dead"}
    assert len(held) == 7
    assert set(held.values()) == {1}
    result = reclaim_orphans(r, "orders", "g", {"pod-live"}, "pod-live", batch=3)
    assert result.claimed == 7
    after = pending_rows(r, "orders", "g")
    # Without the count, an entry that kills every consumer it reaches would go round for ever unseen.
    assert {i: after[i] for i in held} == {i: ("pod-live", 2) for i in held}


def test_only_entries_idle_long_enough_are_handed_over_and_none_is_looked_at_twice(r: Redis) -> None:
    _prepare_reclaim(r)
    result = reclaim_orphans(r, "orders", "g", {"pod-live"}, "pod-live", batch=2, min_idle_ms=60_000)
    assert (result.claimed, result.orphaned) == (0, 7)
    assert {owner for owner, _ in pending_rows(r, "orders", "g").values()} == {"pod-dead", "pod-live"}


def test_reclaim_of_a_missing_group_does_nothing(r: Redis) -> None:
    result = reclaim_orphans(r, "nope", "g", set(), "x")
    assert (result.claimed, result.deleted) == (0, 0)

"""Dead letters against a real redis-server: an entry that no consumer manages to process ends in the
dead-letter stream, copied and acknowledged together, and nothing else is lost or moved."""

from __future__ import annotations

from typing import Any, cast

import pytest
from _server import RedisServer, server_fixtures
from redis.client import Redis

from redis_messaging.api import models
from redis_messaging.autoscale import loop
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube as KubeClient
from redis_messaging.redis.nodes import Node, Placement, Pools
from redis_messaging.redis.streams import SCRIPT_ENTRIES, StreamsNode, dead_letter, reclaim_orphans

pytestmark = pytest.mark.redis

DLQ = "{orders}:dead-letters"


server, r = server_fixtures("redis-dead-letters")


def fill(r: Redis, n: int) -> list[str]:
    ids = [str(r.xadd("orders", {"n": str(i), "body": f"payload {i}"})) for i in range(n)]
    r.xgroup_create("orders", "g", id="0")
    return ids


def ids_of(reply: Any) -> list[str]:
    return [entry_id for _, entries in reply or [] for entry_id, _ in entries]


def pending(r: Redis) -> dict[str, tuple[str, int]]:
    rows: Any = r.xpending_range("orders", "g", "-", "+", 10_000)
    return {str(row["message_id"]): (str(row["consumer"]), int(row["times_delivered"])) for row in rows}


def letters(r: Redis) -> list[dict[str, str]]:
    return [dict(fields) for _, fields in r.xrange(DLQ)]


def test_an_entry_delivered_too_often_is_copied_with_what_it_was_and_acknowledged(r: Redis) -> None:
    ids = fill(r, 5)
    assert ids_of(r.xreadgroup("g", "c1", {"orders": ">"}, count=5)) == ids
    for _ in range(3):  # re-reads of c1's own pending entries count as deliveries: 4 in all
        r.xreadgroup("g", "c1", {"orders": "0"}, count=1)
    assert pending(r)[ids[0]] == ("c1", 4)

    moved = dead_letter(r, "orders", "g", DLQ, 3)
    assert (moved.moved, moved.looked, moved.resume) == (1, 5, None)
    assert letters(r) == [{
        "dead-letter.id": ids[0], "dead-letter.stream": "orders", "dead-letter.group": "g",
        "dead-letter.deliveries": "4", "dead-letter.consumer": "c1", "n": "0", "body": "payload 0",
    }]
    assert set(pending(r)) == set(ids[1:])  # acknowledged; the others stay with c1 as they were
    assert r.xlen("orders") == 5  # a copy: the entry itself stays in the stream

    again = dead_letter(r, "orders", "g", DLQ, 3)
    assert again.moved == 0
    assert len(letters(r)) == 1  # never copied twice


def test_an_entry_at_max_deliveries_or_not_idle_long_enough_stays(r: Redis) -> None:
    ids = fill(r, 2)
    r.xreadgroup("g", "c1", {"orders": ">"}, count=2)
    r.xreadgroup("g", "c1", {"orders": "0"}, count=1)  # ids[0]: 2 deliveries, ids[1]: 1
    assert dead_letter(r, "orders", "g", DLQ, 2).moved == 0  # not *more* than 2
    assert dead_letter(r, "orders", "g", DLQ, 1, min_idle_ms=60_000).moved == 0  # busy for less than a minute
    assert dead_letter(r, "orders", "g", DLQ, 1).moved == 1
    assert set(pending(r)) == {ids[1]}


def test_an_entry_deleted_while_pending_is_dead_lettered_without_its_fields(r: Redis) -> None:
    ids = fill(r, 1)
    r.xreadgroup("g", "c1", {"orders": ">"})
    r.xreadgroup("g", "c1", {"orders": "0"})
    r.xdel("orders", ids[0])
    assert dead_letter(r, "orders", "g", DLQ, 1).moved == 1
    [letter] = letters(r)
    assert letter["dead-letter.id"] == ids[0]
    assert letter["dead-letter.deleted"] == "1"
    assert pending(r) == {}


def test_the_work_of_one_call_is_bounded_and_the_next_goes_on(r: Redis) -> None:
    n = 2 * SCRIPT_ENTRIES + 10
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("orders", {"n": str(i)})
    pipe.execute()
    r.xgroup_create("orders", "g", id="0")
    r.xreadgroup("g", "c1", {"orders": ">"}, count=n)
    r.xreadgroup("g", "c1", {"orders": "0"}, count=n)  # every entry delivered twice
    first = dead_letter(r, "orders", "g", DLQ, 1, max_entries=SCRIPT_ENTRIES + 500)
    assert first.looked == SCRIPT_ENTRIES + 500
    assert first.moved == SCRIPT_ENTRIES + 500
    assert first.resume is not None
    second = dead_letter(r, "orders", "g", DLQ, 1, start=first.resume, max_entries=SCRIPT_ENTRIES + 500)
    assert (second.moved, second.resume) == (n - SCRIPT_ENTRIES - 500, None)
    assert r.xlen(DLQ) == n
    assert pending(r) == {}


def test_a_missing_stream_or_group_moves_nothing(r: Redis) -> None:
    assert dead_letter(r, "nope", "g", DLQ, 1).moved == 0
    fill(r, 1)
    assert dead_letter(r, "orders", "nope", DLQ, 1).moved == 0


def test_a_poison_entry_ends_in_the_dead_letters_and_every_other_entry_is_processed(r: Redis) -> None:
    """Consumers crash on one entry: each reads its own pending entries (what the operator handed it)
    and new ones, processes and acknowledges every entry but the poison, which it never acknowledges:
    then its pod is gone. The sweep as the loop runs it (dead letters, then reclaim) hands the poison to
    the next consumer until its deliveries exceed maxDeliveries, then moves it to the dead letters."""
    ids = fill(r, 30)
    poison = ids[7]
    max_deliveries = 3
    processed: list[str] = []
    crashed: list[str] = []
    for round_ in range(10):  # bounded: the poison is out after a few rounds
        me = f"worker-{round_}"
        took_poison = False
        for cursor in ("0", ">"):
            entries = ids_of(r.xreadgroup("g", me, {"orders": cursor}, count=100 if cursor == "0" else 5))
            done = [entry_id for entry_id in entries if entry_id != poison]
            if done:
                r.xack("orders", "g", *done)
                processed += done
            took_poison = took_poison or poison in entries
        if took_poison:
            crashed.append(me)
        alive = f"worker-{round_ + 1}"  # the crashed pod is gone; its replacement is alive
        r.xgroup_createconsumer("orders", "g", alive)
        dead_letter(r, "orders", "g", DLQ, max_deliveries)
        reclaim_orphans(r, "orders", "g", {alive}, alive)
        if not pending(r) and len(processed) == len(ids) - 1:
            break

    [letter] = letters(r)
    assert letter["dead-letter.id"] == poison
    assert (letter["dead-letter.stream"], letter["dead-letter.group"]) == ("orders", "g")
    assert int(letter["dead-letter.deliveries"]) > max_deliveries
    assert letter["dead-letter.consumer"] in crashed
    assert (letter["n"], letter["body"]) == ("7", "payload 7")
    # Nothing lost, nothing twice: every other entry processed once, none pending.
    assert sorted(processed) == sorted(set(ids) - {poison})
    assert len(processed) == len(set(processed))
    assert pending(r) == {}
    # Each read of the poison is a delivery, and so is each hand-over: 1 (read by worker-1), 2 (handed to
    # worker-2), 3 (read), not more than 3; 4 (handed to worker-3), 5 (read): out. With JUSTID hand-overs
    # only the reads would count, and the poison would kill one more consumer (four, not three).
    assert crashed == ["worker-1", "worker-2", "worker-3"]


# -- the autoscale loop over a real Redis ---------------------------------------------------------


class Kube:
    """What the loop asks Kubernetes for a resource that autoscales nothing: pods, Events, status."""

    def __init__(self) -> None:
        self.pods: set[str] = set()
        self.events: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}

    def list_metadata(self, kind: str, namespace: str, selector: str | None = None,
                      fields: str | None = None) -> list[dict[str, Any]]:
        assert kind == "Pod"
        return [{"metadata": {"name": name, "namespace": namespace}} for name in sorted(self.pods)]

    def event(self, involved: Any, *, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append((reason, message))

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status


class OnePool:
    def __init__(self, node: StreamsNode) -> None:
        self.streams_node = node

    def node(self, *_: Any, **__: Any) -> StreamsNode:
        return self.streams_node

    def forget(self, resource: Any) -> None:
        pass


def test_the_loop_reclaims_for_a_group_without_autoscale_and_dead_letters_its_poison(
        server: RedisServer, r: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "RECLAIM_MIN_IDLE_MS", 0)  # no real second to wait between the steps
    ids = fill(r, 10)
    poison = ids[4]
    kube = Kube()
    now = [0.0]
    autoscaler = loop.Autoscaler(cast(KubeClient, kube), cast(Pools, OnePool(StreamsNode(r))),
                                 monotonic=lambda: now[0])
    owner = Owner(name="shop", namespace="ns", uid="u")
    body = {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": "shop", "namespace": "ns"}}
    spec = models.parse_spec({"streams": [{"name": "orders", "groups": [
        {"name": "g", "startId": "0", "maxDeliveries": 2}]}]})  # no autoscale: scaled by someone else
    autoscaler.place(body, owner, spec, None, Placement(Node("shop-redis-0", (server.host, server.port))), {}, {})

    def consume(me: str, cursor: str) -> None:
        got = ids_of(r.xreadgroup("g", me, {"orders": cursor}, count=100))
        done = [i for i in got if i != poison]
        if done:
            r.xack("orders", "g", *done)

    def tick() -> None:
        now[0] += 60
        autoscaler.tick(("ns", "shop"))

    kube.pods = {"w-2"}  # w-1 crashed on the poison and its pod is gone; w-2 is alive
    consume("w-1", ">")
    r.xgroup_createconsumer("orders", "g", "w-2")
    tick()
    assert pending(r) == {poison: ("w-2", 2)}  # handed over (a delivery), w-1 deleted
    assert {str(c["name"]) for c in r.xinfo_consumers("orders", "g")} == {"w-2"}
    assert [reason for reason, _ in kube.events] == ["PendingReclaimed"]

    consume("w-2", "0")  # w-2 reads what it was handed (3 deliveries) and crashes on it too
    kube.pods = {"w-3"}
    r.xgroup_createconsumer("orders", "g", "w-3")
    tick()
    [letter] = letters(r)
    assert (letter["dead-letter.id"], letter["dead-letter.consumer"], letter["dead-letter.deliveries"]) == (
        poison, "w-2", "3")
    assert pending(r) == {}
    assert r.xinfo_groups("orders")[0]["lag"] == 0  # every other entry processed and acknowledged
    assert [reason for reason, _ in kube.events][-1] == "DeadLettered"
    [group] = kube.status["streams"][0]["groups"]
    assert (group["deadLetterStream"], group["deadLettered"]) == (DLQ, 1)

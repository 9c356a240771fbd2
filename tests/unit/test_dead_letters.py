"""Dead letters: where they go, which groups cannot have them, what the pass and the loop say and do."""

from __future__ import annotations

from typing import Any

import pytest
from fake_kube import FakeKube
from test_autoscale_loop import KEY, FakeRedis, group_status, pod, recording_reclaim, setup_groups

from redis_messaging.api import models
from redis_messaging.reconcile.streams import DEAD_LETTER_REFUSED, DEAD_LETTERS_READY, StreamsReport, StreamsStep
from redis_messaging.redis import cluster as rc
from redis_messaging.redis import nodes
from redis_messaging.redis.streams import DeadLettered, Reclaimed


def spec(mode: str, *streams: tuple[str, dict[str, Any]]) -> models.RedisMessagingSpec:
    return models.parse_spec({"mode": mode, "streams": [{"name": n, "groups": [g]} for n, g in streams]})


def group(**kw: Any) -> models.Group:
    return models.Group.model_validate({"name": "g", **kw})


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stream", "expected"), [
    ("orders", "{orders}:dead-letters"),  # no hash tag: the stream's name becomes the tag
    ("{shop}.orders", "{shop}.orders:dead-letters"),  # a hash tag: the suffix keeps it
    ("a{b", "{a{b}:dead-letters"),  # a { without } is no tag
])
def test_the_default_dead_letter_stream_is_on_the_stream_s_slot(stream: str, expected: str) -> None:
    name = nodes.dead_letter_stream(stream, group(maxDeliveries=3))
    assert name == expected
    assert rc.slot_of(name) == rc.slot_of(stream)


def test_a_declared_dead_letter_stream_is_taken_as_it_is() -> None:
    assert nodes.dead_letter_stream("orders", group(maxDeliveries=3, deadLetterStream="poison")) == "poison"


def test_max_deliveries_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        group(maxDeliveries=0)


# -- refusals -------------------------------------------------------------------------------------


def test_in_cluster_mode_a_dead_letter_stream_on_another_slot_is_refused_and_says_how_to_fix_it() -> None:
    refused = nodes.dead_letter_refusals(spec(
        "cluster",
        ("orders", {"name": "g", "maxDeliveries": 3, "deadLetterStream": "orders-dead"}),
        ("payments", {"name": "g", "maxDeliveries": 3, "deadLetterStream": "{payments}:failed"}),
        ("mail", {"name": "g", "maxDeliveries": 3}),
        ("audit", {"name": "g", "deadLetterStream": "anything"}),  # no maxDeliveries: nothing is moved
        ("a{}b", {"name": "g", "maxDeliveries": 3}),  # no tag and a }: no default on its slot, one must be given
    ))
    assert list(refused) == [("orders", "g"), ("a{}b", "g")]
    assert "hash slot" in refused[("orders", "g")]
    assert "{orders}:dead-letters" in refused[("orders", "g")]


def test_in_sentinel_mode_any_name_will_do_but_the_stream_itself() -> None:
    refused = nodes.dead_letter_refusals(spec(
        "sentinel",
        ("orders", {"name": "g", "maxDeliveries": 3, "deadLetterStream": "orders-dead"}),
        ("mail", {"name": "g", "maxDeliveries": 3, "deadLetterStream": "mail"}),
    ))
    assert list(refused) == [("mail", "g")]


def test_the_pass_says_whether_the_dead_letters_can_be_moved() -> None:
    def conditions(s: models.RedisMessagingSpec) -> list[tuple[str, bool | None, str]]:
        report = StreamsReport()
        StreamsStep._check_dead_letters(s, report)
        return [(c.type, c.status, c.reason) for c in report.conditions]

    assert conditions(spec("cluster", ("orders", {"name": "g"}))) == []
    assert conditions(spec("cluster", ("orders", {"name": "g", "maxDeliveries": 2}))) == [
        (DEAD_LETTERS_READY, True, "AsDeclared")]
    assert conditions(spec("cluster", ("orders", {"name": "g", "maxDeliveries": 2, "deadLetterStream": "x"}))) == [
        (DEAD_LETTERS_READY, False, DEAD_LETTER_REFUSED)]


# -- the loop -------------------------------------------------------------------------------------


def recording_dead_letter(monkeypatch: pytest.MonkeyPatch, moved: int,
                          order: list[str]) -> list[tuple[str, str, str, int, int, str]]:
    calls: list[tuple[str, str, str, int, int, str]] = []

    def dead_letter(node: Any, stream: str, group: str, target: str, max_deliveries: int, *,
                    min_idle_ms: int = 0, start: str = "-") -> DeadLettered:
        calls.append((stream, group, target, max_deliveries, min_idle_ms, start))
        order.append("dead letters")
        return DeadLettered(moved=moved, looked=1000, resume="7-1")

    monkeypatch.setattr(nodes, "dead_letter", dead_letter)
    return calls


def with_pending_consumers(redis: FakeRedis, kube: FakeKube) -> None:
    redis.group.update(pending=5, consumers=2)
    redis.consumers = [{"name": "w-a", "pending": 1, "idle": 10}, {"name": "w-gone", "pending": 4, "idle": 90_000}]
    kube.objects[("Pod", "shop", "w-a")] = pod("w-a", "Running")


def test_entries_delivered_too_often_go_to_the_dead_letters_before_reclaim_and_are_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    redis = FakeRedis()
    autoscaler, kube = setup_groups(redis, {"name": "billing", "maxDeliveries": 3})
    with_pending_consumers(redis, kube)
    order: list[str] = []
    calls = recording_dead_letter(monkeypatch, 2, order)

    def reclaim(*_a: Any, **_kw: Any) -> Reclaimed:
        order.append("reclaim")
        return Reclaimed(claimed=0, deleted=0)

    monkeypatch.setattr(nodes, "reclaim", reclaim)
    autoscaler.tick(KEY)
    assert calls == [("orders", "billing", "{orders}:dead-letters", 3, 1000, "-")]
    assert order == ["dead letters", "reclaim"]
    status = group_status(kube)
    assert (status["deadLetterStream"], status["deadLettered"]) == ("{orders}:dead-letters", 2)
    where = {"namespace": "shop", "resource": "orders", "stream": "orders", "group": "billing"}
    assert autoscaler.metrics.group_dead_lettered.value(**where) == 2
    [event] = [e for e in kube.events if e["reason"] == "DeadLettered"]
    assert event["type"] == "Warning"
    assert "moved 2 entries delivered more than 3 times to the dead-letter stream {orders}:dead-letters" in (
        event["message"])

    autoscaler.reclaim_interval = 0.0
    autoscaler.status_interval = 0.0
    autoscaler.tick(KEY)  # the next sweep goes on where this one stopped, and the count adds up
    assert calls[-1][-1] == "7-1"
    assert group_status(kube)["deadLettered"] == 4
    assert autoscaler.metrics.group_dead_lettered.value(**where) == 4


def test_the_counter_exists_before_the_first_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    redis = FakeRedis()  # nothing pending: nothing is looked at
    autoscaler, kube = setup_groups(redis, {"name": "billing", "maxDeliveries": 3})
    calls = recording_dead_letter(monkeypatch, 0, [])
    autoscaler.tick(KEY)
    assert calls == []
    where = {"namespace": "shop", "resource": "orders", "stream": "orders", "group": "billing"}
    assert autoscaler.metrics.group_dead_lettered.value(**where) == 0
    assert group_status(kube)["deadLettered"] == 0


def test_a_refused_dead_letter_stream_moves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    redis = FakeRedis()
    autoscaler, kube = setup_groups(redis, {"name": "billing", "maxDeliveries": 3, "deadLetterStream": "orders"})
    with_pending_consumers(redis, kube)
    calls = recording_dead_letter(monkeypatch, 2, [])
    recording_reclaim(monkeypatch)
    autoscaler.tick(KEY)
    assert calls == []

"""List queues and Pub/Sub channels: the API and the status a user reads."""

from __future__ import annotations

import pytest

from redis_messaging.api import models
from redis_messaging.autoscale import policy
from redis_messaging.autoscale.decide import GroupState, decide
from redis_messaging.redis.nodes import queue_key, queues_as_streams
from redis_messaging.redis.streams import QueueMeasurement

AUTOSCALE = {"target": {"name": "worker"}, "backlogPerReplica": 100, "maxReplicas": 10}


def test_queues_and_channels_are_declared() -> None:
    spec = models.parse_spec({"queues": [{"name": "jobs", "autoscale": AUTOSCALE}],
                              "channels": [{"name": "news"}, {"name": "orders", "sharded": True}]})
    assert spec.queues[0].autoscale is not None
    assert [(c.name, c.sharded) for c in spec.channels] == [("news", False), ("orders", True)]


def test_a_queue_length_drives_the_same_decision_as_a_backlog() -> None:
    spec = models.parse_spec({"queues": [{"name": "jobs", "autoscale": AUTOSCALE}]})
    autoscale = spec.queues[0].autoscale
    assert autoscale is not None
    decision = decide(QueueMeasurement("jobs", at=100.0, length=250), autoscale, 0, GroupState())
    assert decision.desired == 3
    one = decide(QueueMeasurement("jobs", at=100.0, length=1), autoscale, 0, GroupState())
    assert one.desired == 1  # one entry wakes the workload from zero


def test_an_unreadable_queue_never_scales_down() -> None:
    spec = models.parse_spec({"queues": [{"name": "jobs", "autoscale": AUTOSCALE}]})
    autoscale = spec.queues[0].autoscale
    assert autoscale is not None
    decision = decide(QueueMeasurement("jobs", at=100.0, length=None), autoscale, 4, GroupState())
    assert decision.desired == 4


def test_queues_join_conflict_detection_as_pseudo_groups() -> None:
    spec = models.parse_spec({"queues": [{"name": "jobs", "autoscale": AUTOSCALE}, {"name": "plain"}]})
    streams = queues_as_streams(spec.queues)
    assert [(s.name, [g.name for g in s.groups]) for s in streams] == [("list:jobs", ["jobs"])]
    assert queue_key("jobs") == ("list:jobs", "jobs")


def test_status_shapes() -> None:
    spec = models.parse_spec({"queues": [{"name": "jobs"}], "channels": [{"name": "news"}, {"name": "quiet"}]})
    views = {queue_key("jobs"): policy.GroupView(lag=7, current_replicas=1, desired_replicas=1)}
    assert policy.shape_queues(spec.queues, views) == [
        {"name": "jobs", "length": 7, "currentReplicas": 1, "desiredReplicas": 1}]
    assert policy.shape_channels(spec.channels, {"news": 2}, {"quiet": "boom"}) == [
        {"name": "news", "sharded": False, "subscribers": 2},
        {"name": "quiet", "sharded": False, "error": "boom"}]


@pytest.mark.parametrize(
    ("written", "new", "since", "expected"),
    [
        ({"channels": [{"name": "c", "subscribers": 2}]}, {"channels": [{"name": "c", "subscribers": 2}]}, 99, False),
        ({"channels": [{"name": "c", "subscribers": 2}]}, {"channels": [{"name": "c", "subscribers": 0}]}, 0, True),
        ({"channels": [{"name": "c", "subscribers": 2}]}, {"channels": [{"name": "c", "subscribers": 3}]}, 0, False),
        ({"channels": [{"name": "c", "subscribers": 2}]}, {"channels": [{"name": "c", "subscribers": 3}]}, 11, True),
        ({"queues": [{"name": "q", "desiredReplicas": 1}]}, {"queues": [{"name": "q", "desiredReplicas": 2}]}, 0, True),
        ({"queues": [{"name": "q", "length": 5}]}, {"queues": [{"name": "q", "length": 6}]}, 0, False),
    ],
    ids=["unchanged", "nobody-listens-now", "count-moved", "count-moved-after-interval", "replicas", "length"],
)
def test_status_is_written_when_a_user_would_act(written: dict[str, list[dict[str, object]]],
                                                  new: dict[str, list[dict[str, object]]], since: float,
                                                  expected: bool) -> None:
    assert policy.should_write_all(new, written, since_written=since, interval=10) is expected

"""The failover watch's fence: which Sentinel events start it, and how long it may last."""

from __future__ import annotations

import pytest

from redis_messaging.modes.sentinel.watch import fence_seconds
from redis_messaging.redis import sentinel as rs


def test_a_master_event_names_the_master_it_is_about() -> None:
    down = rs.parse_master_down("+odown", "master orders 10.0.0.7 6379 #quorum 2/2", "orders", None)
    assert down is not None
    assert (down.master_name, down.address, down.event) == ("orders", ("10.0.0.7", 6379), "+odown")
    tried = rs.parse_master_down("+try-failover", "master orders 10.0.0.7 6379", "orders", None)
    assert tried is not None
    assert tried.address == ("10.0.0.7", 6379)


def test_a_vote_is_about_the_master_these_sentinels_monitor() -> None:
    vote = rs.parse_master_down("+vote-for-leader", "4f1c0a2e 7", "orders", ("10.0.0.7", 6379))
    assert vote is not None
    assert (vote.address, vote.master_name) == (("10.0.0.7", 6379), "orders")
    # no master known yet: nothing to fence
    assert rs.parse_master_down("+vote-for-leader", "4f1c0a2e 7", "orders", None) is None


@pytest.mark.parametrize("data", ["", "slave 10.0.0.8:6379 10.0.0.8 6379 @ orders 10.0.0.7 6379",
                                  "master orders 10.0.0.7", "master orders 10.0.0.7 port"])
def test_events_about_anything_else_are_ignored(data: str) -> None:
    assert rs.parse_master_down("+odown", data, "orders", ("10.0.0.7", 6379)) is None


def test_the_fence_lasts_twice_down_after_between_5_and_30_seconds() -> None:
    assert fence_seconds(1000) == 5.0
    assert fence_seconds(5000) == 10.0
    assert fence_seconds(60_000) == 30.0

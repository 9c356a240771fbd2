"""How soon a resource that is not Ready gets its next pass."""

from __future__ import annotations

from redis_messaging.reconcile.sync import (
    CONVERGING_RETRY_MAX_SECONDS,
    CONVERGING_RETRY_MIN_SECONDS,
    converging_retry,
    not_ready_for,
)

NOW = "2026-11-22T10:00:00Z"


def body(*conditions: dict[str, str]) -> dict[str, object]:
    return {"metadata": {"name": "orders"}, "status": {"conditions": list(conditions)}}


def ready(status: str, since: str) -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": "WaitingForPods", "lastTransitionTime": since}


def test_soon_after_a_change_then_less_often_never_slower_than_the_ceiling() -> None:
    assert converging_retry(0) == CONVERGING_RETRY_MIN_SECONDS
    assert converging_retry(15) == CONVERGING_RETRY_MIN_SECONDS
    assert converging_retry(60) == 6.0
    assert converging_retry(3600) == CONVERGING_RETRY_MAX_SECONDS
    waits = [converging_retry(w) for w in range(0, 600, 10)]
    assert waits == sorted(waits)


def test_the_wait_is_counted_from_when_ready_stopped_being_true() -> None:
    assert not_ready_for(body(ready("False", "2026-11-22T09:58:30Z")), NOW) == 90.0
    assert not_ready_for(body(ready("Unknown", "2026-11-22T09:59:50Z")), NOW) == 10.0
    assert not_ready_for(body(ready("True", "2026-11-22T09:00:00Z")), NOW) == 0.0  # it was Ready: a fresh change
    assert not_ready_for({"metadata": {"name": "orders"}}, NOW) == 0.0  # a new resource
    assert not_ready_for(body(ready("False", "yesterday")), NOW) == 0.0  # unreadable: as soon as possible
    assert not_ready_for(body(ready("False", "2026-11-22T10:00:05Z")), NOW) == 0.0  # clocks apart

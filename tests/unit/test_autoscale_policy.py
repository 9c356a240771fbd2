"""Pure choices of the autoscale loop: pod-deletion-costs, orphaned consumers, status.streams and when to write it."""

from __future__ import annotations

from typing import Any

from redis_messaging.api.models import Stream
from redis_messaging.autoscale.policy import (
    DELETION_COST,
    MAX_DELETION_COST,
    UNFINISHED_PODS,
    GroupView,
    PodView,
    actionable,
    alive,
    deletion_costs,
    orphans,
    pod_views,
    shape_status,
    should_write,
)

# -- pod-deletion-cost --------------------------------------------------------------------------------


def test_pods_whose_consumer_holds_fewest_pending_entries_cost_least() -> None:
    pods = [PodView("w-a"), PodView("w-b"), PodView("w-c"), PodView("w-new")]
    costs = deletion_costs(pods, {"w-a": 50, "w-b": 40, "w-c": 0, "gone": 7})
    assert costs == {"w-a": "50", "w-b": "40", "w-c": "0", "w-new": "0"}
    first_to_go = sorted(costs, key=lambda p: (int(costs[p]), p))[:2]
    assert first_to_go == ["w-c", "w-new"]


def test_only_annotations_that_differ_are_set_and_terminating_pods_are_left_alone() -> None:
    pods = [PodView("w-a", deletion_cost="50"), PodView("w-b", deletion_cost="1"),
            PodView("w-c", terminating=True)]
    assert deletion_costs(pods, {"w-a": 50, "w-b": 40, "w-c": 9}) == {"w-b": "40"}


def test_deletion_cost_fits_the_int32_annotation() -> None:
    assert deletion_costs([PodView("w")], {"w": 2**40}) == {"w": str(MAX_DELETION_COST)}


def test_pod_views_read_names_termination_and_cost_from_metadata() -> None:
    items: list[dict[str, Any]] = [
        {"metadata": {"name": "a", "annotations": {DELETION_COST: "3"}}},
        {"metadata": {"name": "b", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    assert pod_views(items) == {"a": PodView("a", False, "3"), "b": PodView("b", True, None)}


def test_pod_views_read_a_finished_phase_from_whole_pods() -> None:
    items: list[dict[str, Any]] = [
        {"metadata": {"name": "evicted"}, "status": {"phase": "Failed", "reason": "Evicted"}},
        {"metadata": {"name": "done"}, "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "running"}, "status": {"phase": "Running"}},
    ]
    views = pod_views(items)
    assert [name for name, view in views.items() if view.finished] == ["evicted", "done"]
    assert UNFINISHED_PODS == "status.phase!=Failed,status.phase!=Succeeded"


# -- orphans ------------------------------------------------------------------------------------------


def test_consumers_without_a_pod_are_orphans_and_the_least_busy_live_consumer_claims() -> None:
    pods = {"w-1": PodView("w-1"), "w-2": PodView("w-2"), "db-0": PodView("db-0")}
    dead, claimer = orphans({"w-1": 50, "w-2": 40, "w-3": 30, "w-4": 0}, pods)
    assert dead == {"w-3", "w-4"}
    assert claimer == "w-2"


def test_a_terminating_pod_is_alive_but_never_claims() -> None:
    pods = {"w-1": PodView("w-1", terminating=True), "w-2": PodView("w-2")}
    dead, claimer = orphans({"w-1": 0, "w-2": 10, "w-3": 5}, pods)
    assert dead == {"w-3"}
    assert claimer == "w-2"


def test_an_evicted_pod_is_gone_and_never_claims() -> None:
    # The kubelet evicted w-1 (phase Failed, no deletionTimestamp): it holds the fewest entries, but its
    # consumer will never run again.
    pods = {"w-1": PodView("w-1", finished=True), "w-2": PodView("w-2")}
    dead, claimer = orphans({"w-1": 0, "w-2": 10, "w-3": 5}, pods)
    assert dead == {"w-1", "w-3"}
    assert claimer == "w-2"
    assert alive(pods) == {"w-2"}


def test_no_claimer_when_every_pod_has_finished() -> None:
    dead, claimer = orphans({"w-1": 4}, {"w-1": PodView("w-1", finished=True)})
    assert (dead, claimer) == ({"w-1"}, None)


def test_no_live_consumer_means_no_claimer() -> None:
    dead, claimer = orphans({"w-3": 5}, {"w-1": PodView("w-1")})
    assert dead == {"w-3"}
    assert claimer is None


def test_claimer_ties_are_broken_by_name() -> None:
    pods = {n: PodView(n) for n in ("b", "a")}
    assert orphans({"b": 1, "a": 1, "x": 3}, pods)[1] == "a"


# -- status.streams -----------------------------------------------------------------------------------


def declared() -> list[Stream]:
    return [Stream.model_validate({"name": "orders", "groups": [
        {"name": "billing", "autoscale": {"target": {"name": "billing-worker"}}},
        {"name": "audit"}]}),
        Stream.model_validate({"name": "empty"})]


def test_status_lists_declared_streams_and_groups_leaving_unknowns_out() -> None:
    views = {("orders", "billing"): GroupView(lag=480, pending=20, consumers=2, current_replicas=2,
                                              desired_replicas=5, orphaned_pending=0,
                                              last_decision="backlog 500 ... -> 5"),
             ("orders", "gone"): GroupView(lag=1)}
    status = shape_status(declared(), views, {"orders": 1000}, {"empty": "stream empty does not exist"},
                          {"orders": 7})
    assert status == [
        {"name": "orders", "length": 1000, "trimmed": 7, "groups": [
            {"name": "billing", "lag": 480, "lagEstimated": False, "lagCapped": False, "pending": 20,
             "orphanedPending": 0, "consumers": 2, "currentReplicas": 2, "desiredReplicas": 5,
             "lastDecision": "backlog 500 ... -> 5"},
            {"name": "audit", "lagEstimated": False, "lagCapped": False},
        ]},
        {"name": "empty", "trimmed": 0, "error": "stream empty does not exist", "groups": []},
    ]


def test_status_says_a_lag_counted_up_to_the_cap_is_a_lower_bound() -> None:
    views = {("orders", "billing"): GroupView(lag=10_000, lag_estimated=True, lag_capped=True, pending=0)}
    [orders, _] = shape_status(declared(), views, {}, {}, {})
    billing = orders["groups"][0]
    assert (billing["lag"], billing["lagEstimated"], billing["lagCapped"]) == (10_000, True, True)


def group_status(**kw: Any) -> list[dict[str, Any]]:
    base = {"name": "billing", "lag": 400, "pending": 80, "currentReplicas": 5, "desiredReplicas": 5,
            "lastDecision": "backlog 480 (lag 400 + pending 80) / 100 per replica -> 5, stays at 5"}
    return [{"name": "orders", "groups": [{**base, **kw}]}]


def test_moving_numbers_wait_for_the_interval() -> None:
    written = group_status()
    moved = group_status(lag=410, lastDecision="backlog 490 (lag 410 + pending 80) / 100 per replica -> 5, "
                         "stays at 5")
    assert actionable(moved) == actionable(written)
    assert not should_write(moved, written, since_written=2.0, interval=10.0)
    assert should_write(moved, written, since_written=10.0, interval=10.0)


def test_replica_counts_rules_and_errors_are_written_at_once() -> None:
    written = group_status()
    for changed in (group_status(desiredReplicas=6), group_status(currentReplicas=4),
                    group_status(error="Deployment billing-worker does not exist"),
                    group_status(lastDecision="backlog 100 / 100 per replica -> 1, scale-down held at 5: "
                                 "highest recommendation within 120s")):
        assert should_write(changed, written, since_written=0.1, interval=10.0), changed


def test_nothing_changed_is_never_written() -> None:
    assert not should_write(group_status(), group_status(), since_written=1e9, interval=10.0)


def test_first_status_is_written() -> None:
    assert should_write(group_status(), None, since_written=float("inf"), interval=10.0)

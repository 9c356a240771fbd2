"""Who else scales an autoscaled workload: HorizontalPodAutoscalers, KEDA ScaledObjects, other groups."""

from __future__ import annotations

from typing import Any

from redis_messaging.api.models import Stream
from redis_messaging.reconcile.streams import Conflict, autoscale_conflicts
from redis_messaging.redis.nodes import Node, Placement


def streams(*groups: tuple[str, str, str]) -> list[Stream]:
    """(stream, group, "Kind/name" or "" for no autoscale)"""
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for stream, group, target in groups:
        entry: dict[str, Any] = {"name": group}
        if target:
            kind, name = target.split("/")
            entry["autoscale"] = {"target": {"kind": kind, "name": name}}
        by_stream.setdefault(stream, []).append(entry)
    return [Stream.model_validate({"name": s, "groups": g}) for s, g in by_stream.items()]


def hpa(name: str, kind: str, target: str, owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [{"kind": "ScaledObject", "name": owner}]
    return {"metadata": meta, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                                       "minReplicas": 1, "maxReplicas": 5}}


def scaled_object(name: str, target: str, kind: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": target}
    if kind:
        ref["kind"] = kind
    return {"metadata": {"name": name}, "spec": {"scaleTargetRef": ref}}


def test_an_hpa_on_the_same_workload_is_a_conflict() -> None:
    found = autoscale_conflicts(streams(("orders", "billing", "Deployment/billing-worker")),
                                [hpa("billing", "Deployment", "billing-worker")], [])
    assert found == [Conflict("orders", "billing", "Deployment billing-worker", ("HorizontalPodAutoscaler billing",))]
    assert "also scaled by HorizontalPodAutoscaler billing" in found[0].message


def test_an_hpa_on_another_kind_or_name_is_not() -> None:
    declared = streams(("orders", "billing", "Deployment/billing-worker"))
    assert autoscale_conflicts(declared, [hpa("a", "StatefulSet", "billing-worker"),
                                          hpa("b", "Deployment", "audit-worker")], []) == []


def test_a_scaled_object_targets_a_deployment_unless_it_says_otherwise() -> None:
    declared = streams(("orders", "billing", "Deployment/billing-worker"), ("orders", "audit", "StatefulSet/audit"))
    found = autoscale_conflicts(declared, [], [scaled_object("so-1", "billing-worker"),
                                               scaled_object("so-2", "audit", kind="StatefulSet"),
                                               scaled_object("so-3", "billing-worker", kind="StatefulSet")])
    assert [(c.group, c.by) for c in found] == [("billing", ("ScaledObject so-1",)), ("audit", ("ScaledObject so-2",))]


def test_the_hpa_keda_creates_for_a_scaled_object_is_not_named_twice() -> None:
    found = autoscale_conflicts(streams(("orders", "billing", "Deployment/w")),
                                [hpa("keda-hpa-so", "Deployment", "w", owner="so")], [scaled_object("so", "w")])
    assert [c.by for c in found] == [("ScaledObject so",)]


def test_two_groups_scaling_one_workload_conflict_with_each_other() -> None:
    found = autoscale_conflicts(streams(("orders", "billing", "Deployment/w"), ("refunds", "billing", "Deployment/w"),
                                        ("orders", "audit", "")), [], [])
    assert [(c.stream, c.by) for c in found] == [("orders", ("group refunds/billing",)),
                                                 ("refunds", ("group orders/billing",))]


def test_groups_without_autoscale_never_conflict() -> None:
    assert autoscale_conflicts(streams(("orders", "audit", "")), [hpa("x", "Deployment", "audit")], []) == []


def test_in_sentinel_mode_every_stream_lives_on_the_master() -> None:
    master = Node("orders-redis-1", ("10.0.0.2", 6379))
    declared = streams(("a", "g", ""), ("b", "g", ""), ("c", "g", ""))
    assert Placement(master).by_node(declared) == [(master, declared)]

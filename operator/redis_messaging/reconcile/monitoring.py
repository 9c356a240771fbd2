"""The monitoring step of a pass: which monitoring objects to apply, which to remove, and a Condition.

ServiceMonitor and PrometheusRule exist only where the Prometheus Operator's CRDs are installed. The
API server's discovery (cached by :meth:`Kube.served_kinds`) decides: kinds it does not serve are left
out, and the ``MonitoringReady`` condition (with a Warning Event on the transition) says which.
Monitoring objects the spec no longer asks for are deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api import conditions as cond
from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import monitoring, names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MONITORING_READY = "MonitoringReady"
SKIPPED = "MonitoringCRDsMissing"


@dataclass(frozen=True)
class MonitoringPlan:
    objects: list[Obj] = field(default_factory=list)
    condition: cond.Cond | None = None


def plan(kube: Kube, spec: RedisMessagingSpec, owner: Owner) -> MonitoringPlan:
    selected = monitoring.children(spec, owner, kube.served_kinds)
    if not selected.requested:
        return MonitoringPlan(selected.objects)
    if selected.skipped:
        message = (f"{', '.join(selected.skipped)} skipped: the API server does not serve "
                   f"{monitoring.API_VERSION} (install the Prometheus Operator's CRDs)")
        return MonitoringPlan(selected.objects, cond.Cond(MONITORING_READY, False, SKIPPED, message))
    kinds = sorted({o["kind"] for o in selected.objects if o["kind"] in monitoring.MONITORING_KINDS})
    return MonitoringPlan(selected.objects, cond.Cond(MONITORING_READY, True, "Applied", f"{', '.join(kinds)} applied"))


def prune(kube: Kube, owner: Owner, desired: list[Obj], live: dict[tuple[str, str], Obj]) -> list[str]:
    """Delete monitoring objects of this resource that ``desired`` no longer holds; what was deleted.

    ``live`` is what :func:`redis_messaging.reconcile.sync.ensure_children` listed (every Service and
    ConfigMap of the resource); Prometheus Operator kinds are listed here when they are served.
    """
    keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
    listed = {kind for kind, _ in live}
    candidates = dict(live)
    served = kube.served_kinds(monitoring.API_VERSION)
    for kind in sorted(monitoring.MONITORING_KINDS & served - listed):
        for item in kube.list(kind, owner.namespace, names.instance_selector(owner)):
            candidates[(kind, item["metadata"]["name"])] = item
    done = []
    for (kind, name), obj in sorted(candidates.items()):
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if (kind, name) in keep or labels.get(names.LABEL_COMPONENT) != monitoring.COMPONENT_METRICS:
            continue
        kube.delete(kind, owner.namespace, name)
        done.append(f"Deleted {kind} {name} (monitoring no longer asks for it)")
    return done

"""The children the operator's watches delivered, looked up by owner, by name or by namespace.

Kopf keeps one index per watched kind (see :mod:`redis_messaging.handlers`), filled from the watch
streams and complete before any handler runs (Kopf waits for every index's first listing), so a pass
never mistakes an object it has not heard of yet for a missing one. The keys:

- ``("owner", namespace, instance)``: every child of one resource (its ``app.kubernetes.io/instance``);
- ``("name", namespace, name)``: one object;
- ``("namespace", namespace)``: every object of a kind indexed whole (HorizontalPodAutoscalers).

Reads happen in worker threads while Kopf updates the indices in its event loop: copying one store
into a list is a single step under the interpreter lock, so a reader sees a whole store, never half.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]
IndexKey = tuple[str, ...]

# The children the operator indexes (those labelled app.kubernetes.io/name=redis-messaging): kind ->
# (Kopf's name of the index, API group, version, plural). handlers.py registers one index each.
CHILD_INDICES: dict[str, tuple[str, str, str, str]] = {
    "Pod": ("pods_by_owner", "", "v1", "pods"),
    "StatefulSet": ("statefulsets_by_owner", "apps", "v1", "statefulsets"),
    "PersistentVolumeClaim": ("claims_by_owner", "", "v1", "persistentvolumeclaims"),
    "ConfigMap": ("configmaps_by_owner", "", "v1", "configmaps"),
    "Service": ("services_by_owner", "", "v1", "services"),
    "Secret": ("secrets_by_owner", "", "v1", "secrets"),
    "PodDisruptionBudget": ("budgets_by_owner", "policy", "v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("policies_by_owner", "networking.k8s.io", "v1", "networkpolicies"),
}
INDEX_OF_KIND = {kind: index for kind, (index, *_) in CHILD_INDICES.items()}
INDEX_OF_KIND["HorizontalPodAutoscaler"] = "autoscalers_by_namespace"  # indexed whole, by namespace


def entries(namespace: str, name: str, labels: Mapping[str, str], body: Mapping[str, Any],
            instance_label: str) -> dict[IndexKey, Obj]:
    """What an index function returns for one labelled child: the body (without managedFields, which
    nobody reads and which weigh as much as the rest) under its owner key and its name key."""
    kept = dict(body)
    meta = dict(kept.get("metadata") or {})
    meta.pop("managedFields", None)
    kept["metadata"] = meta
    out: dict[IndexKey, Obj] = {("name", namespace, name): kept}
    instance = labels.get(instance_label)
    if instance:
        out[("owner", namespace, instance)] = kept
    return out


class Indices:
    """The operator's view of Kopf's indices (attached when a handler first receives them)."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Mapping[Hashable, Iterable[Obj]]] = {}
        self._lock = threading.Lock()

    def attach(self, found: Mapping[str, Any]) -> None:
        """Keep the indices among a handler's keyword arguments."""
        with self._lock:
            if len(self._by_kind) == len(INDEX_OF_KIND):
                return
            for kind, index_name in INDEX_OF_KIND.items():
                index = found.get(index_name)
                if index is not None:
                    self._by_kind[kind] = index

    @property
    def attached(self) -> bool:
        return bool(self._by_kind)

    def lookup(self, kind: str, key: IndexKey) -> list[Obj] | None:
        index = self._by_kind.get(kind)
        if index is None:
            return None
        try:
            store = index[key]
        except KeyError:
            return []
        return list(store)

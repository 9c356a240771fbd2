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

# The kinds the operator indexes, as Kopf names its indices (the index functions of handlers.py).
INDEX_OF_KIND = {
    "Pod": "pods_by_owner",
    "StatefulSet": "statefulsets_by_owner",
    "PersistentVolumeClaim": "claims_by_owner",
    "ConfigMap": "configmaps_by_owner",
    "Service": "services_by_owner",
    "Secret": "secrets_by_owner",
    "PodDisruptionBudget": "budgets_by_owner",
    "NetworkPolicy": "policies_by_owner",
    "HorizontalPodAutoscaler": "autoscalers_by_namespace",
}


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

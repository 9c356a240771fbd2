"""An in-memory stand-in for :class:`redis_messaging.kube.client.Kube`: objects kept by kind, namespace and
name, every call recorded (``calls``), label selectors of the ``a=b,c=d`` form and field selectors of the
``a.b=c,d.e!=f`` form honoured. Enough for the reconcile pass to run against; the kube tier runs it against
a real API server."""

from __future__ import annotations

import base64
import copy
import itertools
import threading
from typing import Any

from redis_messaging.kube.client import KubeError

Obj = dict[str, Any]


def _matches(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _fields_match(obj: Obj, fields: str | None) -> bool:
    if not fields:
        return True
    for term in fields.split(","):
        negated = "!=" in term
        path, _, value = term.partition("!=" if negated else "=")
        found: Any = obj
        for part in path.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if (str(found or "") == value.lstrip("=")) == negated:  # a==b means a=b
            return False
    return True


class FakeKube:
    def __init__(self, served: dict[str, frozenset[str]] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[tuple[str, str]] = []  # (verb, kind)
        self.events: list[Obj] = []
        self.served = served or {}
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    def _record(self, verb: str, kind: str) -> None:
        with self._lock:
            self.calls.append((verb, kind))

    def _store(self, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._versions))
        meta.setdefault("uid", f"uid-{meta['name']}")
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        with self._lock:
            self.objects[key] = obj
        return copy.deepcopy(obj)

    # -- reads ----------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        self._record("get", kind)
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[Obj]:
        self._record("list", kind)
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and ns == namespace and _matches(o, selector)]

    def list_metadata(self, kind: str, namespace: str, selector: str | None = None,
                      fields: str | None = None) -> list[Obj]:
        return [{"metadata": o["metadata"]} for o in self.list(kind, namespace, selector) if _fields_match(o, fields)]

    def served_kinds(self, api_version: str, **_: Any) -> frozenset[str]:
        return self.served.get(api_version, frozenset())

    def get_scale(self, kind: str, namespace: str, name: str) -> Obj | None:
        self._record("get_scale", kind)
        found = self.objects.get((kind, namespace, name))
        if found is None:
            return None
        return {"spec": {"replicas": (found.get("spec") or {}).get("replicas", 0)}, "status": {}}

    # -- writes ---------------------------------------------------------------------------------
    def apply(self, obj: Obj) -> Obj:
        self._record("apply", obj["kind"])
        return self._store(copy.deepcopy(obj))

    def create(self, obj: Obj) -> Obj:
        self._record("create", obj["kind"])
        body = copy.deepcopy(obj)
        if "stringData" in body:
            body.setdefault("data", {}).update(
                {k: base64.b64encode(v.encode()).decode() for k, v in body.pop("stringData").items()})
        return self._store(body)

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> None:
        self._record("delete", kind)
        with self._lock:
            self.objects.pop((kind, namespace, name), None)

    def merge_patch(self, kind: str, namespace: str, name: str, patch: Obj, sub: str | None = None) -> Obj:
        self._record(f"patch{'/' + sub if sub else ''}", kind)
        found = self.objects.get((kind, namespace, name))
        if found is None:
            raise KubeError(404, "NotFound", f"{kind} {name} not found")
        _merge(found, patch)
        return self._store(found)

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        return self.merge_patch(kind, namespace, name, {"status": status}, sub="status")

    def label_pod(self, namespace: str, name: str, labels: dict[str, str | None]) -> Obj:
        return self.merge_patch("Pod", namespace, name, {"metadata": {"labels": labels}})

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str | None]) -> Obj:
        return self.merge_patch(kind, namespace, name, {"metadata": {"annotations": annotations}})

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> Obj:
        return self.merge_patch(kind, namespace, name, {"spec": {"replicas": replicas}}, sub="scale")

    def event(self, involved: Obj, *, reason: str, message: str, type_: str = "Normal") -> None:
        self._record("create", "Event")
        self.events.append({"reason": reason, "message": message, "type": type_,
                            "involved": involved["metadata"]["name"]})


def _merge(target: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)

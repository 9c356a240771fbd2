"""Talking to the Kubernetes API: the only module family that imports the `kubernetes` client.

Objects travel as plain dicts. Writes use server-side apply with one field manager, and a write is
skipped when the live object already carries everything the desired one says (see
:func:`needs_apply`), so a pass that changes nothing sends nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from redis_messaging.builders import names
from redis_messaging.builders.config import content_hash

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        out = f"{base}{ns}/{self.plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "StorageClass": Kind("storage.k8s.io/v1", "storageclasses", namespaced=False),
    "Event": Kind("v1", "events"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "Deployment": Kind("apps/v1", "deployments"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers"),
    "ServiceMonitor": Kind("monitoring.coreos.com/v1", "servicemonitors"),
    "PodMonitor": Kind("monitoring.coreos.com/v1", "podmonitors"),
    "PrometheusRule": Kind("monitoring.coreos.com/v1", "prometheusrules"),
    "Certificate": Kind("cert-manager.io/v1", "certificates"),
    "ScaledObject": Kind("keda.sh/v1alpha1", "scaledobjects"),
    "RedisMessaging": Kind("redis-messaging.dev/v1alpha1", "redismessagings"),
}


class KubeError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _error(exc: ApiException) -> KubeError:
    message = exc.body or ""
    with contextlib.suppress(ValueError):
        message = json.loads(exc.body or "{}").get("message", message)
    return KubeError(int(exc.status or 0), str(exc.reason or ""), str(message))


def _contains(desired: Any, live: Any) -> bool:
    """True when every field of ``desired`` is in ``live`` with the same value.

    Lists must match element by element (same length): that is what apply would produce.
    Empty desired containers and zero values match an absent live value (the API server omits
    fields that hold their zero value).
    """
    if live is None and desired in (0, False, "", {}, []):
        return True
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return not desired and live is None
        return all(_contains(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if live is None:
            return not desired
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(_contains(d, v) for d, v in zip(desired, live, strict=True))
    return bool(desired == live)


SECRET_FIELDS = ("data", "stringData")


def applied_hash(obj: Obj) -> str:
    """The hash of what was applied, stamped on the object: of everything but a Secret's values (its keys
    count). An annotation is readable more widely than a Secret's data, and a hash of a password is a way
    to test guesses of it offline; a changed value is seen by comparing the data itself (:func:`needs_apply`)."""
    if obj.get("kind") != "Secret":
        return content_hash(obj)
    return content_hash({k: sorted(v or {}) if k in SECRET_FIELDS else v for k, v in obj.items()})


def needs_apply(desired: Obj, live: Obj | None) -> str | None:
    """Why ``desired`` must be applied over ``live``, or None when an apply would change nothing.

    The applied hash says whether the desired object changed since it was applied (a field it no longer
    has included, which no comparison with the live object could tell); the comparison says whether the
    live object drifted, or, for a Secret, whether a value of its data changed (the hash leaves them out)."""
    if live is None:
        return "missing"
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if annotations.get(names.ANNOTATION_APPLIED_HASH) != applied_hash(desired):
        return "desired state changed"
    if not _contains(desired, live):
        if desired.get("kind") == "Secret" and not _contains(desired.get("data") or {}, live.get("data")):
            return "its data changed"
        return "live object drifted"
    return None


def with_applied_hash(desired: Obj) -> Obj:
    out = dict(desired)
    meta = dict(out["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           names.ANNOTATION_APPLIED_HASH: applied_hash(desired)}
    out["metadata"] = meta
    return out


class Kube:
    """A small typed facade over the Kubernetes REST API."""

    def __init__(self, api: kubernetes.client.ApiClient, field_manager: str) -> None:
        self.api = api
        self.field_manager = field_manager
        self._discovery: dict[str, tuple[float, frozenset[str]]] = {}  # api version -> (expires, kinds)

    @classmethod
    def from_environment(cls, field_manager: str, *, connections: int = 4) -> Kube:
        """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG (read now) or ~/.kube/config.
        ``connections``: HTTP connections kept open to the API server (one per concurrent caller)."""
        configuration = kubernetes.client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
            kubernetes.config.load_kube_config(config_file=path,  # type: ignore[no-untyped-call]
                                               client_configuration=configuration)
        configuration.connection_pool_maxsize = max(connections, 1)
        return cls(kubernetes.client.ApiClient(configuration), field_manager)

    # -- raw ----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, body: Any = None, query: Iterable[tuple[str, str]] = (),
              content_type: str | None = None, accept: str = "application/json") -> Any:
        headers = {"Accept": accept, "Content-Type": content_type or "application/json"}
        method_, url, headers, payload_, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=list(query), header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(method_, url, header_params=headers, body=payload_,
                                         _request_timeout=30)
            response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _error(exc) from None
        data = response.data or b"{}"
        if not 200 <= response.status < 300:
            raise _error(ApiException(status=response.status, reason=response.reason,
                                      body=data.decode(errors="replace")))
        return json.loads(data)

    # -- reads --------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            result: Obj = self._call("GET", KINDS[kind].path(namespace, name))
            return result
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list_metadata(self, kind: str, namespace: str, selector: str | None = None,
                      fields: str | None = None) -> list[Obj]:
        """Only the metadata of the objects (names, labels, annotations, deletionTimestamp): a pod list
        without specs and statuses, for when names are all that is needed. ``fields``: a field selector,
        e.g. ``status.phase!=Failed``, which the API server applies although the statuses stay out."""
        query = [("labelSelector", selector)] if selector else []
        if fields:
            query.append(("fieldSelector", fields))
        result = self._call("GET", KINDS[kind].path(namespace), query=query,
                            accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
        items: list[Obj] = result.get("items") or []
        return items

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[Obj]:
        query = [("labelSelector", selector)] if selector else []
        result = self._call("GET", KINDS[kind].path(namespace), query=query)
        items: list[Obj] = result.get("items") or []
        for item in items:  # items of a list carry no apiVersion/kind of their own
            item.setdefault("apiVersion", KINDS[kind].api_version)
            item.setdefault("kind", kind)
        return items

    def served_kinds(self, api_version: str, *, ttl: float = 300.0, missing_ttl: float = 60.0) -> frozenset[str]:
        """The kinds the API server serves under ``api_version`` (discovery), cached: ``ttl`` seconds,
        ``missing_ttl`` while the group is not served, so CRDs installed later are seen soon."""
        now = time.monotonic()
        cached = self._discovery.get(api_version)
        if cached is not None and cached[0] > now:
            return cached[1]
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            found = self._call("GET", path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            found = {}
        kinds = frozenset(r["kind"] for r in found.get("resources") or [] if "/" not in r.get("name", ""))
        self._discovery[api_version] = (now + (ttl if kinds else missing_ttl), kinds)
        return kinds

    # -- writes -------------------------------------------------------------------------------
    def apply(self, obj: Obj) -> Obj:
        """Server-side apply, owning every field ``obj`` sets (conflicts forced)."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta.get("namespace"), meta["name"])
        query = [("fieldManager", self.field_manager), ("force", "true")]
        result: Obj = self._call("PATCH", path, body=obj, query=query,
                                 content_type="application/apply-patch+yaml")
        return result

    def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        query = [("fieldManager", self.field_manager)]
        result: Obj = self._call("POST", KINDS[obj["kind"]].path(meta.get("namespace")), body=obj,
                                 query=query)
        return result

    def merge_patch(self, kind: str, namespace: str, name: str, patch: Obj, sub: str | None = None) -> Obj:
        result: Obj = self._call(
            "PATCH", KINDS[kind].path(namespace, name, sub), body=patch,
            query=[("fieldManager", self.field_manager)], content_type="application/merge-patch+json",
        )
        return result

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> None:
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name),
                       body={"propagationPolicy": propagation})
        except KubeError as exc:
            if exc.status != 404:
                raise

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        return self.merge_patch(kind, namespace, name, {"status": status}, sub="status")

    def label_pod(self, namespace: str, name: str, labels: dict[str, str | None]) -> Obj:
        return self.merge_patch("Pod", namespace, name, {"metadata": {"labels": labels}})

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str | None]) -> Obj:
        return self.merge_patch(kind, namespace, name, {"metadata": {"annotations": annotations}})

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> Obj:
        return self.merge_patch(kind, namespace, name, {"spec": {"replicas": replicas}}, sub="scale")

    def get_scale(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            result: Obj = self._call("GET", KINDS[kind].path(namespace, name, "scale"))
            return result
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def event(self, involved: Obj, *, reason: str, message: str, type_: str = "Normal") -> None:
        """Record an Event on ``involved`` (an object with apiVersion, kind and metadata)."""
        meta = involved["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1000],
            "type": type_,
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call("POST", KINDS["Event"].path(meta["namespace"]), body=body)
        except KubeError as exc:  # an Event is best effort; never fail a pass over it
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)

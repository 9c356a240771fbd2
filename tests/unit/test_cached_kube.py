"""A pass reads the children from the watch-fed indices: nothing to change means no request at all."""

from __future__ import annotations

from typing import Any

from redis_messaging.builders import names
from redis_messaging.kube.cached import KEEP_OWN_PERIODS, TOMBSTONE_SECONDS, CachedKube
from redis_messaging.kube.client import Kube, KubeError

Obj = dict[str, Any]
SELECTOR = f"{names.LABEL_NAME}={names.APP_NAME},{names.LABEL_INSTANCE}=orders"


class Api(Kube):
    """The API server: answers from ``objects`` and counts every request."""

    def __init__(self) -> None:
        super().__init__(None, "test")  # type: ignore[arg-type]
        self.objects: dict[str, Any] = {}
        self.requests: list[tuple[str, str]] = []

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests.append((method, path))
        if method == "GET":
            if path not in self.objects:
                raise KubeError(404, "NotFound", path)
            return self.objects[path]
        body = kwargs.get("body") or {}
        return {**body, "metadata": {"name": path.rsplit("/", 1)[-1], **body.get("metadata", {}),
                                     "resourceVersion": "10"}}


class Source:
    def __init__(self) -> None:
        self.stores: dict[str, dict[tuple[str, ...], list[Obj]]] = {}

    def lookup(self, kind: str, key: tuple[str, ...]) -> list[Obj] | None:
        if kind not in self.stores:
            return None
        return list(self.stores[kind].get(key, []))

    def put(self, kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        store = self.stores.setdefault(kind, {})
        for key in (("owner", meta["namespace"], meta["labels"][names.LABEL_INSTANCE]),
                    ("name", meta["namespace"], meta["name"])):
            store[key] = [o for o in store.get(key, []) if o["metadata"]["name"] != meta["name"]] + [obj]


def child(kind: str, name: str, version: int = 5, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": kind, "metadata": {
        "name": name, "namespace": "shop", "resourceVersion": str(version),
        "labels": {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: "orders", **labels}}}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def cached() -> tuple[CachedKube, Api, Source, Clock]:
    api, source, clock = Api(), Source(), Clock()
    return CachedKube(api, source, ttl=30.0, clock=clock), api, source, clock


def test_children_come_from_the_index_without_a_request() -> None:
    kube, api, source, _ = cached()
    source.put("Service", child("Service", "orders-master", **{names.LABEL_COMPONENT: "redis"}))
    source.put("Service", child("Service", "orders-sentinel", **{names.LABEL_COMPONENT: "sentinel"}))
    source.put("StatefulSet", child("StatefulSet", "orders-redis"))
    assert [o["metadata"]["name"] for o in kube.list("Service", "shop", SELECTOR)] == ["orders-master",
                                                                                       "orders-sentinel"]
    only = kube.list("Service", "shop", f"{SELECTOR},{names.LABEL_COMPONENT}=sentinel")
    assert [o["metadata"]["name"] for o in only] == ["orders-sentinel"]
    assert kube.get("StatefulSet", "shop", "orders-redis") is not None
    assert kube.get("StatefulSet", "shop", "orders-sentinel") is None  # indexed: absent means absent
    assert kube.list("PersistentVolumeClaim", "shop", SELECTOR) == []  # not indexed: asked, kept
    assert api.requests == [("GET", "/api/v1/namespaces/shop/persistentvolumeclaims")]


def test_a_secret_the_user_named_is_read_once_per_period() -> None:
    kube, api, source, clock = cached()
    source.stores["Secret"] = {}
    api.objects["/api/v1/namespaces/shop/secrets/mine"] = {"metadata": {"name": "mine"}, "data": {"password": "eA=="}}
    for _ in range(5):
        assert kube.get("Secret", "shop", "mine") is not None
    assert len(api.requests) == 1
    clock.now += 31
    kube.get("Secret", "shop", "mine")
    assert len(api.requests) == 2


def test_what_the_pass_wrote_is_read_back_until_the_watch_has_it() -> None:
    kube, api, source, _ = cached()
    source.stores["Service"] = {}
    source.put("ConfigMap", child("ConfigMap", "orders-config", version=5))
    written = kube.apply({**child("ConfigMap", "orders-config"), "data": {"redis.conf": "new"}})
    assert written["metadata"]["resourceVersion"] == "10"
    assert kube.get("ConfigMap", "shop", "orders-config")["data"] == {"redis.conf": "new"}  # type: ignore[index]
    created = kube.apply(child("Service", "orders-master"))
    assert created["metadata"]["name"] in [o["metadata"]["name"] for o in kube.list("Service", "shop", SELECTOR)]
    kube.delete("ConfigMap", "shop", "orders-config")
    assert kube.get("ConfigMap", "shop", "orders-config") is None  # gone for us before the watch says so
    source.stores["ConfigMap"] = {}  # the watch saw the deletion
    source.put("Service", child("Service", "orders-master", version=12))
    kube.settle()
    assert kube._written == {}
    assert all(m in ("PATCH", "DELETE") for m, _ in api.requests)  # writes only, no read


def test_a_deletion_the_watch_never_reports_is_forgotten_after_a_while() -> None:
    kube, _, source, clock = cached()
    source.put("ConfigMap", child("ConfigMap", "orders-config"))
    kube.delete("ConfigMap", "shop", "orders-config")
    assert kube.get("ConfigMap", "shop", "orders-config") is None
    clock.now += TOMBSTONE_SECONDS + 1
    assert kube.get("ConfigMap", "shop", "orders-config") is not None
    kube.settle()
    assert kube._written == {}


def test_a_kind_that_is_not_served_lists_nothing_and_is_not_asked_again_within_the_period() -> None:
    kube, api, _, _ = cached()
    assert kube.list("ScaledObject", "shop") == []
    assert kube.list("ScaledObject", "shop") == []
    assert len(api.requests) == 1


def test_the_monitoring_kinds_only_the_operator_writes_are_listed_once_per_ten_periods() -> None:
    kube, api, _, clock = cached()
    path = "/apis/monitoring.coreos.com/v1/namespaces/shop/servicemonitors"
    api.objects[path] = {"items": [child("ServiceMonitor", "orders-redis")]}
    for _ in range(KEEP_OWN_PERIODS):
        assert [o["metadata"]["name"] for o in kube.list("ServiceMonitor", "shop", SELECTOR)] == ["orders-redis"]
        clock.now += 30
    assert api.requests == [("GET", path)]
    clock.now += 1
    kube.list("ServiceMonitor", "shop", SELECTOR)
    assert len(api.requests) == 2
    # A write of the pass is read back at once: the list is asked again.
    kube.apply(child("ServiceMonitor", "orders-sentinel"))
    kube.list("ServiceMonitor", "shop", SELECTOR)
    assert [m for m, _ in api.requests] == ["GET", "GET", "PATCH", "GET"]
    # Every other kind no watch covers: once per period.
    kube.list("PersistentVolumeClaim", "shop", SELECTOR)
    clock.now += 31
    kube.list("PersistentVolumeClaim", "shop", SELECTOR)
    assert [m for m, _ in api.requests].count("GET") == 5


def test_an_object_the_pass_patched_and_someone_else_deleted_is_not_brought_back() -> None:
    # The pass labels a pod; the StatefulSet controller deletes the pod a moment later.
    kube, _, source, _ = cached()
    source.put("Pod", child("Pod", "orders-redis-3"))
    kube.label_pod("shop", "orders-redis-3", {"role": "replica"})
    source.stores["Pod"] = {}  # the watch: deleted
    assert kube.list("Pod", "shop", SELECTOR) == []
    kube.settle()
    assert kube._written == {}


def deleted_and_successor(kube: CachedKube, source: Source) -> tuple[Obj, Obj]:
    """orders-redis-2 (uid-old) in the index, deleted by the pass; the pod the StatefulSet controller
    creates again under its name (uid-new), not in the index yet."""
    old = child("Pod", "orders-redis-2")
    old["metadata"]["uid"] = "uid-old"
    source.put("Pod", old)
    kube.delete("Pod", "shop", "orders-redis-2")
    new = child("Pod", "orders-redis-2", version=7)
    new["metadata"]["uid"] = "uid-new"
    return old, new


def test_a_pod_deleted_by_the_pass_hides_only_itself_not_its_successor_of_the_same_name() -> None:
    # A rolling update deletes orders-redis-2; the StatefulSet controller creates it again at once. The
    # successor must be seen (and its readiness) without waiting for the tombstone to expire.
    kube, api, source, _ = cached()
    _, new = deleted_and_successor(kube, source)
    assert kube.get("Pod", "shop", "orders-redis-2") is None  # the watch has not said so yet
    assert kube.list("Pod", "shop", SELECTOR) == []
    source.put("Pod", new)  # the watch: the old one deleted, its successor created
    assert kube.get("Pod", "shop", "orders-redis-2")["metadata"]["uid"] == "uid-new"  # type: ignore[index]
    assert [p["metadata"]["uid"] for p in kube.list("Pod", "shop", SELECTOR)] == ["uid-new"]
    kube.settle()
    assert kube._written == {}
    assert [m for m, _ in api.requests] == ["DELETE"]


def test_a_deleted_pod_still_in_the_index_stays_hidden_next_to_its_successor() -> None:
    kube, _, source, _ = cached()
    old, new = deleted_and_successor(kube, source)
    for order in ([old, new], [new, old]):
        for key in (("owner", "shop", "orders"), ("name", "shop", "orders-redis-2")):
            source.stores["Pod"][key] = order  # both: the old one's deletion event not handled yet
        assert [p["metadata"]["uid"] for p in kube.list("Pod", "shop", SELECTOR)] == ["uid-new"]
        assert kube.get("Pod", "shop", "orders-redis-2")["metadata"]["uid"] == "uid-new"  # type: ignore[index]
    kube.settle()
    assert ("Pod", "shop", "orders-redis-2") in kube._written  # not caught up: the old one is still listed

"""Reads from what the watches delivered; writes to the API server, remembered until the watch echoes them.

A reconcile pass compares every child with its live copy. :class:`CachedKube` answers those reads from
the operator's indices (fed by watches of the children, which carry the instance label) so that a pass
with nothing to change sends no request at all to the API server. What no watch covers (a Secret the
user named, a StorageClass, a kind whose CRD may not be installed) is read from the API server and kept
for ``ttl`` seconds (the safety-net period): at most one request per object per period; the lists of
the monitoring kinds, whose objects only the operator writes, for ten periods.

Every object the pass writes is remembered with its resourceVersion and preferred over an older copy of
the index, so a pass that follows at once never sees its own write as missing (and writes it again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis_messaging.builders import names
from redis_messaging.kube.client import Kube, KubeError

Obj = dict[str, Any]
IndexKey = tuple[str, ...]

LABELLED_KINDS = frozenset({"Pod", "StatefulSet", "PersistentVolumeClaim", "ConfigMap", "Service", "Secret",
                            "PodDisruptionBudget", "NetworkPolicy"})
"""Kinds indexed when they carry the operator's name label: by ("owner", namespace, instance) and by
("name", namespace, name)."""

NAMESPACE_KINDS = frozenset({"HorizontalPodAutoscaler"})
"""Kinds indexed whole, by ("namespace", namespace)."""

UNWATCHED_OWN_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
"""Kinds no watch covers (their CRDs may not be installed) of which only the operator writes the objects
it lists (monitoring objects carrying its labels): their lists are kept for KEEP_OWN_PERIODS periods,
and forgotten at once when the pass writes one. An edit by someone else is undone within that time."""
KEEP_OWN_PERIODS = 10

MAYBE_UNLABELLED = frozenset({"Secret"})
"""Kinds of which an object the index lacks may still exist (a Secret the user named)."""

TOMBSTONE_SECONDS = 60.0
"""How long a deletion by the pass hides the object the watch has not reported deleted yet. Only that
object (by uid) is hidden: the successor a StatefulSet creates under the same name a moment later is
seen at once, or a rolling update would wait this long for every pod it replaces."""
ECHO_SECONDS = 5.0
"""How long an object the pass wrote is added to what the index holds: its watch event arrives in
milliseconds, and after that the index is the truth (someone else may have deleted it meanwhile)."""


class IndexSource(Protocol):
    def lookup(self, kind: str, key: IndexKey) -> list[Obj] | None:
        """The objects of ``kind`` under ``key``; None when ``kind`` is not indexed (yet)."""


def _version(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _is_deleted(obj: Obj, uids: frozenset[str]) -> bool:
    """Whether ``obj`` is what a deletion of ``uids`` removed (no uid known: any object of that name)."""
    return not uids or (obj.get("metadata") or {}).get("uid") in uids


def parse_selector(selector: str | None) -> dict[str, str]:
    """``a=b,c=d`` -> {a: b, c: d}; other forms are not used by the operator."""
    out: dict[str, str] = {}
    for term in (selector or "").split(","):
        key, sep, value = term.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _matches(obj: Obj, terms: dict[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in terms.items())


class CachedKube(Kube):
    """A :class:`Kube` whose reads come from ``source`` where it indexes them (see module docstring)."""

    def __init__(self, kube: Kube, source: IndexSource | None, *, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(kube.api, kube.field_manager)
        self.base = kube  # every request goes through it (and its discovery cache, shared by every pass)
        self.source = source
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        # key -> (when, the object as written | None: deleted, whether the write may create it, the uids a
        # deletion removed: empty when not known, and then every object of that name is hidden)
        self._written: dict[tuple[str, str, str], tuple[float, Obj | None, bool, frozenset[str]]] = {}
        self._kept: dict[tuple[str, ...], tuple[float, Any]] = {}  # reads of unindexed objects: (until, answer)
        self.requests = 0  # reads that went to the API server

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.base._call(method, path, **kwargs)

    def served_kinds(self, api_version: str, *, ttl: float = 300.0, missing_ttl: float = 60.0) -> frozenset[str]:
        return self.base.served_kinds(api_version, ttl=ttl, missing_ttl=missing_ttl)

    # -- reads --------------------------------------------------------------------------------
    def _indexed(self, kind: str, key: IndexKey) -> list[Obj] | None:
        return None if self.source is None else self.source.lookup(kind, key)

    def _newest(self, kind: str, namespace: str, found: list[Obj]) -> list[Obj]:
        """``found`` with this controller's own writes laid over it: newer copies, deletions, creations."""
        now = self.clock()
        with self._lock:
            written = {name: entry for (k, ns, name), entry in self._written.items() if k == kind and ns == namespace}
        out: dict[str, Obj] = {}
        listed: set[str] = set()
        for obj in found:
            name = obj["metadata"]["name"]
            listed.add(name)
            entry = written.get(name)
            if entry is None:
                out[name] = obj
            elif entry[1] is None:  # deleted by us: hidden until the watch says so, or for a while
                if now - entry[0] > TOMBSTONE_SECONDS or not _is_deleted(obj, entry[3]):
                    out[name] = obj
            else:
                out[name] = entry[1] if _version(entry[1]) > _version(obj) else obj
        for name, (when, created, creates, _) in written.items():
            if name in listed:
                continue
            if created is not None and creates and now - when <= ECHO_SECONDS:  # not seen by the watch yet
                out[name] = created
        return list(out.values())

    def _keep(self, key: tuple[str, ...], read: Callable[[], Any], periods: int = 1) -> Any:
        """What ``read`` answered within ``periods`` times the TTL, else a new answer."""
        now = self.clock()
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and kept[0] > now:
                return kept[1]
        self.requests += 1
        answer = read()
        with self._lock:
            self._kept[key] = (now + self.ttl * periods, answer)
        return answer

    def _forget_kept(self, kind: str, namespace: str) -> None:
        with self._lock:
            for key in [k for k in self._kept if k[1] == kind and k[2] == namespace]:
                del self._kept[key]

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        if kind in LABELLED_KINDS:
            found = self._indexed(kind, ("name", namespace, name))
            if found is not None:
                newest = self._newest(kind, namespace, [o for o in found if o["metadata"]["name"] == name])
                mine = [o for o in newest if o["metadata"]["name"] == name]
                if mine or kind not in MAYBE_UNLABELLED:
                    return dict(mine[0]) if mine else None
        answer: Obj | None = self._keep(("get", kind, namespace, name), lambda: Kube.get(self, kind, namespace, name))
        return answer

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[Obj]:
        terms = parse_selector(selector)
        found: list[Obj] | None = None
        if kind in NAMESPACE_KINDS and not terms:
            found = self._indexed(kind, ("namespace", namespace))
        elif (kind in LABELLED_KINDS and terms.get(names.LABEL_NAME) == names.APP_NAME
              and names.LABEL_INSTANCE in terms):
            found = self._indexed(kind, ("owner", namespace, terms[names.LABEL_INSTANCE]))
        if found is not None:
            return [dict(o) for o in self._newest(kind, namespace, found) if _matches(o, terms)]
        def read() -> list[Obj]:
            try:
                return Kube.list(self, kind, namespace, selector)
            except KubeError as exc:
                if exc.status == 404:  # the kind is not served (its CRD is not installed): nothing to list
                    return []
                raise

        answer: list[Obj] = self._keep(("list", kind, namespace, selector or ""), read,
                                       KEEP_OWN_PERIODS if kind in UNWATCHED_OWN_KINDS else 1)
        return [dict(o) for o in answer]

    # -- writes: remembered until the watch echoes them ------------------------------------------
    def _wrote(self, kind: str, namespace: str, name: str, obj: Obj | None, *, creates: bool = True,
               deleted_uids: frozenset[str] = frozenset()) -> None:
        with self._lock:
            self._written[(kind, namespace, name)] = (self.clock(), obj, creates, deleted_uids)
        self._forget_kept(kind, namespace)

    def apply(self, obj: Obj) -> Obj:
        result = super().apply(obj)
        meta = obj["metadata"]
        self._wrote(obj["kind"], meta.get("namespace", ""), meta["name"], {**result, "kind": obj["kind"]})
        return result

    def create(self, obj: Obj) -> Obj:
        result = super().create(obj)
        meta = obj["metadata"]
        self._wrote(obj["kind"], meta.get("namespace", ""), meta["name"], {**result, "kind": obj["kind"]})
        return result

    def merge_patch(self, kind: str, namespace: str, name: str, patch: Obj, sub: str | None = None) -> Obj:
        result = super().merge_patch(kind, namespace, name, patch, sub)
        if kind in LABELLED_KINDS and sub is None:  # a patch changes an object, it never creates one
            self._wrote(kind, namespace, name, {**result, "kind": kind}, creates=False)
        return result

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> None:
        known = self._indexed(kind, ("name", namespace, name)) if kind in LABELLED_KINDS else None
        uids = frozenset(u for o in known or [] if o["metadata"]["name"] == name
                         for u in [(o.get("metadata") or {}).get("uid")] if u)
        super().delete(kind, namespace, name, propagation)
        self._wrote(kind, namespace, name, None, deleted_uids=uids)

    def settle(self) -> None:
        """Drop what the watch has caught up with (called between passes; keeps the memory small)."""
        if self.source is None:
            return
        with self._lock:
            written = list(self._written.items())
        done = []
        now = self.clock()
        for (kind, namespace, name), (when, obj, creates, uids) in written:
            found = self._indexed(kind, ("name", namespace, name)) if kind in LABELLED_KINDS else None
            if found is None:
                if now - when > TOMBSTONE_SECONDS:
                    done.append((kind, namespace, name))
                continue
            seen = [o for o in found if o["metadata"]["name"] == name]
            if obj is None:  # a deletion: caught up once the deleted object is gone (a successor may be there)
                seen = [o for o in seen if _is_deleted(o, uids)]
            caught_up = (obj is None and not seen) or (obj is not None and seen and _version(seen[0]) >= _version(obj))
            lost = obj is not None and not seen and (not creates or now - when > ECHO_SECONDS)
            if caught_up or lost or now - when > TOMBSTONE_SECONDS:
                done.append((kind, namespace, name))
        with self._lock:
            for key in done:
                self._written.pop(key, None)
            for old in [k for k, (until, _) in self._kept.items() if until <= now]:
                del self._kept[old]


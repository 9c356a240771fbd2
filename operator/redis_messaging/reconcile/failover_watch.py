"""Follow Sentinel failovers as they happen.

One thread per sentinel-mode resource subscribes to ``+switch-master`` (on one reachable Sentinel,
moving on when it goes away or falls silent for :data:`~redis_messaging.redis.sentinel.WATCH_SILENCE_SECONDS`,
and catching up on a switch made meanwhile) and moves the ``role`` pod labels and ``status.master`` at
once, so the master Service points at the new master within a fraction of a second; the periodic pass
is the safety net. The threads live at the operator level (no Kopf daemon), so they add no finalizer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError
from redis_messaging.reconcile.addresses import Addresses
from redis_messaging.redis import sentinel as rs

log = logging.getLogger(__name__)


@dataclass
class Followed:
    """What the watcher did for one ``+switch-master``."""

    old: str | None
    new: str | None
    seconds: float  # from the message's arrival to the labels and status moved


@dataclass
class _Watch:
    owner: Owner
    redis_replicas: int
    sentinel_replicas: int
    password: str | None
    stopped: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class FailoverWatchers:
    def __init__(self, kube: Kube, addresses: Addresses,
                 on_followed: Callable[[Owner, Followed], None] | None = None) -> None:
        self.kube = kube
        self.addresses = addresses
        self.on_followed = on_followed
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(owner: Owner) -> str:
        return f"{owner.namespace}/{owner.name}"

    def ensure(self, owner: Owner, *, redis_replicas: int, sentinel_replicas: int, password: str | None) -> None:
        """Watch this resource; restart the watch when what it depends on changed."""
        key = self._key(owner)
        with self._lock:
            current = self._watches.get(key)
            wanted = (owner.uid, redis_replicas, sentinel_replicas, password)
            if current is not None and current.thread is not None and current.thread.is_alive() and (
                    current.owner.uid, current.redis_replicas, current.sentinel_replicas, current.password) == wanted:
                return
            if current is not None:
                current.stopped.set()
            watch = _Watch(owner, redis_replicas, sentinel_replicas, password)
            watch.thread = threading.Thread(target=self._run, args=(watch,), name=f"failover-watch {key}",
                                            daemon=True)
            self._watches[key] = watch
            watch.thread.start()

    def stop(self, namespace: str, name: str) -> None:
        with self._lock:
            watch = self._watches.pop(f"{namespace}/{name}", None)
        if watch is not None:
            watch.stopped.set()

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.stopped.set()
        for watch in watches:
            if watch.thread is not None:
                watch.thread.join(timeout)

    def watching(self) -> list[str]:
        with self._lock:
            return sorted(k for k, w in self._watches.items() if w.thread is not None and w.thread.is_alive())

    def _run(self, watch: _Watch) -> None:
        owner = watch.owner
        conns = rs.Connections(watch.password, timeout=2.0, tls=self.addresses.tls(owner))

        def sentinels() -> list[rs.Address]:
            return [self.addresses.sentinel(owner, owner.sentinel_pod(i)) for i in range(watch.sentinel_replicas)]

        try:
            rs.watch_switch_master(conns, sentinels, owner.master_name,
                                   lambda event: self._follow(watch, event), watch.stopped)
        finally:
            conns.close()

    def _follow(self, watch: _Watch, event: rs.SwitchMaster) -> None:
        owner = watch.owner
        new = self.addresses.pod_of(owner, event.new[0])
        old = self.addresses.pod_of(owner, event.old[0])
        if new is None:
            log.warning("%s: Sentinel switched to %s:%s, which is none of our pods", self._key(owner), *event.new)
            return
        try:
            pods = self.kube.list("Pod", owner.namespace, names.instance_selector(owner) + ","
                                  + f"{names.LABEL_COMPONENT}={names.COMPONENT_REDIS}")
            current = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(names.LABEL_ROLE)
                       for p in pods}
            # the new master first: the master Service must not point nowhere longer than needed
            if new in current and current[new] != names.ROLE_MASTER:
                self.kube.label_pod(owner.namespace, new, {names.LABEL_ROLE: names.ROLE_MASTER})
            for pod, role in current.items():
                if pod != new and role == names.ROLE_MASTER:
                    self.kube.label_pod(owner.namespace, pod, {names.LABEL_ROLE: names.ROLE_REPLICA})
            self.kube.patch_status("RedisMessaging", owner.namespace, owner.name, {"master": new})
        except KubeError as exc:
            log.warning("%s: could not follow the switch to %s: %s", self._key(owner), new, exc)
            return
        followed = Followed(old, new, time.monotonic() - event.received_at)
        log.info("%s: Sentinel switched the master %s -> %s; labels and status followed in %.3fs",
                 self._key(owner), old, new, followed.seconds)
        involved = {"apiVersion": "redis-messaging.dev/v1alpha1", "kind": "RedisMessaging",
                    "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid}}
        self.kube.event(involved, reason="MasterSwitched",
                        message=f"Sentinel failed over from {old} to {new}; labels and status followed "
                        f"in {followed.seconds * 1000:.0f} ms")
        if self.on_followed is not None:
            self.on_followed(owner, followed)

"""Follow Sentinel failovers as they happen.

One thread per sentinel-mode resource subscribes to ``+switch-master`` (on one reachable Sentinel,
moving on when it goes away or falls silent for :data:`~redis_messaging.redis.sentinel.WATCH_SILENCE_SECONDS`,
and catching up on a switch made meanwhile) and moves the ``role`` pod labels and ``status.master`` at
once, so the master Service points at the new master within a fraction of a second; the periodic pass
is the safety net. Each watch belongs to its resource's controller (no Kopf daemon, so no finalizer),
which stops it when the resource goes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis.addresses import Addresses

log = logging.getLogger(__name__)


@dataclass
class Followed:
    """What the watcher did for one ``+switch-master``."""

    old: str | None
    new: str | None
    seconds: float  # from the message's arrival to the labels and status moved


class FailoverWatch:
    """The ``+switch-master`` watch of one sentinel-mode resource: one thread, restarted when what it
    depends on (replica counts, the password) changes, stopped by :meth:`stop`. ``pods`` lists the
    resource's Redis pods (from the operator's pod index, or the API server)."""

    def __init__(self, kube: Kube, addresses: Addresses, owner: Owner, *,
                 pods: Callable[[], list[dict[str, Any]]] | None = None,
                 on_followed: Callable[[Owner, Followed], None] | None = None) -> None:
        self.kube = kube
        self.addresses = addresses
        self.owner = owner
        self.on_followed = on_followed
        self._pods = pods or self._list_pods
        self._wanted: tuple[int, int, str | None] | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return f"{self.owner.namespace}/{self.owner.name}"

    def ensure(self, *, redis_replicas: int, sentinel_replicas: int, password: str | None) -> None:
        """Watch; restart the watch when what it depends on changed."""
        wanted = (redis_replicas, sentinel_replicas, password)
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._wanted == wanted:
                return
            self._stopped.set()
            self._stopped = threading.Event()
            self._wanted = wanted
            self._thread = threading.Thread(target=self._run, args=(sentinel_replicas, password, self._stopped),
                                            name=f"failover-watch {self.key}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; with ``timeout``, wait for it to end."""
        with self._lock:
            self._stopped.set()
            thread, self._thread, self._wanted = self._thread, None, None
        if thread is not None and timeout is not None:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def _list_pods(self) -> list[dict[str, Any]]:
        return self.kube.list("Pod", self.owner.namespace, names.instance_selector(self.owner))

    def _run(self, sentinel_replicas: int, password: str | None, stopped: threading.Event) -> None:
        owner = self.owner
        conns = rs.Connections(password, timeout=2.0, tls=self.addresses.tls(owner))

        def sentinels() -> list[rs.Address]:
            return [self.addresses.sentinel(owner, owner.sentinel_pod(i)) for i in range(sentinel_replicas)]

        try:
            rs.watch_switch_master(conns, sentinels, owner.master_name, self._follow, stopped)
        finally:
            conns.close()

    def _follow(self, event: rs.SwitchMaster) -> None:
        owner = self.owner
        new = self.addresses.pod_of(owner, event.new[0])
        old = self.addresses.pod_of(owner, event.old[0])
        if new is None:
            log.warning("%s: Sentinel switched to %s:%s, which is none of our pods", self.key, *event.new)
            return
        try:
            current = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(names.LABEL_ROLE)
                       for p in self._pods()
                       if (p["metadata"].get("labels") or {}).get(names.LABEL_COMPONENT) == names.COMPONENT_REDIS}
            # the new master first: the master Service must not point nowhere longer than needed
            if new in current and current[new] != names.ROLE_MASTER:
                self.kube.label_pod(owner.namespace, new, {names.LABEL_ROLE: names.ROLE_MASTER})
            for pod, role in current.items():
                if pod != new and role == names.ROLE_MASTER:
                    self.kube.label_pod(owner.namespace, pod, {names.LABEL_ROLE: names.ROLE_REPLICA})
            self.kube.patch_status("RedisMessaging", owner.namespace, owner.name, {"master": new})
        except KubeError as exc:
            log.warning("%s: could not follow the switch to %s: %s", self.key, new, exc)
            return
        followed = Followed(old, new, time.monotonic() - event.received_at)
        log.info("%s: Sentinel switched the master %s -> %s; labels and status followed in %.3fs",
                 self.key, old, new, followed.seconds)
        involved = {"apiVersion": "redis-messaging.dev/v1alpha1", "kind": "RedisMessaging",
                    "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid}}
        self.kube.event(involved, reason="MasterSwitched",
                        message=f"Sentinel failed over from {old} to {new}; labels and status followed "
                        f"in {followed.seconds * 1000:.0f} ms")
        if self.on_followed is not None:
            self.on_followed(owner, followed)

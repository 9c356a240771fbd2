"""The operator at run time: one object built at start, handed to the handlers through Kopf's memo.

::

    Kopf watch events ──> Operator.observe ──> ResourceController (one per resource)
         (RedisMessaging, owned Pods,                │ newest body, its own steps, connections,
          StatefulSets, PVCs ...)                    │ caches, failover watch; close() frees all
                                                     v
    passes:    Scheduler ── N workers ──> controller.run_pass()   (one at a time per resource)
    autoscale: Scheduler ── M workers ──> Autoscaler.tick(key)    (each resource on its own schedule)

What the operator holds and every controller shares: the settings, the Kubernetes client, the map
from pods to addresses, the Redis client pools, the autoscaler and the metrics. What a resource
owns lives in its controller, created when the resource is first seen and closed where its deletion
is seen.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from redis_messaging import metrics
from redis_messaging.autoscale.loop import Autoscaler
from redis_messaging.builders import names
from redis_messaging.kube.cached import CachedKube
from redis_messaging.kube.client import Kube
from redis_messaging.reconcile.order import generation_of
from redis_messaging.redis.addresses import Addresses, DnsAddresses, MapAddresses
from redis_messaging.redis.nodes import Pools
from redis_messaging.runtime.controller import Key, ResourceController, Shared, key_of
from redis_messaging.runtime.indices import Indices
from redis_messaging.runtime.scheduler import Scheduler
from redis_messaging.settings import OperatorSettings

log = logging.getLogger(__name__)

Obj = dict[str, Any]

OWNED_CHANGE_DELAY = 0.1
"""Seconds from a change of an owned object to its owner's pass: the changes of one moment (a pod and
its StatefulSet's status) make one pass."""

_current: weakref.ReferenceType[Operator] | None = None


def current() -> Operator | None:
    """The operator started last in this process (tests and benchmarks look at it; handlers use memo)."""
    return _current() if _current is not None else None


class Operator:
    def __init__(self, settings: OperatorSettings, kube: Kube, addresses: Addresses, *,
                 registry: metrics.OperatorMetrics | None = None, cache_reads: bool = True) -> None:
        """``cache_reads``: passes read children from the watch-fed indices (False: every read goes to
        ``kube``, for tests that hand in a stand-in for the API server)."""
        self.settings = settings
        self.kube = kube
        self.addresses = addresses
        self.metrics = registry or metrics.OperatorMetrics()
        self.pools = Pools(timeout=settings.redis_timeout_seconds)
        self.autoscaler = Autoscaler(kube, self.pools, status_interval=settings.status_interval_seconds,
                                     reclaim_interval=settings.reclaim_interval_seconds,
                                     reread_interval=settings.resync_seconds, metrics=self.metrics)
        self.controllers: dict[Key, ResourceController] = {}
        self.indices = Indices()
        self._lock = threading.Lock()
        self.passes: Scheduler[ResourceController] = Scheduler(
            self._pass, workers=settings.max_concurrent_passes, period=settings.resync_seconds, name="pass")
        self.ticks: Scheduler[Key] = Scheduler(
            self._tick, workers=settings.autoscale_workers, period=settings.autoscale_tick_seconds,
            name="autoscale", from_start=True)
        ttl = settings.resync_seconds

        def reads(base: Kube) -> Kube:
            return CachedKube(base, self.indices, ttl=ttl) if cache_reads else base

        self.shared = Shared(settings=settings, kube=kube, addresses=addresses, pools=self.pools,
                             autoscaler=self.autoscaler, metrics=self.metrics, wake=self.wake, reads=reads,
                             pods=self._pods if cache_reads else None)

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> Operator:
        kube = Kube.from_environment(settings.field_manager,
                                     connections=settings.max_concurrent_passes + settings.autoscale_workers + 4)
        addresses: Addresses = (MapAddresses.from_file(settings.address_map) if settings.address_map
                                else DnsAddresses())
        return cls(settings, kube, addresses)

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        global _current
        self.passes.start()
        self.ticks.start()
        _current = weakref.ref(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling, wait for the passes and ticks under way, close every controller."""
        global _current
        if _current is not None and _current() is self:
            _current = None
        self.passes.stop(timeout)
        self.ticks.stop(timeout)
        with self._lock:
            controllers = list(self.controllers.values())
            self.controllers.clear()
        for controller in controllers:
            controller.close(timeout=2.0)
        self.autoscaler.clear()
        self.pools.close_all()

    # -- what the watch says ----------------------------------------------------------------------
    def observe(self, event_type: str | None, body: Obj) -> None:
        """A watch event of a RedisMessaging: the one place where resources appear and go."""
        key = key_of(body)
        meta = body.get("metadata") or {}
        log.debug("%s/%s: %s event, resourceVersion %s, generation %s", *key, event_type or "LISTED",
                  meta.get("resourceVersion"), meta.get("generation"))
        uid = str(meta.get("uid", ""))
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        with self._lock:
            controller = self.controllers.get(key)
            if controller is not None and (gone or (uid and controller.uid != uid)):
                del self.controllers[key]  # deleted, or re-created under the same name
                stale: ResourceController | None = controller
                controller = None
            else:
                stale = None
            if not gone and controller is None:
                controller = self.controllers[key] = ResourceController(self.shared, body)
                created = True
            else:
                created = False
        if stale is not None:
            self._close(stale)
        if gone or controller is None:
            return
        if created:
            self.passes.wake(controller)
        elif controller.update(body):
            log.debug("%s/%s: generation %s: a pass now", *key, generation_of(body))
            self.passes.wake(controller)

    def owned_changed(self, namespace: str, instance: str | None) -> None:
        """A pod, StatefulSet or claim of the resource ``instance`` changed: its pass, soon (events of
        one moment are taken together)."""
        if not instance:
            return
        controller = self.controller(namespace, instance)
        if controller is not None:
            self.wake(controller, OWNED_CHANGE_DELAY)

    def _pods(self, owner: Any) -> list[Obj]:
        found = self.indices.lookup("Pod", ("owner", owner.namespace, owner.name))
        return found if found is not None else self.kube.list("Pod", owner.namespace, names.instance_selector(owner))

    def wake(self, controller: ResourceController, after: float = 0.0) -> None:
        """A pass of ``controller`` within ``after`` seconds (from a failover watch, an owned object...)."""
        if not controller.closed:
            self.passes.wake(controller, after)

    def controller(self, namespace: str, name: str) -> ResourceController | None:
        with self._lock:
            return self.controllers.get((namespace, name))

    def _close(self, controller: ResourceController) -> None:
        self.passes.remove(controller)
        self.ticks.remove(controller.key)
        controller.close()

    # -- the work ---------------------------------------------------------------------------------
    def _pass(self, controller: ResourceController) -> float | None:
        retry = controller.run_pass()
        if controller.closed:
            return None
        if controller.key in self.autoscaler.resources():
            self.ticks.add(controller.key, after=0.0)
        else:
            self.ticks.remove(controller.key)
        return retry

    def _tick(self, key: Key) -> float | None:
        self.autoscaler.tick(key)
        return None

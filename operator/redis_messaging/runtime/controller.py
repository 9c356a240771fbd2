"""One RedisMessaging resource's controller: everything the operator keeps for it, and one close().

A :class:`ResourceController` is created when the operator first sees a resource and closed at the one
place where its deletion is seen (:meth:`~redis_messaging.runtime.operator.Operator.observe`). It holds:

- the newest body the watch delivered and the highest generation a pass has handled (a pass always
  runs on the newest body, never on an older generation);
- its own reconcile :class:`~redis_messaging.reconcile.sync.Context`: one instance of every step, each
  with the connections and caches of this resource only (topology, rolling update, ACL, TLS, streams);
- its failover watch (Sentinel mode) and its place in the autoscaler and in the Redis client pools.

:meth:`close` frees all of it: connections closed, watch thread stopped, autoscaler state and metrics
dropped, TLS key-pair files released. Nothing of a deleted resource is left in the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis_messaging import metrics
from redis_messaging.autoscale.loop import Autoscaler
from redis_messaging.builders.names import Owner
from redis_messaging.kube.cached import CachedKube
from redis_messaging.kube.client import Kube
from redis_messaging.modes import MODES
from redis_messaging.modes.base import Watch
from redis_messaging.reconcile.acl import AclStep
from redis_messaging.reconcile.order import PassOrder, generation_of
from redis_messaging.reconcile.streams import StreamsStep
from redis_messaging.reconcile.sync import Context, Outcome, owner_of, sync
from redis_messaging.reconcile.tls import TlsStep
from redis_messaging.redis.addresses import Addresses
from redis_messaging.redis.nodes import Node, Placement, Pools
from redis_messaging.settings import OperatorSettings

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Shared:
    """What every controller uses and none owns: built once by the operator."""

    settings: OperatorSettings
    kube: Kube
    addresses: Addresses
    pools: Pools
    autoscaler: Autoscaler
    metrics: metrics.OperatorMetrics
    wake: Callable[[ResourceController, float], None]  # ask for a pass of a controller within n seconds
    reads: Callable[[Kube], Kube] = lambda kube: kube  # what a controller's passes read through
    pods: Callable[[Owner], list[Obj]] | None = None  # the resource's pods from the operator's index


def key_of(body: Obj) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


class ResourceController:
    def __init__(self, shared: Shared, body: Obj) -> None:
        self.shared = shared
        self.key = key_of(body)
        self.uid = str((body.get("metadata") or {}).get("uid", ""))
        self.owner = owner_of(body, shared.settings.cluster_domain)
        self._body = dict(body)
        self._lock = threading.Lock()  # guards the body; passes are serialised by the scheduler
        self.closed = False
        self.passes = 0
        self._unchanged = 0  # passes in a row that asked to come back and found nothing new
        timeout = shared.settings.redis_timeout_seconds
        kube, addresses = shared.reads(shared.kube), shared.addresses
        self.kube = kube
        self.context = Context(
            kube=kube,
            cluster_domain=shared.settings.cluster_domain,
            topologies={name: mode.topology(addresses, timeout=timeout) for name, mode in MODES.items()},
            rollers={name: mode.roller(kube, addresses, timeout=timeout) for name, mode in MODES.items()},
            streams=StreamsStep(kube, addresses, shared.pools),
            acl=AclStep(kube, addresses, timeout=timeout),
            tls=TlsStep(kube, addresses, timeout=timeout),
            operator_peer=shared.settings.operator_peer,
            passes=PassOrder(),
        )
        self.watch: Watch | None = None
        self._watch_mode: str | None = None

    def __repr__(self) -> str:
        return f"ResourceController({self.key[0]}/{self.key[1]})"

    # -- the body ---------------------------------------------------------------------------------
    def update(self, body: Obj) -> bool:
        """A newer body from the watch; whether its generation changed (the spec: a pass is due)."""
        with self._lock:
            before = generation_of(self._body)
            # the watch's copy wins over the one kept unless it is of an older generation
            self._body = PassOrder.newest(self._body, body)
            return generation_of(self._body) != before

    @property
    def body(self) -> Obj:
        with self._lock:
            return dict(self._body)

    # -- one pass ---------------------------------------------------------------------------------
    def run_pass(self) -> float | None:
        """One reconcile pass on the newest body; when to come back (None: the safety-net period)."""
        if self.closed:
            return None
        body = self.body
        labels = {"namespace": self.key[0], "resource": self.key[1]}
        started = time.monotonic()
        try:
            outcome = sync(body, self.context)
        except Exception:
            self.shared.metrics.reconcile_errors.inc(**labels)
            raise
        finally:
            self.shared.metrics.reconcile_total.inc(**labels)
            self.shared.metrics.reconcile_seconds.observe(time.monotonic() - started, **labels)
            self.passes += 1
        if not self.closed:
            self._after(body, outcome)
        if isinstance(self.kube, CachedKube):
            self.kube.settle()
        if outcome.actions:
            log.info("pass of %s/%s: %s", *self.key, "; ".join(outcome.actions))
        after = self._next(outcome)
        log.debug("%s/%s: pass %d done in %.3fs; next in %s s", *self.key, self.passes, time.monotonic() - started,
                  "the period" if after is None else f"{after:.2f}")
        return after

    def _next(self, outcome: Outcome) -> float | None:
        """When to come back. A pass that asked to come back soon (waiting on Redis, Sentinel, a Secret)
        and then found the same as the last time waits twice as long each time, up to the safety-net
        period: a resource whose pods never answer costs a pass per period, not one every 2 s. What
        Kubernetes changes (a pod, a StatefulSet, the spec) wakes a pass at once anyway."""
        if outcome.retry_after is None:
            self._unchanged = 0
            return None
        if outcome.actions or outcome.status_written or outcome.stale:
            self._unchanged = 0
        else:
            self._unchanged = min(self._unchanged + 1, 16)
        delay: float = outcome.retry_after * 2 ** self._unchanged
        return min(delay, self.shared.settings.resync_seconds)

    def _after(self, body: Obj, outcome: Outcome) -> None:
        """Keep the failover watch (Sentinel mode) and the autoscaler fed with what the pass learnt."""
        if outcome.stale:  # nothing was done on an older body; the pass on the newest one follows
            return
        autoscaler = self.shared.autoscaler
        if outcome.spec is None:  # nothing to watch or scale while the spec cannot be served
            autoscaler.forget(*self.key)
            self._stop_watch()
            return
        mode = MODES[outcome.spec.mode]
        if self._watch_mode != mode.name:  # the mode is immutable; a new resource under the same name is not
            self._stop_watch()
            pods = self.shared.pods
            self.watch = mode.watch(self.shared.kube, self.shared.addresses, self.owner,
                                    pods=(lambda: pods(self.owner)) if pods is not None else None,
                                    on_followed=self._followed)
            self._watch_mode = mode.name
        if self.watch is not None:
            self.watch.ensure(redis_replicas=outcome.spec.redis.replicas,
                              sentinel_replicas=outcome.spec.sentinel.replicas, password=outcome.password,
                              down_after_milliseconds=outcome.spec.sentinel.down_after_milliseconds)
        report = outcome.streams
        autoscaler.place(body, self.owner, outcome.spec, outcome.password,
                         placement=report.placement if report is not None else None,
                         conflicts=report.conflicts if report is not None else {},
                         trimmed=report.trimmed if report is not None else {}, tls=outcome.tls)

    def _followed(self, owner: Owner, followed: Any) -> None:
        # A whole pass at once: the old master, the Sentinels' view and the conditions need a look
        # that the next periodic pass would give up to a period later.
        self.shared.wake(self, 0.0)
        if followed.new is not None:
            master = Node(followed.new, self.shared.addresses.redis(owner, followed.new))
            self.shared.autoscaler.follow(owner.namespace, owner.name, Placement(master))

    def _stop_watch(self, timeout: float | None = None) -> None:
        if self.watch is not None:
            self.watch.stop(timeout)
            self.watch = None
        self._watch_mode = None

    # -- the end ----------------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Free everything kept for this resource (its deletion was seen, or the operator stops)."""
        if self.closed:
            return
        self.closed = True
        self._stop_watch(timeout)
        ctx = self.context
        for topology in ctx.topologies.values():
            topology.close()
        for roller in ctx.rollers.values():
            roller.close()
        self.shared.autoscaler.forget(*self.key)
        self.shared.pools.forget(self.key)
        self.shared.addresses.set_tls(self.owner, None)
        self.shared.metrics.forget_resource(*self.key)


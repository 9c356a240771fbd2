"""Follow Sentinel failovers as they happen.

One thread per sentinel-mode resource subscribes to ``+switch-master`` (on one reachable Sentinel,
moving on when it goes away or falls silent for :data:`~redis_messaging.redis.sentinel.WATCH_SILENCE_SECONDS`,
and catching up on a switch made meanwhile) and moves the ``role`` pod labels and ``status.master`` at
once, so the master Service points at the new master within a fraction of a second; the periodic pass
is the safety net. Each watch belongs to its resource's controller (no Kopf daemon, so no finalizer),
which stops it when the resource goes.

It also fences a master the Sentinels are failing over. Between the promotion of a replica and the
moment Sentinel re-points the others, the old master, if it answers again (a partition healed, a
frozen process resumed), still takes writes, and a replica that still follows it acknowledges them
(``WAIT``); the promoted replica lacks them, and both are re-synced from it. So when a failover of the
master begins (``+try-failover`` of the Sentinel watched, or its ``+vote-for-leader`` for the one that
leads: every Sentinel asked votes), the watch pauses the old master's writes (``CLIENT PAUSE ...
WRITE``, retried every 100 ms while it does not answer) for at least :func:`fence_seconds`, longer
while a Sentinel still fails over or a majority names another master, until it is a replica; once the
failover is over and no replica follows it, the watch makes it the new master's replica itself (Sentinel
would, later: a paused master holds back Sentinel's commands, queued behind its hello message) and
ends the pause. A write sent meanwhile waits, then fails on a replica instead of being acknowledged
and lost. ``+odown`` alone does not start a fence: a paused master looks down to the Sentinels (their
hello and PING wait behind the pause), so a fence without a failover would keep the master "down".

The pause alone is not enough when the old master is frozen (SIGSTOP, a stalled node): the writes its
clients sent meanwhile wait in its sockets, and when it resumes it runs them before the pause that
waits beside them, and a replica that still follows it acknowledges them. So while the fence holds, a
second thread looks at the other Redis pods every FENCE_DETACH_POLL_SECONDS, and as soon as one of them
is a master promoted from the history the old master's replicas follow (its ``master_replid2``: the
replica Sentinel promotes), every replica that still follows the old master is made a replica of the
promoted one: what Sentinel sends next (about a second later), and the same command whether it lands
before Sentinel's or after. Not before the promotion: until then the replicas keep receiving what the
old master acknowledged, and the one Sentinel promotes must have it. A fence that ends without a
failover (Sentinel gave up on the promotion) points the replicas it moved back at the old master.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis import switchover
from redis_messaging.redis.addresses import Addresses

log = logging.getLogger(__name__)


FENCE_RETRY_SECONDS = 0.1  # between attempts to pause a master that does not answer
FENCE_TIMEOUT_SECONDS = 0.3  # the fence's connection and command timeout
FENCE_PAUSE_SECONDS = 5.0  # each pause; renewed when less than FENCE_RENEW_SECONDS is left
FENCE_RENEW_SECONDS = 3.0
FENCE_MAX_SECONDS = 300.0
FENCE_DETACH_POLL_SECONDS = 0.05  # how often the fence looks for a promoted replica


def fence_seconds(down_after_milliseconds: int) -> float:
    """How long a master the Sentinels fail over keeps its writes paused at most: twice the time
    Sentinel waits before calling it down (a failover's election, promotion and re-pointing take about
    that), between 5 and 30 seconds."""
    return min(30.0, max(5.0, 2 * down_after_milliseconds / 1000))


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
        self._wanted: tuple[int, int, str | None, float] | None = None
        self._fences: dict[str, threading.Thread] = {}  # pod -> the thread fencing it
        self._fence_stopped = threading.Event()  # only stop(): a restarted watch keeps its fences
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return f"{self.owner.namespace}/{self.owner.name}"

    def ensure(self, *, redis_replicas: int, sentinel_replicas: int, password: str | None,
               down_after_milliseconds: int = 0) -> None:
        """Watch; restart the watch when what it depends on changed. With ``down_after_milliseconds``
        (the Sentinels' setting), a master being failed over is fenced (see the module)."""
        wanted = (redis_replicas, sentinel_replicas, password,
                  fence_seconds(down_after_milliseconds) if down_after_milliseconds > 0 else 0.0)
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._wanted == wanted:
                return
            self._stopped.set()
            self._stopped = threading.Event()
            self._wanted = wanted
            self._thread = threading.Thread(target=self._run,
                                            args=(sentinel_replicas, password, wanted[3], self._stopped),
                                            name=f"failover-watch {self.key}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; with ``timeout``, wait for it to end."""
        with self._lock:
            self._stopped.set()
            self._fence_stopped.set()
            thread, self._thread, self._wanted = self._thread, None, None
        if thread is not None and timeout is not None:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def _list_pods(self) -> list[dict[str, Any]]:
        return self.kube.list("Pod", self.owner.namespace, names.instance_selector(self.owner))

    def _run(self, sentinel_replicas: int, password: str | None, fence: float, stopped: threading.Event) -> None:
        owner = self.owner
        conns = rs.Connections(password, timeout=2.0, tls=self.addresses.tls(owner))

        def sentinels() -> list[rs.Address]:
            return [self.addresses.sentinel(owner, owner.sentinel_pod(i)) for i in range(sentinel_replicas)]

        def on_down(event: rs.MasterDown) -> None:
            self._start_fence(event, password, fence, sentinels)

        try:
            rs.watch_switch_master(conns, sentinels, owner.master_name, self._follow, stopped,
                                   on_down=on_down if fence > 0 else None)
        finally:
            conns.close()

    def _start_fence(self, event: rs.MasterDown, password: str | None, seconds: float,
                     sentinels: Callable[[], list[rs.Address]]) -> None:
        pod = self.addresses.pod_of(self.owner, event.address[0])
        if pod is None:
            log.warning("%s: Sentinel fails over %s:%s, which is none of our pods", self.key, *event.address)
            return
        with self._lock:
            running = self._fences.get(pod)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._fence, args=(pod, event, password, seconds, sentinels),
                                      name=f"fence {self.key}/{pod}", daemon=True)
            self._fences[pod] = thread
        thread.start()

    def _fence(self, pod: str, event: rs.MasterDown, password: str | None, seconds: float,
               sentinels: Callable[[], list[rs.Address]]) -> None:
        """Keep ``pod``'s writes paused (see the module): at least ``seconds``, and beyond that while a
        Sentinel still fails over or a majority names another master; it ends when ``pod`` is a replica,
        or once the failover is over and no replica follows ``pod``: then it is made the replica of the
        new master (what Sentinel does later: a paused master holds back Sentinel's own commands, queued
        behind its hello message) and the pause ends. At most FENCE_MAX_SECONDS. The pause is renewed
        before anything else is looked at, so that it never lapses while Sentinels are slow to answer."""
        stopped = self._fence_stopped
        address = self.addresses.redis(self.owner, pod)
        conns = rs.Connections(password, timeout=FENCE_TIMEOUT_SECONDS, tls=self.addresses.tls(self.owner))
        first_until = event.received_at + seconds
        paused_at: float | None = None
        paused_until = 0.0
        detached: set[str] = set()
        fence_over = threading.Event()
        detacher = threading.Thread(target=self._detach_on_promotion, args=(pod, password, detached, fence_over),
                                    name=f"fence-detach {self.key}/{pod}", daemon=True)
        detacher.start()

        def pause() -> None:
            nonlocal paused_until
            switchover.pause_writes(conns, address, int(FENCE_PAUSE_SECONDS * 1000))
            paused_until = time.monotonic() + FENCE_PAUSE_SECONDS

        try:
            while not stopped.is_set():
                now = time.monotonic()
                if now - event.received_at > FENCE_MAX_SECONDS:
                    log.warning("%s: %s still a master %.0fs after the failover began; the fence ends", self.key,
                                pod, FENCE_MAX_SECONDS)
                    return
                try:
                    if paused_at is None:
                        if now >= first_until:
                            log.warning("%s: could not pause the writes of %s (it did not answer) within %.0fs",
                                        self.key, pod, seconds)
                            return
                        pause()
                        paused_at = time.monotonic()
                        log.warning("%s: Sentinel reported %s for master %s; its writes are paused (%.2fs later) "
                                    "until it is a replica", self.key, event.event, pod, paused_at - event.received_at)
                        self._post_event("MasterFenced", f"Sentinel reported {event.event} for master {pod}: its "
                                         "writes are paused until it is a replica, so that none is acknowledged "
                                         "that the replica being promoted lacks")
                    else:
                        if now < first_until and paused_until - now < FENCE_RENEW_SECONDS:
                            pause()
                        node = rs.observe_redis(conns, address)
                        if node.role == "slave":
                            switchover.unpause(conns, address)
                            log.info("%s: %s is a replica now; its writes were paused for %.1fs", self.key, pod,
                                     time.monotonic() - paused_at)
                            return
                        other, failing_over = self._sentinels_view(conns, sentinels(), event.address)
                        if other is not None and not failing_over and node.reachable and not node.replicas:
                            rs.replicate(conns, address, other)
                            switchover.unpause(conns, address)
                            log.info("%s: the Sentinels failed over to %s:%s and no replica follows %s: made it "
                                     "their replica; its writes were paused for %.1fs", self.key, *other, pod,
                                     time.monotonic() - paused_at)
                            return
                        if other is not None or failing_over:
                            if paused_until - time.monotonic() < FENCE_RENEW_SECONDS:
                                pause()
                        elif now >= first_until and now >= paused_until:
                            fence_over.set()
                            detacher.join(5)
                            self._reattach(conns, pod, address, detached)
                            log.info("%s: no failover of %s happened; its writes resume", self.key, pod)
                            return
                except rs.ERRORS as exc:
                    log.debug("%s: fencing %s: %s", self.key, pod, exc)
                stopped.wait(FENCE_RETRY_SECONDS if paused_at is None else 0.25)
        finally:
            fence_over.set()
            conns.close()

    def _redis_pod_names(self) -> list[str]:
        try:
            pods = self._pods()
        except Exception as exc:  # a slow or failing API server must not hold the fence up
            log.debug("%s: pods not listed: %s", self.key, exc)
            return []
        return [str(p["metadata"]["name"]) for p in pods]

    def _detach_on_promotion(self, pod: str, password: str | None, detached: set[str],
                             fence_over: threading.Event) -> None:
        """Until ``fence_over``: once a replica of ``pod`` is promoted, the others follow it instead."""
        conns = rs.Connections(password, timeout=FENCE_TIMEOUT_SECONDS, tls=self.addresses.tls(self.owner))
        try:
            while not fence_over.is_set() and not self._fence_stopped.is_set():
                nodes = {other: rs.observe_redis(conns, self.addresses.redis(self.owner, other))
                         for other in self._redis_pod_names() if other != pod}
                followers = {other: node for other, node in nodes.items()
                             if node.reachable and node.role == "slave" and node.master is not None
                             and self.addresses.pod_of(self.owner, node.master[0]) == pod}
                for other, node in followers.items():
                    # Promoted from the history this replica follows (its replid2 is that history): the
                    # replica Sentinel chose, never a master from elsewhere.
                    promoted = next((p for p, n in nodes.items() if n.is_master and n.replid2
                                     and n.replid2 == node.replid), None)
                    if promoted is not None:
                        self._detach(conns, other, pod, promoted, detached)
                fence_over.wait(FENCE_DETACH_POLL_SECONDS)
        finally:
            conns.close()

    def _detach(self, conns: rs.Connections, other: str, pod: str, promoted: str, detached: set[str]) -> None:
        """``REPLICAOF`` the promoted replica, what Sentinel sends next: the same command whether it lands
        before Sentinel's or after it."""
        try:
            rs.replicate(conns, self.addresses.redis(self.owner, other), self.addresses.redis(self.owner, promoted))
        except rs.ERRORS as exc:
            log.debug("%s: re-pointing %s from %s to %s: %s", self.key, other, pod, promoted, exc)
            return
        if other not in detached:
            log.warning("%s: %s promoted while %s still followed %s, the master the Sentinels fail over: it "
                        "follows %s now, and acknowledges none of the old master's writes", self.key, promoted,
                        other, pod, promoted)
        detached.add(other)

    def _reattach(self, conns: rs.Connections, pod: str, address: rs.Address, detached: set[str]) -> None:
        """No failover happened (Sentinel gave up on the promotion): the replicas re-pointed from ``pod``
        follow it again, unless they follow it already."""
        for other in sorted(detached):
            where = self.addresses.redis(self.owner, other)
            try:
                node = rs.observe_redis(conns, where)
                if node.reachable and node.role == "slave" and (
                        node.master is None or self.addresses.pod_of(self.owner, node.master[0]) != pod):
                    rs.replicate(conns, where, address)
                    log.info("%s: %s follows %s again", self.key, other, pod)
            except rs.ERRORS as exc:
                log.warning("%s: %s not re-attached to %s: %s (the next pass re-points it)", self.key, other,
                            pod, exc)

    def _sentinels_view(self, conns: rs.Connections, sentinels: list[rs.Address],
                        master: rs.Address) -> tuple[rs.Address | None, bool]:
        """The master other than ``master`` that a majority of the Sentinels names (None: no such one),
        and whether one of them is failing over (a leader names the old master until it is done)."""
        seen = [node for sentinel in sentinels
                if (node := rs.observe_sentinel(conns, sentinel, self.owner.master_name)).monitoring]
        named = Counter(node.master for node in seen if node.master not in (None, master))
        other = next((a for a, n in named.most_common(1) if 2 * n > len(sentinels)), None)
        return other, any(node.failing_over for node in seen)

    def _post_event(self, reason: str, message: str) -> None:
        """An Event from another thread: a slow or failing API server must not hold a fence up."""
        def post() -> None:
            try:
                self._event(reason, message)
            except Exception as exc:
                log.warning("%s: Event %s not posted: %s", self.key, reason, exc)

        threading.Thread(target=post, name=f"event {self.key}", daemon=True).start()

    def _event(self, reason: str, message: str) -> None:
        owner = self.owner
        involved = {"apiVersion": "redis-messaging.dev/v1alpha1", "kind": "RedisMessaging",
                    "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid}}
        self.kube.event(involved, reason=reason, message=message)

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
        self._event("MasterSwitched", f"Sentinel failed over from {old} to {new}; labels and status followed "
                    f"in {followed.seconds * 1000:.0f} ms")
        if self.on_followed is not None:
            self.on_followed(owner, followed)

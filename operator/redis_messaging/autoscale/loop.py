"""The autoscale loop: measure every group, decide, scale the consumers, claim back orphaned entries.

One operator-level asyncio task (no Kopf timer or daemon: those add finalizers) ticks every
``autoscale_tick_seconds``. For every resource the reconcile pass has placed (see :meth:`Autoscaler.place`):

1. one pipelined :func:`~redis_messaging.redis.streams.collect` per Redis node that owns its streams;
2. for every group with ``autoscale`` that no other autoscaler targets: read the workload's scale
   subresource, :func:`~redis_messaging.autoscale.decide.decide`, and when the count changes patch the
   scale subresource, after setting pod-deletion-costs before a scale-down (an Event says why);
3. every ``reclaim_interval_seconds``: the consumers of every declared group (one round trip per node;
   groups with ``reclaim: false`` left out), autoscaled or not, are compared with the pods of the
   namespace (one list, finished pods left out): a consumer's name is its pod's name, whoever scales
   the pods. Entries pending with consumers whose pod is gone or finished (e.g. evicted) are claimed by
   a live consumer, and those consumers are deleted once empty. Before that, the groups with
   ``maxDeliveries`` move their entries delivered too often to their dead-letter stream (a bounded
   part of their pending list per sweep, the next sweep going on from there; an Event says so);
4. ``status.streams`` is written when something a user acts on changed, otherwise at most every
   ``status_interval_seconds``, and never when nothing changed.

Resources that declare streams but autoscale nothing are measured (and swept) once per status interval only.
Decision state lives in memory: :func:`decide` is restart-safe (a fresh state never scales down at
once), so nothing is persisted. Decisions are timed by the loop's monotonic clock, never by the wall
clock, which only stamps what the status shows (lastScaleTime). Every blocking call runs in a worker
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api import models
from redis_messaging.autoscale import policy
from redis_messaging.autoscale.decide import GroupSample, GroupState, Sample, decide
from redis_messaging.autoscale.policy import GroupKey, GroupView
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError
from redis_messaging.metrics import OperatorMetrics
from redis_messaging.redis import nodes
from redis_messaging.redis.nodes import Node, NodeUnavailable, Placement, Pools
from redis_messaging.redis.streams import GroupMeasurement, StreamsNode, Target, collect_node
from redis_messaging.redis.tls import ClientTls

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

RECLAIM_MIN_IDLE_MS = 1000
"""Entries delivered less than this long ago are not claimed from a consumer whose pod is gone."""


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Declared:
    """What the last reconcile pass said about a resource; replaced as a whole, never mutated."""

    owner: Owner
    involved: Obj  # apiVersion, kind, metadata: what Events are recorded on
    spec: models.RedisMessagingSpec
    password: str | None
    placement: Placement | None
    conflicts: Mapping[GroupKey, str]
    tls: ClientTls | None = None

    @property
    def autoscales(self) -> bool:
        return (any(g.autoscale is not None for s in self.spec.streams for g in s.groups)
                or any(q.autoscale is not None for q in self.spec.queues))

    @property
    def sweeps(self) -> bool:
        """Some group's consumers are compared with the pods (every group unless ``reclaim: false``)."""
        return any(g.reclaim for s in self.spec.streams for g in s.groups)

    @property
    def watches(self) -> bool:
        return bool(self.spec.streams or self.spec.queues or self.spec.channels)


@dataclass
class _Runtime:
    """What the loop keeps between ticks of one resource (only the loop touches it, one tick at a time)."""

    declared: Declared
    states: dict[tuple[str, str, str, str], GroupState] = field(default_factory=dict)
    views: dict[GroupKey, GroupView] = field(default_factory=dict)
    lengths: dict[str, int | None] = field(default_factory=dict)
    stream_errors: dict[str, str] = field(default_factory=dict)
    orphaned: dict[GroupKey, int] = field(default_factory=dict)
    dead_lettered: dict[GroupKey, int] = field(default_factory=dict)  # since the operator started
    dead_letter_from: dict[GroupKey, str] = field(default_factory=dict)  # where the next sweep goes on
    trimmed: dict[str, int] = field(default_factory=dict)  # since the operator started; under the lock
    written: dict[str, list[Obj]] | None = None  # status.streams/queues/channels as last written (or found)
    subscribers: dict[str, int | None] = field(default_factory=dict)
    channel_errors: dict[str, str] = field(default_factory=dict)
    written_at: float = float("-inf")
    measured_at: float = float("-inf")
    reclaimed_at: float = float("-inf")
    pods_listed_at: float = float("-inf")
    # replicas of each target as last read from (or written to) its scale subresource, and when
    scales: dict[tuple[str, str], tuple[float, Obj]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scaled:
    """One scale patch, for tests and benchmarks."""

    namespace: str
    resource: str
    stream: str
    group: str
    target: str
    old: int
    new: int
    reason: str
    tick_to_patch: float  # seconds from the tick start to the patch answered


class Autoscaler:
    def __init__(self, kube: Kube, pools: Pools, *, status_interval: float = 10.0,
                 reclaim_interval: float = 10.0, reread_interval: float = 30.0,
                 metrics: OperatorMetrics | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 on_scaled: Callable[[Scaled], None] | None = None) -> None:
        self.kube = kube
        self.pools = pools
        self.status_interval = status_interval
        self.reclaim_interval = reclaim_interval
        # At rest the loop asks the API server nothing: a target's replicas are read again only this
        # often (or before a change), and consumer pods are listed only when entries are pending or
        # this often (to delete the empty consumers of pods that are gone).
        self.reread_interval = reread_interval
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock
        self.monotonic = monotonic
        self.on_scaled = on_scaled
        self._resources: dict[Key, _Runtime] = {}
        self._lock = threading.Lock()

    # -- fed by the reconcile pass and the failover watch ------------------------------------------
    def place(self, body: Obj, owner: Owner, spec: models.RedisMessagingSpec, password: str | None,
              placement: Placement | None, conflicts: Mapping[GroupKey, str] | None,
              trimmed: Mapping[str, int], tls: ClientTls | None = None) -> None:
        """What a pass learnt. ``placement`` None keeps the last known one (the master may be back in
        a moment); ``conflicts`` None (not checked) keeps the last ones."""
        key = (owner.namespace, owner.name)
        meta = body.get("metadata") or {}
        involved = {"apiVersion": body.get("apiVersion", models.API_VERSION), "kind": models.KIND,
                    "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": meta.get("uid", "")}}
        with self._lock:
            runtime = self._resources.get(key)
            if not (spec.streams or spec.queues or spec.channels):
                if runtime is not None:
                    self._forget_locked(key)
                return
            if runtime is None:
                declared = Declared(owner, involved, spec, password, placement, conflicts or {}, tls)
                runtime = self._resources[key] = _Runtime(declared)
                found = body.get("status") or {}
                runtime.written = {k: found[k] for k in ("streams", "queues", "channels")
                                   if isinstance(found.get(k), list)} or None
            else:
                old = runtime.declared
                runtime.declared = Declared(owner, involved, spec, password, placement or old.placement,
                                            old.conflicts if conflicts is None else conflicts, tls)
            for stream, removed in trimmed.items():
                runtime.trimmed[stream] = runtime.trimmed.get(stream, 0) + removed
                self.metrics.trimmed.inc(removed, namespace=owner.namespace, resource=owner.name, stream=stream)

    def follow(self, namespace: str, name: str, placement: Placement) -> None:
        """The master moved (Sentinel's +switch-master): measure the new one from the next tick."""
        with self._lock:
            runtime = self._resources.get((namespace, name))
            if runtime is not None:
                runtime.declared = dataclasses.replace(runtime.declared, placement=placement)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._forget_locked((namespace, name))

    def _forget_locked(self, key: Key) -> None:
        if self._resources.pop(key, None) is not None:
            self.pools.forget(key)
            self.metrics.forget_resource(*key)

    def resources(self) -> list[Key]:
        with self._lock:
            return list(self._resources)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._resources):
                self._forget_locked(key)

    # -- one tick of one resource ------------------------------------------------------------------
    def tick(self, key: Key, started: float | None = None) -> list[Scaled]:
        """Measure, decide, scale, reclaim and report for one resource. Never raises."""
        started = self.monotonic() if started is None else started
        with self._lock:
            runtime = self._resources.get(key)
        if runtime is None:
            return []
        try:
            return self._tick(runtime, started)
        except Exception:  # a bug must not stop the loop for every other resource
            log.exception("autoscaler tick of %s/%s failed", *key)
            return []

    def _tick(self, runtime: _Runtime, started: float) -> list[Scaled]:
        declared = runtime.declared
        if declared.placement is None:
            return []
        now = self.monotonic()
        if not declared.autoscales and now - runtime.measured_at < self.status_interval:
            return []
        runtime.measured_at = now
        sweep = declared.sweeps and now - runtime.reclaimed_at >= self.reclaim_interval
        if sweep:
            runtime.reclaimed_at = now
        owner = declared.owner
        declared_keys = {(s.name, g.name) for s in declared.spec.streams for g in s.groups}
        declared_keys |= {nodes.queue_key(q.name) for q in declared.spec.queues}
        for stale in set(runtime.views) - declared_keys:
            runtime.views.pop(stale)
            runtime.orphaned.pop(stale, None)
            runtime.dead_lettered.pop(stale, None)
            runtime.dead_letter_from.pop(stale, None)
            self.metrics.forget_group(owner.namespace, owner.name, *stale)
        for state_key in [k for k in runtime.states if (k[0], k[1]) not in declared_keys]:
            runtime.states.pop(state_key)
        scaled: list[Scaled] = []
        pods: dict[str, policy.PodView] | None = None
        subscribers: dict[str, int | None] = {}
        runtime.channel_errors.clear()
        for node, (streams, queues, channels) in self._work(declared.placement, declared.spec).items():
            client = self.pools.node((owner.namespace, owner.name), declared.password, node.address,
                                     declared.tls)
            poll_start = self.monotonic()
            measured_node = collect_node(client, [Target.of(s) for s in streams], queues=[q.name for q in queues],
                                         channels=channels)
            # Decisions are timed by this clock, the loop's monotonic one, whatever the measurements' own
            # stamps: stabilization windows and idle timers are differences of times, and on a wall clock
            # a step back would hold every scale-down for as long as the step.
            sampled_at = self.monotonic()
            self.metrics.poll_seconds.observe(sampled_at - poll_start, namespace=owner.namespace,
                                              resource=owner.name)
            for c in measured_node.channels:  # plain channels: the sum over every master
                if c.error is not None:
                    runtime.channel_errors[c.channel] = c.error
                elif c.subscribers is not None:
                    subscribers[c.channel] = (subscribers.get(c.channel) or 0) + c.subscribers
            for queue, qm in zip(queues, measured_node.queues, strict=True):
                qkey = nodes.queue_key(queue.name)
                qview = self._view(runtime, *qkey, None)  # a list is no stream: fill the view from LLEN
                qview.error, qview.lag, qview.pending, qview.consumers = qm.error, qm.length, None, None
                if queue.autoscale is not None and qm.error is None:
                    qgroup = models.Group(name=queue.name, autoscale=queue.autoscale)
                    done = self._scale(runtime, client, qkey[0], qgroup, Sample.of(qm, at=sampled_at), qview,
                                       started)
                    if done is not None:
                        scaled.append(done)
            measured = measured_node.streams
            by_stream = {m.stream: m for m in measured}
            for stream in streams:
                m = by_stream.get(stream.name)
                runtime.lengths[stream.name] = m.length if m is not None else None
                if m is not None and m.error is not None and not stream.groups:
                    runtime.stream_errors[stream.name] = m.error
                else:
                    runtime.stream_errors.pop(stream.name, None)
                for group in stream.groups:
                    sample = m.group(group.name) if m is not None else None
                    view = self._view(runtime, stream.name, group.name, sample)
                    if group.autoscale is not None and sample is not None and sample.error is None:
                        done = self._scale(runtime, client, stream.name, group, Sample.of(sample, at=sampled_at),
                                           view, started)
                        if done is not None:
                            scaled.append(done)
            if sweep:
                self._dead_letter(runtime, client, streams)
                pods = self._reclaim(runtime, client, node.name, streams, pods)
        runtime.subscribers = subscribers
        self._report(runtime)
        return scaled

    @staticmethod
    def _work(placement: Placement, spec: models.RedisMessagingSpec
              ) -> dict[Node, tuple[list[models.Stream], list[models.Queue], list[tuple[str, bool]]]]:
        """What to measure on each node: streams and queues where their key lives, shard channels on
        their shard, plain channels on every master (their subscribers may be on any)."""
        work: dict[Node, tuple[list[models.Stream], list[models.Queue], list[tuple[str, bool]]]] = {}
        for node, streams in placement.by_node(spec.streams):
            work[node] = (streams, [], [])
        for queue in spec.queues:
            work.setdefault(placement.node_of(queue.name), ([], [], []))[1].append(queue)
        for channel in spec.channels:
            for node in [placement.node_of(channel.name)] if channel.sharded else placement.nodes():
                work.setdefault(node, ([], [], []))[2].append((channel.name, channel.sharded))
        return work

    def _view(self, runtime: _Runtime, stream: str, group: str, sample: GroupMeasurement | None) -> GroupView:
        old = runtime.views.get((stream, group)) or GroupView()
        view = GroupView(current_replicas=old.current_replicas, desired_replicas=old.desired_replicas,
                         last_decision=old.last_decision, last_scale_time=old.last_scale_time,
                         orphaned_pending=runtime.orphaned.get((stream, group)))
        if sample is None or sample.error is not None:
            view.error = sample.error if sample is not None else f"stream {stream} was not measured"
        else:
            view.lag, view.lag_estimated, view.lag_capped = sample.lag, sample.lag_estimated, sample.lag_capped
            view.pending, view.consumers = sample.pending, sample.consumers
        runtime.views[(stream, group)] = view
        return view

    def _scale(self, runtime: _Runtime, client: StreamsNode, stream: str, group: models.Group,
               sample: GroupSample, view: GroupView, started: float) -> Scaled | None:
        declared = runtime.declared
        owner = declared.owner
        spec = group.autoscale
        if spec is None:
            return None
        target = spec.target
        refused = declared.conflicts.get((stream, group.name))
        if refused is not None:
            view.desired_replicas, view.last_decision, view.error = None, None, refused
            return None
        state_key = (stream, group.name, target.kind, target.name)
        scale = self._read_scale(runtime, target.kind, target.name, view, fresh=False)
        if scale is None:
            return None
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        decision = decide(sample, spec, current, runtime.states.get(state_key) or GroupState())
        if decision.changed:  # a change is decided on what the workload has now, not on what was read
            scale = self._read_scale(runtime, target.kind, target.name, view, fresh=True)
            if scale is None:
                return None
            fresh = int((scale.get("spec") or {}).get("replicas") or 0)
            if fresh != current:
                current = fresh
                decision = decide(sample, spec, current, runtime.states.get(state_key) or GroupState())
        runtime.states[state_key] = decision.state
        view.current_replicas, view.desired_replicas = current, decision.desired
        view.last_decision = decision.reason
        if not decision.changed:
            return None
        what = f"{target.kind} {target.name}"
        try:
            is_queue = stream.startswith(nodes.QUEUE_PREFIX)  # a list has no consumers to rank
            if decision.desired < current and target.kind == "Deployment" and not is_queue:
                self._set_deletion_costs(runtime, client, stream, group.name, scale)
            self.kube.scale(target.kind, owner.namespace, target.name, decision.desired)
        except KubeError as exc:
            view.error = f"could not scale {what} to {decision.desired}: {exc}"
            log.warning("%s/%s: %s", owner.namespace, owner.name, view.error)
            return None
        elapsed = self.monotonic() - started
        patched = {**scale, "spec": {"replicas": decision.desired}}
        runtime.scales[(target.kind, target.name)] = (self.monotonic(), patched)
        view.current_replicas = decision.desired
        view.last_scale_time = _iso(self.clock())
        log.debug("%s/%s %s/%s: scale patched %.3fs after the tick started", owner.namespace, owner.name,
                  stream, group.name, elapsed)
        message = f"scaled {stream}/{group.name} {what} {current} -> {decision.desired}: {decision.reason}"
        log.info("%s/%s: %s", owner.namespace, owner.name, message)
        self.kube.event(declared.involved, reason="Scaled", message=message)
        labels = {"namespace": owner.namespace, "resource": owner.name}
        self.metrics.tick_to_patch_seconds.observe(elapsed, **labels)
        self.metrics.scales.inc(**labels, stream=stream, group=group.name,
                                direction="up" if decision.desired > current else "down")
        done = Scaled(owner.namespace, owner.name, stream, group.name, what, current, decision.desired,
                      decision.reason, elapsed)
        if self.on_scaled is not None:
            self.on_scaled(done)
        return done

    def _read_scale(self, runtime: _Runtime, kind: str, name: str, view: GroupView, *, fresh: bool) -> Obj | None:
        """The target's scale subresource: read again when ``fresh`` or older than the re-read interval."""
        key = (kind, name)
        kept = runtime.scales.get(key)
        now = self.monotonic()
        if not fresh and kept is not None and now - kept[0] < self.reread_interval:
            return kept[1]
        try:
            scale = self.kube.get_scale(kind, runtime.declared.owner.namespace, name)
        except KubeError as exc:
            view.error = f"could not read the scale of {kind} {name}: {exc}"
            return None
        if scale is None:
            runtime.scales.pop(key, None)
            view.error = f"{kind} {name} does not exist"
            return None
        runtime.scales[key] = (now, scale)
        return scale

    def _set_deletion_costs(self, runtime: _Runtime, client: StreamsNode, stream: str, group: str,
                            scale: Obj) -> None:
        """Before a scale-down: pods whose consumer holds the fewest pending entries go first."""
        owner = runtime.declared.owner
        selector = (scale.get("status") or {}).get("selector")
        if not selector:
            return
        try:
            found = nodes.consumers(client, [(stream, group)]).get((stream, group), {})
        except NodeUnavailable as exc:
            log.warning("%s/%s: no pod-deletion-cost before the scale-down of %s/%s: %s",
                        owner.namespace, owner.name, stream, group, exc)
            return
        pods = policy.pod_views(self.kube.list_metadata("Pod", owner.namespace, selector))
        costs = policy.deletion_costs(pods.values(), {name: c.pending for name, c in found.items()})
        for pod, cost in sorted(costs.items()):
            try:
                self.kube.annotate("Pod", owner.namespace, pod, {policy.DELETION_COST: cost})
            except KubeError as exc:
                if exc.status != 404:  # a pod that is gone needs no cost
                    raise

    def _dead_letter(self, runtime: _Runtime, client: StreamsNode, streams: list[models.Stream]) -> None:
        """Move the entries delivered more than ``maxDeliveries`` times of the groups that have pending
        entries to their dead-letter stream (before reclaim: such an entry goes to the dead letters rather
        than to yet another consumer). Groups whose dead-letter stream is refused are left out: the
        reconcile pass says why (condition DeadLettersReady)."""
        declared = runtime.declared
        owner = declared.owner
        refused = nodes.dead_letter_refusals(declared.spec)
        for stream in streams:
            for group in stream.groups:
                key = (stream.name, group.name)
                view = runtime.views.get(key)
                if group.max_deliveries is None or key in refused or view is None or not view.pending:
                    runtime.dead_letter_from.pop(key, None)
                    continue
                target = nodes.dead_letter_stream(stream.name, group)
                try:
                    done = nodes.dead_letter(client, stream.name, group.name, target, group.max_deliveries,
                                             min_idle_ms=RECLAIM_MIN_IDLE_MS,
                                             start=runtime.dead_letter_from.get(key, "-"))
                except NodeUnavailable as exc:
                    log.warning("%s/%s: dead letters of %s/%s not moved: %s", owner.namespace, owner.name,
                                stream.name, group.name, exc)
                    if view.error is None:
                        view.error = f"dead letters not moved to {target}: {exc}"
                    continue
                if done.resume is None:
                    runtime.dead_letter_from.pop(key, None)
                else:
                    runtime.dead_letter_from[key] = done.resume
                if not done.moved:
                    continue
                runtime.dead_lettered[key] = runtime.dead_lettered.get(key, 0) + done.moved
                self.metrics.group_dead_lettered.inc(done.moved, namespace=owner.namespace, resource=owner.name,
                                                     stream=stream.name, group=group.name)
                message = (f"{stream.name}/{group.name}: moved {done.moved} entries delivered more than "
                           f"{group.max_deliveries} times to the dead-letter stream {target}")
                log.warning("%s/%s: %s", owner.namespace, owner.name, message)
                self.kube.event(declared.involved, reason="DeadLettered", message=message, type_="Warning")

    def _reclaim(self, runtime: _Runtime, client: StreamsNode, node: str, streams: list[models.Stream],
                 pods: dict[str, policy.PodView] | None) -> dict[str, policy.PodView] | None:
        """Claim the entries of consumers whose pod is gone; returns the pods (listed once per tick)."""
        declared = runtime.declared
        owner = declared.owner
        # Every group, autoscaled or not: the pods that are alive are the namespace's, whoever scales them.
        groups = [(s.name, g.name) for s in streams for g in s.groups if g.reclaim]
        if not groups:
            return pods
        try:
            # Consumers first, pods second: a consumer seen here has a pod that the list below shows
            # unless that pod is really gone.
            found = nodes.consumers(client, groups)
            now = self.monotonic()
            held = any(c.pending > 0 for consumers in found.values() for c in consumers.values())
            if not held and now - runtime.pods_listed_at < self.reread_interval:
                return pods  # nothing pending: the consumers of gone pods are cleaned up less often
            if pods is None:
                # A pod the kubelet evicted (phase Failed) stays listed, without a deletionTimestamp, and
                # its consumer runs no more: the list leaves finished pods out, so they count as gone.
                pods = policy.pod_views(self.kube.list_metadata("Pod", owner.namespace,
                                                                fields=policy.UNFINISHED_PODS))
                runtime.pods_listed_at = now
            for key, consumers in found.items():
                pending = {name: c.pending for name, c in consumers.items()}
                dead, claimer = policy.orphans(pending, pods)
                if not dead:
                    runtime.orphaned[key] = 0
                    continue
                live = policy.alive(pods)
                result = nodes.reclaim(client, key[0], key[1], live, claimer, min_idle_ms=RECLAIM_MIN_IDLE_MS)
                runtime.orphaned[key] = result.orphaned
                if result.claimed:
                    message = (f"{key[0]}/{key[1]}: claimed {result.claimed} pending entries of consumers whose "
                               f"pod is gone ({', '.join(sorted(dead))}) for {claimer}")
                    log.info("%s/%s: %s", owner.namespace, owner.name, message)
                    self.kube.event(declared.involved, reason="PendingReclaimed", message=message)
                if result.orphaned:
                    log.warning("%s/%s: %s/%s: %d entries pending with consumers whose pod is gone and no live "
                                "consumer to take them", owner.namespace, owner.name, key[0], key[1], result.orphaned)
        except NodeUnavailable as exc:
            log.warning("%s/%s: reclaim on %s skipped: %s", owner.namespace, owner.name, node, exc)
        except KubeError as exc:
            log.warning("%s/%s: reclaim skipped, pods not listed: %s", owner.namespace, owner.name, exc)
        for key, orphaned in runtime.orphaned.items():
            if key in runtime.views:
                runtime.views[key].orphaned_pending = orphaned
        return pods

    def _report(self, runtime: _Runtime) -> None:
        declared = runtime.declared
        owner = declared.owner
        labels = {"namespace": owner.namespace, "resource": owner.name}
        m = self.metrics
        for stream in declared.spec.streams:
            length = runtime.lengths.get(stream.name)
            if length is None:
                m.stream_length.remove(**labels, stream=stream.name)
            else:
                m.stream_length.set(length, **labels, stream=stream.name)
        for queue in declared.spec.queues:
            qview = runtime.views.get(nodes.queue_key(queue.name)) or GroupView()
            for family, value in ((m.queue_length, qview.lag), (m.queue_desired_replicas, qview.desired_replicas),
                                  (m.queue_current_replicas, qview.current_replicas)):
                if value is None:
                    family.remove(**labels, queue=queue.name)
                else:
                    family.set(value, **labels, queue=queue.name)
        for channel in declared.spec.channels:
            count = runtime.subscribers.get(channel.name)
            if count is None:
                m.channel_subscribers.remove(**labels, channel=channel.name)
            else:
                m.channel_subscribers.set(count, **labels, channel=channel.name)
        dead_lettering = {(s.name, g.name) for s in declared.spec.streams for g in s.groups
                          if g.max_deliveries is not None}
        for (stream_name, group_name), view in runtime.views.items():
            if stream_name.startswith(nodes.QUEUE_PREFIX):
                continue
            where = {**labels, "stream": stream_name, "group": group_name}
            for family, value in ((m.group_lag, view.lag), (m.group_pending, view.pending),
                                  (m.group_orphaned_pending, view.orphaned_pending),
                                  (m.group_consumers, view.consumers),
                                  (m.group_desired_replicas, view.desired_replicas),
                                  (m.group_current_replicas, view.current_replicas)):
                if value is None:
                    family.remove(**where)
                else:
                    family.set(value, **where)
            if (stream_name, group_name) in dead_lettering:
                m.group_dead_lettered.inc(0, **where)  # the series exists before the first one: increase() sees it
            m.group_lag_estimated.set(1 if view.lag_estimated else 0, **where)
            m.group_lag_capped.set(1 if view.lag_capped else 0, **where)

        with self._lock:
            trimmed = dict(runtime.trimmed)
        placement = declared.placement
        shards = {s.name: placement.node_of(s.name).shard for s in declared.spec.streams} if placement else {}
        queue_shards = {q.name: placement.node_of(q.name).shard for q in declared.spec.queues} if placement else {}
        status = {
            "streams": policy.shape_status(declared.spec.streams, runtime.views, runtime.lengths,
                                           runtime.stream_errors, trimmed, shards, runtime.dead_lettered),
            "queues": policy.shape_queues(declared.spec.queues, runtime.views, queue_shards),
            "channels": policy.shape_channels(declared.spec.channels, runtime.subscribers, runtime.channel_errors),
        }
        now = self.monotonic()
        if not policy.should_write_all(status, runtime.written, since_written=now - runtime.written_at,
                                       interval=self.status_interval):
            return
        try:
            self.kube.patch_status(models.KIND, owner.namespace, owner.name, status)
        except KubeError as exc:
            if exc.status == 404:
                self.forget(owner.namespace, owner.name)
                return
            log.warning("%s/%s: status.streams not written: %s", owner.namespace, owner.name, exc)
            return
        runtime.written, runtime.written_at = status, now


async def autoscale_forever(autoscaler: Autoscaler, tick: float, stopped: asyncio.Event, *,
                            concurrency: int = 8) -> None:
    """Tick every ``tick`` seconds (from the start of one tick to the next) until ``stopped``; the
    resources of a tick run in worker threads, at most ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(key: Key, started: float) -> None:
        async with slots:
            await asyncio.to_thread(autoscaler.tick, key, started)

    late = False
    while not stopped.is_set():
        started = autoscaler.monotonic()
        await asyncio.gather(*(one(key, started) for key in autoscaler.resources()))
        elapsed = autoscaler.monotonic() - started
        if elapsed > tick and not late:
            log.warning("an autoscaler tick took %.2fs, longer than the %.2fs period", elapsed, tick)
        late = elapsed > tick
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=max(0.0, tick - elapsed))

"""Traffic traces replayed against the operator's real autoscaling decisions and against a model of KEDA
+ the HorizontalPodAutoscaler, on one simulated consumer workload: no Redis, no cluster, seconds of CPU.

What is real, what is modelled
------------------------------
* **Ours is the real code.** Every ``autoscale_tick_seconds`` (the operator's default, 2 s) the simulator
  takes the measurement the loop takes (``XINFO GROUPS``: lag, pending, entries-read, consumers) and calls
  :func:`redis_messaging.autoscale.decide.decide` with the group's ``Autoscale`` spec, the replica count
  and the state the previous decision returned. Before a scale-down the pod-deletion-costs come from
  :func:`redis_messaging.autoscale.policy.deletion_costs`; every ``reclaim_interval_seconds`` (10 s) the
  orphans and their claimer come from ``policy.orphans`` / ``policy.alive``, and the simulated Redis does
  what ``reclaim_orphans`` asks (``XCLAIM`` of the entries idle for ``RECLAIM_MIN_IDLE_MS`` to the
  claimer, ``DELCONSUMER`` of the dead consumers left empty). Two specs: **ours**, the one of README and
  examples/streams-autoscaling.yaml (``backlogPerReplica`` 100, ``scaleDownStabilizationSeconds`` 120,
  ``idleSecondsBeforeZero`` 300, 0..20 replicas), and **ours, drain 10s**, the same with
  ``targetDrainSeconds: 10`` (the rate-aware rule). The Redis and Kubernetes round trips are not
  simulated: they take milliseconds (bench/autoscale.py and bench/autoscale_e2e.py measure them).
* **KEDA + the HPA are a model** of what KEDA's code and docs (redis_streams_scaler.go,
  scale_executor.go, docs 2.20) and Kubernetes' HPA controller do with a redis-streams trigger in lag
  mode: the metric is the group's ``XINFO GROUPS`` lag (a NULL lag is -1, read by the HPA as no backlog:
  *inferred* from KEDA's code; no trace here makes a NULL lag, nothing deletes entries); every
  ``pollingInterval`` the KEDA operator wakes the target from 0 to 1 when the metric is strictly above
  ``activationLagCount``, and scales it to 0 ``cooldownPeriod`` after the last active poll; from 1 on the
  HPA syncs every 15 s: ``ceil(metric / lagCount)`` (the metric fetched live), unchanged within the 10 %
  tolerance, scale-up at most max(+100 %, +4 pods) per 15 s, scale-down 100 % per 15 s, the highest
  recommendation of the scale-down stabilization window wins, [1, maxReplicaCount]. Two profiles:
  **KEDA default** (polling 30 s, cooldown 300 s, stabilization 300 s, ``activationLagCount`` 0,
  ``lagCount`` 100 = our ``backlogPerReplica``) and **KEDA fast**, the profile of KEDA's own redis e2e
  tests (polling 5 s, cooldown 10 s, stabilization 15 s, ``lagCount`` 12, ``activationLagCount`` 10).
  One approximation, in KEDA's favour: a ScaledObject without ``advanced.horizontalPodAutoscalerConfig``
  gets an HPA without ``behavior``, whose legacy path limits a scale-up to max(2 x current, 4) per sync;
  the model applies max(+100 %, +4 pods) per 15 s to both profiles (one or two pods more per step from 1
  or 2 replicas).
* **One consumer model for every policy.** A pod reads ``--prefetch`` entries per ``XREADGROUP`` (and
  blocks when there are none: a blocked reader gets an entry the moment it is added), handles them one at
  a time (per-message work drawn from a lognormal, the same draws for every policy) and acknowledges each;
  it starts reading ``--startup`` seconds after the replica count asks for it and re-reads its own
  pending entries at start and every 5 s (how claimed entries reach it). A removed pod finishes the
  message in flight and stops reading: the rest of what it prefetched stays pending under its name until
  our reclaim hands it to a live consumer (KEDA claims nothing: with KEDA those entries are "stuck").
  Pods are removed in the ReplicaSet controller's order: pods not started yet, then the lowest
  pod-deletion-cost (ours sets it), then the newest.

Not modelled: the live cluster (bench/autoscale_live.py replays one trace on the local cluster of
e2e/local with real consumers and compares its figures with this simulator's on the same arrivals), API
and Redis latencies, start-up jitter, node capacity, a consumer's
``XAUTOCLAIM`` (redis_messaging.consumer takes entries idle for 60 s; the generic consumer here does not),
handler failures, NULL lags, the grace period (a message takes far less than
``terminationGracePeriodSeconds``).

Figures, per trace and policy: the time a message waits from its ``XADD`` until a consumer starts on it
(median and p99; a message never started counts with its wait until the end of the run, a lower bound
marked ``>=``), the largest backlog (lag + pending), replica-seconds (every pod that exists, starting or
draining included), scale events (replica count changes) and the entries never processed by the end of
the run (stuck pending on removed pods, or never delivered); then each of ours against both KEDA
profiles of the same run and the targets: a p99 wait at most 1/4 of KEDA default's and 1/2 of KEDA
fast's, with no more replica-seconds than either.

Run: ``.venv/bin/python bench/autoscale_sim.py [--seed 1] [--trace steady --trace spike ...] [--json]``
(about 20 s). ``--smoke`` replays every trace shortened 20 times, the same code path in a few seconds;
CI runs it (tests/unit/test_bench_smoke_unit.py).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import _project

_project.use(__file__)

from redis_messaging.api.models import Autoscale, AutoscaleTarget  # noqa: E402
from redis_messaging.autoscale import policy  # noqa: E402
from redis_messaging.autoscale.decide import GroupState, Sample, decide  # noqa: E402
from redis_messaging.autoscale.loop import RECLAIM_MIN_IDLE_MS  # noqa: E402
from redis_messaging.settings import OperatorSettings  # noqa: E402

_SETTINGS = OperatorSettings.model_fields
TICK_SECONDS = float(_SETTINGS["autoscale_tick_seconds"].default)
"""The operator's default tick: how often the loop measures and decides."""
RECLAIM_SECONDS = float(_SETTINGS["reclaim_interval_seconds"].default)
REREAD_SECONDS = float(_SETTINGS["resync_seconds"].default)
"""The loop lists pods again after this long even when nothing is pending (Operator passes resync)."""

MAX_REPLICAS = 20
OURS_SPEC = Autoscale(
    target=AutoscaleTarget(kind="Deployment", name="worker"),
    min_replicas=0,
    max_replicas=MAX_REPLICAS,
    backlog_per_replica=100,
    scale_down_stabilization_seconds=120,
    idle_seconds_before_zero=300,
)
"""The group's autoscale spec of examples/streams-autoscaling.yaml and README (metric: backlog)."""
OURS_DRAIN_SPEC = OURS_SPEC.model_copy(update={"target_drain_seconds": 10})
"""The same with the rate-aware rule: the replicas that drain the backlog within 10 s while keeping up."""


# =============================================================================================
# KEDA + the HorizontalPodAutoscaler (see the module's docstring). Pure: no clock, no simulator;
# unit-tested in tests/unit/test_autoscale_sim_keda.py.


def keda_lag_metric(lag: int | None) -> int:
    """The redis-streams scaler's metric in lag mode (``consumerGroup`` and a non-zero ``lagCount``): the
    group's ``XINFO GROUPS`` lag; a NULL lag is -1 (go-redis reports -1 and KEDA passes it on; inferred
    from KEDA's code), which the HPA reads as no backlog."""
    return -1 if lag is None else lag


def keda_active(metric: float, activation_lag_count: int) -> bool:
    """A trigger is active when its metric is strictly greater than ``activationLagCount``."""
    return metric > activation_lag_count


def hpa_metric_replicas(metric: float, target: float, replicas: int, tolerance: float = 0.1) -> int:
    """The HPA's replicas for an external metric with an AverageValue target: ``ceil(metric / target)``,
    unless the usage ratio is within ``tolerance`` of 1, where the count stays. ``replicas`` is what the
    target's scale status reports (the pods it has)."""
    ratio = metric / (target * replicas)
    if abs(1.0 - ratio) <= tolerance:
        return replicas
    return max(0, math.ceil(metric / target))  # a negative metric (NULL lag) asks for 0, clamped later


@dataclass(frozen=True)
class ScalingPolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period: float  # seconds


@dataclass(frozen=True)
class HpaBehavior:
    """``spec.behavior`` of an HPA, with the Kubernetes defaults."""

    scale_up_stabilization: float = 0.0
    scale_up: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15.0), ScalingPolicy("Pods", 4, 15.0))
    scale_down_stabilization: float = 300.0
    scale_down: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15.0),)


class Hpa:
    """The HorizontalPodAutoscaler controller's decisions for one HPA with one external AverageValue
    metric, as in Kubernetes' podautoscaler/horizontal.go: metric replicas, then the stabilization window
    (the scale-down window's highest recommendation, the scale-up window's lowest), then the scaling
    policies' rate limits and [minReplicas, maxReplicas]."""

    def __init__(self, target: float, min_replicas: int, max_replicas: int, behavior: HpaBehavior,
                 tolerance: float = 0.1) -> None:
        self.target = target
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.behavior = behavior
        self.tolerance = tolerance
        self.recommendations: list[tuple[float, int]] | None = None  # (time, unstabilized recommendation)
        self.up_events: list[tuple[float, int]] = []  # (time, replicas added) by this HPA
        self.down_events: list[tuple[float, int]] = []

    def sync(self, now: float, metric: float, current: int, status_replicas: int | None = None) -> int:
        """One sync: the replicas the HPA sets (``current`` when it does not scale). With 0 replicas it
        does nothing ("scaling is disabled": KEDA wakes the target)."""
        if current == 0:
            return 0
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            status = current if status_replicas is None else status_replicas
            proposed = hpa_metric_replicas(metric, self.target, max(status, 1), self.tolerance)
            desired = self._normalize(now, current, max(0, proposed), status)
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        return desired

    def _normalize(self, now: float, current: int, desired: int, status: int) -> int:
        b = self.behavior
        if self.recommendations is None:  # maybeInitScaleDownStabilizationWindow
            self.recommendations = [(now, status)]
        up_cut, down_cut = now - b.scale_up_stabilization, now - b.scale_down_stabilization
        up_rec = down_rec = desired
        for at, rec in self.recommendations:
            if at > up_cut:
                up_rec = min(up_rec, rec)
            if at > down_cut:
                down_rec = max(down_rec, rec)
        stabilized = min(max(current, up_rec), down_rec)
        keep = [(at, rec) for at, rec in self.recommendations if at >= up_cut or at >= down_cut]
        self.recommendations = [*keep, (now, desired)]
        if stabilized > current:
            limit = max(current, self._up_limit(now, current))
            return min(stabilized, self.max_replicas, limit)
        if stabilized < current:
            limit = min(current, self._down_limit(now, current))
            return max(stabilized, self.min_replicas, limit)
        return stabilized

    def _period_start(self, now: float, current: int, period: float) -> int:
        added = sum(n for at, n in self.up_events if at > now - period)
        removed = sum(n for at, n in self.down_events if at > now - period)
        return current - added + removed

    def _up_limit(self, now: float, current: int) -> int:
        out = -(2**31)
        for p in self.behavior.scale_up:  # selectPolicy Max: the policy that allows the most
            start = self._period_start(now, current, p.period)
            out = max(out, start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100)))
        return out

    def _down_limit(self, now: float, current: int) -> int:
        out = 2**31
        for p in self.behavior.scale_down:
            start = self._period_start(now, current, p.period)
            out = min(out, start - p.value if p.kind == "Pods" else int(start * (1 - p.value / 100)))
        return out


class KedaOperator:
    """What the KEDA operator itself does every ``pollingInterval`` for one ScaledObject: 0 -> max(min, 1)
    when a trigger is active, N -> 0 ``cooldownPeriod`` after the last active poll (minReplicaCount 0)."""

    def __init__(self, activation_lag_count: int, min_replica_count: int, cooldown: float,
                 last_active: float | None = None) -> None:
        self.activation = activation_lag_count
        self.min_replica_count = min_replica_count
        self.cooldown = cooldown
        self.last_active = last_active

    def poll(self, now: float, metric: float, current: int) -> int:
        """The replicas after this poll (``current`` when KEDA leaves them to the HPA)."""
        if keda_active(metric, self.activation):
            self.last_active = now
            return max(self.min_replica_count, 1) if current == 0 else current
        if current > 0 and self.min_replica_count == 0 and (
                self.last_active is None or self.last_active + self.cooldown < now):
            return 0
        return current


@dataclass(frozen=True)
class KedaProfile:
    name: str
    polling_interval: float
    cooldown_period: float
    lag_count: int
    activation_lag_count: int
    behavior: HpaBehavior
    hpa_sync_period: float = 15.0
    min_replica_count: int = 0
    max_replica_count: int = MAX_REPLICAS

    def describe(self) -> str:
        return (f"polling {self.polling_interval:g}s, cooldown {self.cooldown_period:g}s, HPA sync "
                f"{self.hpa_sync_period:g}s, scale-down stabilization {self.behavior.scale_down_stabilization:g}s, "
                f"lagCount {self.lag_count}, activationLagCount {self.activation_lag_count}")


KEDA_DEFAULT = KedaProfile("KEDA default", polling_interval=30, cooldown_period=300,
                           lag_count=OURS_SPEC.backlog_per_replica, activation_lag_count=0, behavior=HpaBehavior())
KEDA_FAST = KedaProfile("KEDA fast", polling_interval=5, cooldown_period=10, lag_count=12, activation_lag_count=10,
                        behavior=HpaBehavior(scale_down_stabilization=15))


# =============================================================================================
# Traces: an arrival rate over time (messages per second); arrivals and per-message work drawn from
# the seed, the same for every policy.


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    duration: float
    rate: Callable[[float], float]
    peak: float  # at least rate(t) everywhere, for thinning
    initial_replicas: int  # pods started at t = 0: about what the first minute needs (0: from zero)


def make_traces(seed: int, shrink: float = 1.0) -> dict[str, Trace]:
    """Every trace; ``shrink`` > 1 divides their durations (``--smoke``)."""

    def s(seconds: float) -> float:
        return seconds / shrink

    rng = random.Random(f"{seed}-bursts")
    bursts: list[float] = []
    at = s(60)
    while at < s(1200):
        bursts.append(at)
        at += s(rng.uniform(90, 210))

    def burst_rate(t: float) -> float:
        return 250.0 if any(b <= t < b + s(15) for b in bursts) else 10.0

    day = s(1440)  # 24 h compressed into 24 min: one simulated minute is one hour

    def diurnal(t: float) -> float:
        return 5.0 + 145.0 * (1 - math.cos(2 * math.pi * t / day)) / 2

    def step(t: float) -> float:
        return 160.0 if s(300) <= t < s(900) else 20.0

    def spike(t: float) -> float:
        if t < s(180):
            return 30.0
        return 300.0 if s(900) <= t < s(930) else 0.0

    return {
        "steady": Trace("steady", "60 msg/s for 20 min", s(1200), lambda t: 60.0, 60.0, 4),
        "step": Trace("step", "20 msg/s, 160 msg/s from 5 to 15 min, 20 msg/s to 20 min", s(1200), step, 160.0, 2),
        "bursts": Trace("bursts", f"10 msg/s with {len(bursts)} bursts of 250 msg/s for 15 s, 20 min", s(1200),
                        burst_rate, 250.0, 1),
        "diurnal": Trace("diurnal", "a day compressed into 24 min: 5 msg/s at night, 150 msg/s at noon", day,
                         diurnal, 150.0, 1),
        "spike": Trace("spike", "from zero: 30 msg/s for 3 min, idle 12 min, 300 msg/s for 30 s, idle", s(1200),
                       spike, 300.0, 0),
    }


def arrivals(trace: Trace, seed: int, mean_work: float, sigma: float) -> tuple[list[float], list[float]]:
    """Arrival times (a Poisson process of rate ``trace.rate``, by thinning) and each message's work."""
    rng = random.Random(f"{seed}-{trace.name}-arrivals")
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(trace.peak)
        if t >= trace.duration:
            break
        if rng.random() * trace.peak < trace.rate(t):
            times.append(t)
    mu = math.log(mean_work) - sigma * sigma / 2  # lognormal with the given mean
    work_rng = random.Random(f"{seed}-{trace.name}-work")
    works = [work_rng.lognormvariate(mu, sigma) for _ in times]
    return times, works


# =============================================================================================
# The simulated stream, consumer group and workload (the same for every policy).


@dataclass(frozen=True)
class ConsumerModel:
    startup: float = 10.0
    """Seconds from the replica count asking for a pod to its consumer's first read."""
    mean_work: float = 0.05
    """Mean seconds a message takes (lognormal): one replica handles about 20 messages per second."""
    work_sigma: float = 0.6
    prefetch: int = 10
    """Entries one XREADGROUP takes (COUNT)."""
    pending_every: float = 5.0
    """A consumer re-reads its own pending entries at start and this often (how claimed entries reach it)."""


STARTING, RUNNING, DRAINING, GONE = "starting", "running", "draining", "gone"


class Pod:
    __slots__ = ("blocked", "check_due", "cost", "current", "in_hand", "name", "ready_at", "seq", "state")

    def __init__(self, name: str, seq: int, ready_at: float, state: str) -> None:
        self.name, self.seq, self.ready_at, self.state = name, seq, ready_at, state
        self.in_hand: deque[int] = deque()  # delivered to it, not started
        self.current: int | None = None  # the message in flight
        self.blocked = False  # waiting in XREADGROUP BLOCK
        self.check_due = True  # re-read own pending entries before the next read
        self.cost: str | None = None  # controller.kubernetes.io/pod-deletion-cost


@dataclass
class Result:
    trace: str
    policy: str
    messages: int
    wait_p50: float
    wait_p99: float
    p99_censored: bool
    max_backlog: int
    replica_seconds: float
    idle_replica_seconds: float
    """Replica-seconds while no entry was waiting or in work."""
    mean_backlog: float
    scale_events: int
    scale_ups: int
    max_replicas: int
    stuck_on_removed_pods: int
    never_delivered: int
    reclaimed: int
    slowest_at: float
    """Median arrival time of the slowest 1 % of the messages: when the worst waits began."""
    replicas: list[tuple[float, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def unprocessed(self) -> int:
        return self.stuck_on_removed_pods + self.never_delivered


class Sim:
    """One trace under one policy. Events: arrivals (in order, from the trace), a pod's first read, the
    end of a message's work, a consumer's pending re-read, and the policy's timers."""

    def __init__(self, trace: Trace, times: list[float], works: list[float], model: ConsumerModel,
                 horizon: float) -> None:
        self.trace, self.times, self.works, self.model, self.horizon = trace, times, works, model, horizon
        self.started: list[float] = [-1.0] * len(times)
        self.delivered_at: list[float] = [-1.0] * len(times)  # its XREADGROUP (what a live run can see)
        self.now = 0.0
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        # Redis: the stream and the group
        self.added = 0  # entries added so far
        self.delivered = 0  # the group's entries-read: entries [0, delivered) were delivered
        self.acked = 0
        self.pel: dict[str, dict[int, float]] = {}  # consumer -> {entry: last delivery time}; its consumers
        self.pending = 0
        # Kubernetes: the workload's pods
        self.pods: dict[str, Pod] = {}  # every pod that exists (starting, running, draining)
        self.replicas = 0  # the scale subresource's spec.replicas
        self._pod_seq = 0
        self._blocked: deque[Pod] = deque()
        # figures
        self.replica_seconds = 0.0
        self.idle_replica_seconds = 0.0
        self.backlog_seconds = 0.0
        self._last = 0.0
        self.max_backlog = 0
        self.scale_events = 0
        self.scale_ups = 0
        self.max_replicas_seen = 0
        self.reclaimed = 0
        self.timeline: list[tuple[float, int]] = []
        if trace.initial_replicas:
            self.replicas = trace.initial_replicas
            for _ in range(trace.initial_replicas):
                self._new_pod(ready_at=0.0)
            self.timeline.append((0.0, self.replicas))
            self.max_replicas_seen = self.replicas

    # -- events -----------------------------------------------------------------------------------
    _READY, _FINISH, _CHECK, _TIMER = range(4)

    def _push(self, at: float, kind: int, obj: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, obj))

    def every(self, first: float, period: float, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` at ``first`` and then every ``period`` seconds."""
        self._push(first, self._TIMER, (period, callback))

    def run(self, until: float | None = None) -> None:
        """Play the events up to ``until`` (the horizon by default); a later call goes on from there."""
        until = self.horizon if until is None else until
        times, n = self.times, len(self.times)
        events = self._events
        while True:
            next_event = events[0][0] if events else math.inf
            next_arrival = times[self.added] if self.added < n else math.inf
            at = min(next_event, next_arrival)
            if at > until:
                break
            self._advance(at)
            if next_arrival <= next_event:
                self._arrive()
                continue
            _, _, kind, obj = heapq.heappop(events)
            if kind == self._FINISH:
                self._finish(obj)
            elif kind == self._READY:
                if obj.state == STARTING:
                    obj.state = RUNNING
                    self._push(at + self.model.pending_every, self._CHECK, obj)
                    self._pump(obj)
            elif kind == self._CHECK:
                if obj.state == RUNNING:
                    obj.check_due = True
                    if obj.blocked:  # its blocking read returns (block_ms): it looks at its own pending
                        obj.blocked = False
                        self._pump(obj)
                    self._push(at + self.model.pending_every, self._CHECK, obj)
            else:
                period, callback = obj
                callback(at)
                self._push(at + period, self._TIMER, obj)
        self._advance(until)

    def _advance(self, at: float) -> None:
        dt = at - self._last
        if dt > 0:
            pods = len(self.pods)
            backlog = self.added - self.acked
            self.replica_seconds += pods * dt
            self.backlog_seconds += backlog * dt
            if backlog == 0:
                self.idle_replica_seconds += pods * dt
            self._last = at
        self.now = at

    # -- Redis and the consumers ------------------------------------------------------------------
    @property
    def lag(self) -> int:
        return self.added - self.delivered

    def _arrive(self) -> None:
        self.added += 1
        backlog = self.added - self.acked
        if backlog > self.max_backlog:
            self.max_backlog = backlog
        while self._blocked:  # XADD serves the first blocked reader
            pod = self._blocked.popleft()
            if pod.blocked and pod.state == RUNNING:
                pod.blocked = False
                self._pump(pod)
                break

    def _deliver(self, pod: Pod, count: int) -> None:
        mine = self.pel.setdefault(pod.name, {})
        for entry in range(self.delivered, self.delivered + count):
            mine[entry] = self.now
            self.delivered_at[entry] = self.now
            pod.in_hand.append(entry)
        self.delivered += count
        self.pending += count

    def _pump(self, pod: Pod) -> None:
        """A running consumer with nothing in flight: its own pending entries first, then new ones."""
        while pod.current is None and pod.state == RUNNING:
            if pod.check_due:
                pod.check_due = False
                mine = self.pel.setdefault(pod.name, {})  # the first read creates the consumer
                held = set(pod.in_hand)
                pod.in_hand.extend(sorted(e for e in mine if e not in held))
            if pod.in_hand:
                entry = pod.in_hand.popleft()
                pod.current = entry
                self.started[entry] = self.now
                self._push(self.now + self.works[entry], self._FINISH, pod)
                return
            count = min(self.model.prefetch, self.lag)
            if count == 0:
                pod.blocked = True
                self._blocked.append(pod)
                return
            self._deliver(pod, count)

    def _finish(self, pod: Pod) -> None:
        entry = pod.current
        assert entry is not None
        pod.current = None
        del self.pel[pod.name][entry]  # XACK
        self.pending -= 1
        self.acked += 1
        if pod.state == DRAINING:
            self._gone(pod)
        else:
            self._pump(pod)

    def _gone(self, pod: Pod) -> None:
        """The container exits: what it prefetched and did not start stays pending under its name."""
        pod.state = GONE
        pod.blocked = False
        del self.pods[pod.name]

    # -- Kubernetes ---------------------------------------------------------------------------------
    def _new_pod(self, ready_at: float) -> Pod:
        self._pod_seq += 1
        pod = Pod(f"worker-{self._pod_seq}", self._pod_seq, ready_at, STARTING)
        self.pods[pod.name] = pod
        self._push(ready_at, self._READY, pod)
        return pod

    def pod_views(self) -> dict[str, policy.PodView]:
        """What a pod list shows: every pod that exists, draining ones with a deletionTimestamp."""
        return {p.name: policy.PodView(p.name, terminating=p.state == DRAINING, deletion_cost=p.cost)
                for p in self.pods.values()}

    def pending_by_consumer(self) -> dict[str, int]:
        """``XINFO CONSUMERS``: every consumer of the group, zeros included."""
        return {name: len(entries) for name, entries in self.pel.items()}

    def scale(self, replicas: int, reason: str = "") -> None:
        """Patch the scale subresource; the ReplicaSet controller creates or removes pods at once."""
        if replicas == self.replicas:
            return
        self.scale_events += 1
        self.scale_ups += replicas > self.replicas
        self.replicas = replicas
        self.max_replicas_seen = max(self.max_replicas_seen, replicas)
        self.timeline.append((self.now, replicas))
        active = [p for p in self.pods.values() if p.state != DRAINING]
        for _ in range(replicas - len(active)):
            self._new_pod(self.now + self.model.startup)
        excess = len(active) - replicas
        if excess > 0:
            # ReplicaSet ranking: not started first, then the lowest pod-deletion-cost, then the newest
            ranked = sorted(active, key=lambda p: (p.state != STARTING, int(p.cost or 0), -p.seq))
            for pod in ranked[:excess]:
                self._remove(pod)

    def _remove(self, pod: Pod) -> None:
        if pod.state == STARTING or pod.current is None:
            self._gone(pod)  # nothing in flight: it exits at once
        else:
            pod.state = DRAINING  # SIGTERM: it finishes the message in flight and reads nothing more

    def claim(self, dead: str, claimer: str, min_idle: float) -> int:
        """``XCLAIM`` of ``dead``'s entries idle at least ``min_idle`` seconds for ``claimer``."""
        source = self.pel.get(dead, {})
        moved = [e for e, at in source.items() if self.now - at >= min_idle]
        target = self.pel.setdefault(claimer, {})
        for entry in moved:
            del source[entry]
            target[entry] = self.now
        self.reclaimed += len(moved)
        return len(moved)

    def delete_consumer_if_empty(self, name: str) -> None:
        if not self.pel.get(name):
            self.pel.pop(name, None)

    # -- the end ------------------------------------------------------------------------------------
    def result(self, policy_name: str, reasons: list[str]) -> Result:
        end = self.horizon
        by_wait = sorted(((s - a) if s >= 0 else (end - a), a) for a, s in zip(self.times, self.started, strict=True))
        waits = [w for w, _ in by_wait]
        slowest = sorted(a for _, a in by_wait[len(by_wait) - max(1, len(by_wait) // 100):]) if by_wait else [0.0]
        censored_from = min((end - a for a, s in zip(self.times, self.started, strict=True) if s < 0),
                            default=math.inf)
        gone = {name for name in self.pel if name not in self.pods}
        stuck = sum(len(self.pel[name]) for name in gone)

        def pct(q: float) -> float:
            return waits[min(len(waits) - 1, max(0, math.ceil(q * len(waits)) - 1))] if waits else 0.0

        p99 = pct(0.99)
        return Result(
            trace=self.trace.name, policy=policy_name, messages=len(self.times), wait_p50=pct(0.5), wait_p99=p99,
            p99_censored=p99 >= censored_from, max_backlog=self.max_backlog,
            replica_seconds=self.replica_seconds, idle_replica_seconds=self.idle_replica_seconds,
            mean_backlog=self.backlog_seconds / end if end else 0.0, scale_events=self.scale_events,
            scale_ups=self.scale_ups,
            max_replicas=self.max_replicas_seen, stuck_on_removed_pods=stuck, never_delivered=self.lag,
            reclaimed=self.reclaimed, slowest_at=slowest[len(slowest) // 2], replicas=self.timeline,
            reasons=reasons,
        )


# =============================================================================================
# The policies: ours (the real decisions) and KEDA + HPA (the model above).


class Ours:
    """The operator's loop for one group, on simulated measurements: decide every tick with the real
    :func:`decide`, deletion costs before a scale-down and the reclaim sweep with the real policy."""

    def __init__(self, name: str = "ours", spec: Autoscale = OURS_SPEC, tick: float = TICK_SECONDS,
                 reclaim: float = RECLAIM_SECONDS, reread: float = REREAD_SECONDS,
                 min_idle: float = RECLAIM_MIN_IDLE_MS / 1000) -> None:
        self.name, self.spec, self.tick_seconds, self.reclaim_seconds = name, spec, tick, reclaim
        self.reread, self.min_idle = reread, min_idle
        self.state = GroupState()
        self.reclaimed_at = -math.inf
        self.pods_listed_at = -math.inf
        self.reasons: list[str] = []
        self.sim: Sim | None = None

    def attach(self, sim: Sim, rng: random.Random) -> None:
        self.sim = sim
        sim.every(rng.uniform(0, self.tick_seconds), self.tick_seconds, self.tick)

    def tick(self, now: float) -> None:
        sim = self.sim
        assert sim is not None
        sample = Sample(at=now, lag=sim.lag, pending=sim.pending, entries_read=sim.delivered,
                        consumers=len(sim.pel))
        decision = decide(sample, self.spec, sim.replicas, self.state)
        self.state = decision.state
        if decision.changed:
            self.reasons.append(f"t={now:.0f}s {decision.reason}")
            if decision.desired < sim.replicas:  # pod-deletion-cost: fewest pending entries go first
                costs = policy.deletion_costs(sim.pod_views().values(), sim.pending_by_consumer())
                for name, cost in costs.items():
                    sim.pods[name].cost = cost
            sim.scale(decision.desired)
        if now - self.reclaimed_at >= self.reclaim_seconds:
            self.reclaimed_at = now
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Autoscaler._reclaim and reclaim_orphans, on the simulated Redis."""
        sim = self.sim
        assert sim is not None
        pending = sim.pending_by_consumer()
        if not any(pending.values()) and now - self.pods_listed_at < self.reread:
            return
        pods = sim.pod_views()
        self.pods_listed_at = now
        dead, claimer = policy.orphans(pending, pods)
        if not dead:
            return
        live = policy.alive(pods)
        for name in pending:
            if name in live:
                continue
            if claimer is not None:
                sim.claim(name, claimer, self.min_idle)
            sim.delete_consumer_if_empty(name)


class Keda:
    """A ScaledObject (redis-streams trigger, lag mode) and the HPA KEDA makes for it."""

    def __init__(self, profile: KedaProfile) -> None:
        self.profile = profile
        self.name = profile.name
        self.hpa = Hpa(profile.lag_count, max(profile.min_replica_count, 1), profile.max_replica_count,
                       profile.behavior)
        self.operator = KedaOperator(profile.activation_lag_count, profile.min_replica_count,
                                     profile.cooldown_period)
        self.reasons: list[str] = []
        self.sim: Sim | None = None

    def attach(self, sim: Sim, rng: random.Random) -> None:
        self.sim = sim
        if sim.replicas:
            self.operator.last_active = 0.0  # the trace starts warm: active until now
        p = self.profile
        sim.every(rng.uniform(0, p.polling_interval), p.polling_interval, self.poll)
        sim.every(rng.uniform(0, p.hpa_sync_period), p.hpa_sync_period, self.sync)

    def poll(self, now: float) -> None:
        sim = self.sim
        assert sim is not None
        metric = keda_lag_metric(sim.lag)
        replicas = self.operator.poll(now, metric, sim.replicas)
        if replicas != sim.replicas:
            self.reasons.append(f"t={now:.0f}s KEDA operator: lag {metric} -> {replicas}")
            sim.scale(replicas)

    def sync(self, now: float) -> None:
        sim = self.sim
        assert sim is not None
        metric = keda_lag_metric(sim.lag)  # fetched live at each sync (useCachedMetrics: false)
        status = sum(1 for p in sim.pods.values() if p.state != DRAINING)
        replicas = self.hpa.sync(now, metric, sim.replicas, status)
        if replicas != sim.replicas:
            self.reasons.append(f"t={now:.0f}s HPA: lag {metric} -> {replicas}")
            sim.scale(replicas)


Policy = Ours | Keda


OURS = "ours"
OURS_DRAIN = "ours, drain 10s"
OURS_SPECS = {OURS: OURS_SPEC, OURS_DRAIN: OURS_DRAIN_SPEC}


def policies() -> list[Callable[[], Policy]]:
    return [lambda: Ours(OURS, OURS_SPEC), lambda: Ours(OURS_DRAIN, OURS_DRAIN_SPEC),
            lambda: Keda(KEDA_DEFAULT), lambda: Keda(KEDA_FAST)]


def simulate(trace: Trace, make: Callable[[], Policy], seed: int, model: ConsumerModel, tail: float,
             drawn: tuple[list[float], list[float]] | None = None) -> Result:
    times, works = drawn or arrivals(trace, seed, model.mean_work, model.work_sigma)
    sim = Sim(trace, times, works, model, trace.duration + tail)
    chosen = make()
    chosen.attach(sim, random.Random(f"{seed}-{trace.name}-phases"))
    sim.run()
    return sim.result(chosen.name, chosen.reasons)


# =============================================================================================
# Report


P99_VS_DEFAULT = 0.25
P99_VS_FAST = 0.5


def seconds(value: float, censored: bool = False) -> str:
    text = f"{value:.2f} s" if value < 10 else f"{value:.1f} s" if value < 100 else f"{value:.0f} s"
    return (">=" + text) if censored else text


def ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else 1.0
    return a / b


def fmt_ratio(value: float, limit: float) -> str:
    """A ratio, with a third decimal where two would hide which side of ``limit`` it is on."""
    text = f"{value:.2f}x"
    return f"{value:.3f}x" if (float(text[:-1]) <= limit) != (value <= limit) else text


@dataclass
class Verdict:
    trace: str
    policy: str
    checks: list[tuple[str, bool, str]]  # (target, met, figures and why)

    @property
    def met(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def judge(ours: Result, default: Result, fast: Result, spec: Autoscale, model: ConsumerModel) -> Verdict:
    """Ours against the two KEDA profiles of the same run: p99 wait at most 1/4 of KEDA default's and 1/2 of
    KEDA fast's, replica-seconds no more than either's."""
    checks: list[tuple[str, bool, str]] = []
    for base, limit in ((default, P99_VS_DEFAULT), (fast, P99_VS_FAST)):
        r = ratio(ours.wait_p99, base.wait_p99)
        ok = r <= limit
        why = (f"{fmt_ratio(r, limit)}: {seconds(ours.wait_p99, ours.p99_censored)} vs "
               f"{seconds(base.wait_p99, base.p99_censored)}")
        if not ok:
            why += "; " + _why_slower(ours, base, limit, spec, model)
        checks.append((f"p99 wait <= {limit:g} x {base.policy}", ok, why))
    for base in (default, fast):
        r = ratio(ours.replica_seconds, base.replica_seconds)
        ok = ours.replica_seconds <= base.replica_seconds
        why = f"{fmt_ratio(r, 1.0)}: {ours.replica_seconds:,.0f} vs {base.replica_seconds:,.0f}"
        if not ok:
            why += "; " + _why_costlier(ours, base, spec)
        checks.append((f"replica-s <= {base.policy}", ok, why))
    return Verdict(ours.trace, ours.policy, checks)


def _why_slower(ours: Result, base: Result, limit: float, spec: Autoscale, model: ConsumerModel) -> str:
    if ours.wait_p99 <= 1.5 * (model.startup + TICK_SECONDS):
        downs = ours.scale_events - ours.scale_ups
        return (f"ours' slowest waits are those of messages that arrived while new pods started (around "
                f"t={ours.slowest_at:.0f}s; start-up {model.startup:g} s; ours scaled up {ours.scale_ups} times and "
                f"down {downs} times): the target, {limit * base.wait_p99:.1f} s, is shorter than a start-up, it "
                "takes replicas already running when those messages arrive")
    if ours.mean_backlog > base.mean_backlog * 1.2:
        rule = (f"targetDrainSeconds {spec.target_drain_seconds}" if spec.target_drain_seconds else
                f"backlogPerReplica {spec.backlog_per_replica}")
        return (f"ours keeps more entries waiting (mean backlog {ours.mean_backlog:.0f} vs {base.mean_backlog:.0f}, "
                f"{rule}); its slowest 1 % arrived around t={ours.slowest_at:.0f}s")
    return (f"mean backlog {ours.mean_backlog:.0f} vs {base.mean_backlog:.0f}; ours' slowest 1 % arrived around "
            f"t={ours.slowest_at:.0f}s, {base.policy}'s around t={base.slowest_at:.0f}s")


def _why_costlier(ours: Result, base: Result, spec: Autoscale) -> str:
    idle_gap = ours.idle_replica_seconds - base.idle_replica_seconds
    busy_gap = (ours.replica_seconds - ours.idle_replica_seconds) - (base.replica_seconds - base.idle_replica_seconds)
    parts = []
    if idle_gap > 0:
        parts.append(f"{idle_gap:,.0f} more replica-s with nothing waiting or in work (ours keeps replicas "
                     f"scaleDownStabilizationSeconds {spec.scale_down_stabilization_seconds}s and one replica "
                     f"idleSecondsBeforeZero {spec.idle_seconds_before_zero}s; {base.policy}: stabilization "
                     f"{_profile(base).behavior.scale_down_stabilization:g}s, cooldown "
                     f"{_profile(base).cooldown_period:g}s)")
    if busy_gap > 0:
        parts.append(f"{busy_gap:,.0f} more while there was work (up to {ours.max_replicas} replicas vs "
                     f"{base.max_replicas})")
    return "; ".join(parts)


def _profile(result: Result) -> KedaProfile:
    return KEDA_DEFAULT if result.policy == KEDA_DEFAULT.name else KEDA_FAST


HEAD = ("policy", "wait p50", "wait p99", "max backlog", "replica-s", "scale events", "unprocessed")


def row(r: Result) -> tuple[str, ...]:
    stuck = f"{r.unprocessed}" if not r.unprocessed else (
        f"{r.unprocessed} ({r.stuck_on_removed_pods} stuck on removed pods, {r.never_delivered} undelivered)")
    return (r.policy, seconds(r.wait_p50), seconds(r.wait_p99, r.p99_censored), f"{r.max_backlog:,}",
            f"{r.replica_seconds:,.0f}", str(r.scale_events), stuck)


def print_table(rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        print(indent + "  ".join(cells))


def markdown(results: dict[str, list[Result]], verdicts: dict[tuple[str, str], Verdict]) -> list[str]:
    """The table README shows: every trace and policy, ours with its ratios to both KEDA profiles."""
    out = ["| trace | policy | wait p50 | wait p99 | max backlog | replica-s | scale events | unprocessed "
           "| p99 / KEDA default (<= 0.25) | p99 / KEDA fast (<= 0.5) | replica-s / KEDA default (<= 1) "
           "| replica-s / KEDA fast (<= 1) |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, rs in results.items():
        by = {r.policy: r for r in rs}
        default, fast = by[KEDA_DEFAULT.name], by[KEDA_FAST.name]
        for r in rs:
            cells = list(row(r))
            verdict = verdicts.get((name, r.policy))
            if verdict is not None:
                marks = ["MET" if ok else "MISSED" for _, ok, _ in verdict.checks]
                cells += [f"{fmt_ratio(ratio(r.wait_p99, default.wait_p99), P99_VS_DEFAULT)} {marks[0]}",
                          f"{fmt_ratio(ratio(r.wait_p99, fast.wait_p99), P99_VS_FAST)} {marks[1]}",
                          f"{fmt_ratio(ratio(r.replica_seconds, default.replica_seconds), 1.0)} {marks[2]}",
                          f"{fmt_ratio(ratio(r.replica_seconds, fast.replica_seconds), 1.0)} {marks[3]}"]
            else:
                cells += [""] * 4
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


# =============================================================================================


def run(names: Iterable[str], seed: int, model: ConsumerModel, shrink: float, tail: float,
        json_out: bool) -> int:
    traces = make_traces(seed, shrink)
    results: dict[str, list[Result]] = {}
    verdicts: dict[tuple[str, str], Verdict] = {}
    began = time.monotonic()
    if not json_out:
        print(f"autoscale_sim: seed {seed}; consumers: start-up {model.startup:g} s, {model.mean_work * 1000:g} ms "
              f"per message on average (lognormal, sigma {model.work_sigma:g}), prefetch {model.prefetch}; "
              f"replicas 0..{MAX_REPLICAS}")
        print(f"  ours: the real decide() every {TICK_SECONDS:g} s, reclaim every {RECLAIM_SECONDS:g} s; "
              f"backlogPerReplica {OURS_SPEC.backlog_per_replica}, scaleDownStabilizationSeconds "
              f"{OURS_SPEC.scale_down_stabilization_seconds}, idleSecondsBeforeZero "
              f"{OURS_SPEC.idle_seconds_before_zero}; '{OURS_DRAIN}': the same with targetDrainSeconds "
              f"{OURS_DRAIN_SPEC.target_drain_seconds}")
        for p in (KEDA_DEFAULT, KEDA_FAST):
            print(f"  {p.name}: {p.describe()}")
        print("  (KEDA and the HPA are modelled; a NULL lag would be -1, inferred from KEDA's code: no trace here "
              "makes one)")
        print("  wait = from XADD to a consumer starting on the message; every run adds "
              f"{tail:g} s without traffic so each policy can settle")
        if shrink != 1:
            print(f"  --smoke: every trace {shrink:g} times shorter than its description says; these figures "
                  "mean nothing")
    for name in names:
        trace = traces[name]
        drawn = arrivals(trace, seed, model.mean_work, model.work_sigma)
        rs = [simulate(trace, make, seed, model, tail, drawn) for make in policies()]
        results[name] = rs
        by = {r.policy: r for r in rs}
        for policy_name, spec in OURS_SPECS.items():
            verdicts[(name, policy_name)] = judge(by[policy_name], by[KEDA_DEFAULT.name], by[KEDA_FAST.name], spec,
                                                  model)
        if json_out:
            continue
        print(f"\ntrace {name}: {trace.description} ({len(drawn[0]):,} messages)")
        print_table([HEAD, *(row(r) for r in rs)])
        for policy_name in OURS_SPECS:
            for check, ok, why in verdicts[(name, policy_name)].checks:
                print(f"  {policy_name}: {check}: {'MET' if ok else 'MISSED'} ({why})")
    took = time.monotonic() - began
    if json_out:
        print(json.dumps({
            "seed": seed, "model": asdict(model), "seconds": took,
            "results": {name: [asdict(r) for r in rs] for name, rs in results.items()},
            "targets": [{"trace": v.trace, "policy": v.policy, "target": c, "met": ok, "why": why}
                        for v in verdicts.values() for c, ok, why in v.checks],
        }, indent=1))
        return 0
    print()
    for policy_name in OURS_SPECS:
        mine = [v for v in verdicts.values() if v.policy == policy_name]
        met = sum(ok for v in mine for _, ok, _ in v.checks)
        print(f"{policy_name}: {met} of {sum(len(v.checks) for v in mine)} targets met; all four on "
              f"{sum(v.met for v in mine)} of {len(mine)} traces")
    print("\n".join(["", "markdown:", *markdown(results, verdicts)]))
    print(f"\nsimulated in {took:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", action="append", choices=sorted(make_traces(1)),
                        help="replay only this trace (repeatable); default: every trace")
    parser.add_argument("--startup", type=float, default=ConsumerModel.startup, help="pod start-up seconds")
    parser.add_argument("--work-ms", type=float, default=ConsumerModel.mean_work * 1000,
                        help="mean per-message work in ms")
    parser.add_argument("--prefetch", type=int, default=ConsumerModel.prefetch, help="XREADGROUP COUNT")
    parser.add_argument("--tail", type=float, default=900.0, help="seconds without traffic after each trace")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--smoke", action="store_true",
                        help="every trace shortened 20 times, a 60 s tail: the same code path in seconds")
    args = parser.parse_args(argv)
    names = args.trace or list(make_traces(1))
    model = ConsumerModel(startup=args.startup, mean_work=args.work_ms / 1000, prefetch=args.prefetch)
    shrink, tail = (20.0, 60.0) if args.smoke else (1.0, args.tail)
    return run(dict.fromkeys(names), args.seed, model, shrink, tail, args.json)


if __name__ == "__main__":
    sys.exit(main())

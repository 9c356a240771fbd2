"""Pure scaling decisions for the consumers of one stream consumer group.

Nothing here reads a clock, talks to Redis or to Kubernetes: a decision is a function of

* one measurement of the group (:class:`GroupSample`: lag, pending, entries-read, consumers and when
  it was taken),
* the group's :class:`~redis_messaging.api.models.Autoscale` spec,
* the replica count the workload has now,
* a small :class:`GroupState` that the previous decision returned (never mutated; a new one comes
  back with every :class:`Decision`, and :meth:`GroupState.to_dict` makes it storable).

The rules, in the order they apply:

1. The metric is ``backlog`` (lag + pending, the default), ``lag`` or ``pending``.
2. Backlog rule: ``ceil(metric / backlogPerReplica)``. Rate-aware rule when ``targetDrainSeconds`` is
   set and a per-replica processing rate has been measured: the replicas that drain the backlog
   within ``targetDrainSeconds`` while keeping up with the arrival rate. The rate of one replica is
   the acknowledgements divided by the consumers that were consuming (not by the replicas asked for,
   see :func:`consuming`). Until the processing rate is measurable the backlog rule applies.
3. The recommendation is clamped to ``[minReplicas, maxReplicas]``; when there is anything to do
   (entries not delivered yet or pending, whatever the metric) it is at least 1, so one entry wakes a
   workload from zero, with the metric ``pending`` too (nothing is pending while no consumer runs).
4. An unknown lag (Redis reports a null lag) never lowers the replica count: the decision holds the
   current count, or scales up on what is known (the pending entries). A lag the collector counted
   up to its cap is a lower bound, not the lag: it too never lowers the count, and it scales up on
   what is known (the lower bound plus the pending entries).
5. Scale-up happens at once, at most ``maxStepUp`` replicas per decision when that is set.
6. Scale-down goes only to the highest recommendation seen within
   ``scaleDownStabilizationSeconds`` (like the HorizontalPodAutoscaler's scale-down stabilization);
   a fresh state counts the current replica count as a recommendation made now, so an operator
   restart never causes an immediate drop.
7. The last step to zero happens only after ``idleSecondsBeforeZero`` without lag and without
   pending entries; until then the workload keeps one replica.

Every :class:`Decision` carries a ``reason`` a human can read in an Event or in the status, e.g.
``"backlog 1200 (lag 1000 + pending 200) / 100 per replica -> 12, capped at max 10"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from redis_messaging.api.models import Autoscale

# Weight of a new per-replica rate measurement in the remembered (smoothed) rate.
RATE_SMOOTHING = 0.5


class GroupSample(Protocol):
    """What a decision needs to know about one consumer group at one instant.

    :class:`Sample` implements it, and so do the measurements of
    :mod:`redis_messaging.redis.streams`, without this module importing them.
    """

    @property
    def at(self) -> float:
        """When the measurement was taken, in seconds of a monotonic clock (any epoch, the same for
        every sample of a group). Windows and idle timers are differences of these times: on a wall
        clock, a step back would hold a scale-down for as long as the step, and a step forward would
        cut the idle time before zero short."""
        ...

    @property
    def lag(self) -> int | None:
        """Entries not yet delivered to the group; ``None`` when unknown (never read as 0)."""
        ...

    @property
    def lag_estimated(self) -> bool:
        """True when ``lag`` was counted by the collector because Redis reported it as null."""
        ...

    @property
    def lag_capped(self) -> bool:
        """True when that count stopped at its cap: the lag is at least ``lag``, maybe much more."""
        ...

    @property
    def pending(self) -> int | None:
        """Entries delivered to a consumer and not yet acknowledged; ``None`` when unknown."""
        ...

    @property
    def entries_read(self) -> int | None:
        """The group's logical read counter (Redis >= 7.0); ``None`` when Redis does not know it."""
        ...

    @property
    def consumers(self) -> int | None:
        """Consumers the group has (a consumer appears with its first read); ``None`` when unknown."""
        ...


@dataclass(frozen=True)
class Sample:
    """A plain :class:`GroupSample`, for tests and for callers that measure by other means."""

    at: float
    lag: int | None
    pending: int | None
    entries_read: int | None = None
    lag_estimated: bool = False
    lag_capped: bool = False
    consumers: int | None = None

    @classmethod
    def of(cls, sample: GroupSample, *, at: float) -> Sample:
        """What ``sample`` measured, stamped ``at`` (e.g. by the caller's own monotonic clock)."""
        return cls(at=at, lag=sample.lag, pending=sample.pending, entries_read=sample.entries_read,
                   lag_estimated=sample.lag_estimated, lag_capped=sample.lag_capped, consumers=sample.consumers)


@dataclass(frozen=True)
class Point:
    """The part of the previous sample that rates are computed from."""

    at: float
    lag: int | None
    """None when unknown, and when it was only a lower bound (a capped count): rates need the lag."""
    pending: int | None
    entries_read: int | None
    replicas: int


@dataclass(frozen=True)
class Rates:
    """Arrival rate of the stream and acknowledge rate of one replica, in entries per second."""

    arrival: float
    per_replica: float
    measured_now: bool
    """False when ``per_replica`` is the remembered rate of an earlier, saturated interval."""
    consuming: int | None = None
    """The consumers the acknowledgements were divided among, when measured now."""


@dataclass(frozen=True)
class GroupState:
    """What one decision leaves for the next one. Frozen: every decision returns a new state."""

    idle_since: float | None = None
    """Start of the current stretch without lag and without pending entries; None while busy."""
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, recommended replicas) within the scale-down stabilization window, oldest first."""
    previous: Point | None = None
    """The previous sample, for rates."""
    per_replica_rate: float | None = None
    """Smoothed acknowledge rate of one replica measured while the group had a backlog."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, e.g. for an annotation or the operator's status. Its times are the
        samples' (monotonic): they mean something to the process that took them only."""
        out: dict[str, Any] = {
            "idleSince": self.idle_since,
            "recommendations": [[t, r] for t, r in self.recommendations],
            "perReplicaRate": self.per_replica_rate,
        }
        if self.previous is not None:
            p = self.previous
            out["previous"] = {
                "at": p.at,
                "lag": p.lag,
                "pending": p.pending,
                "entriesRead": p.entries_read,
                "replicas": p.replicas,
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupState:
        """The inverse of :meth:`to_dict`; missing keys give the fresh state's values."""
        prev = data.get("previous")
        previous = None
        if isinstance(prev, Mapping):
            previous = Point(
                at=float(prev["at"]),
                lag=_opt_int(prev.get("lag")),
                pending=_opt_int(prev.get("pending")),
                entries_read=_opt_int(prev.get("entriesRead")),
                replicas=int(prev.get("replicas", 0)),
            )
        idle = data.get("idleSince")
        rate = data.get("perReplicaRate")
        return cls(
            idle_since=None if idle is None else float(idle),
            recommendations=tuple((float(t), int(r)) for t, r in data.get("recommendations", ())),
            previous=previous,
            per_replica_rate=None if rate is None else float(rate),
        )


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`."""

    desired: int
    """Replicas the workload should have now."""
    current: int
    reason: str
    """Why, in words, e.g. for an Event or ``status.streams[].groups[].lastDecision``."""
    state: GroupState
    """Pass this to the next :func:`decide` of the same group."""
    metric: int | None
    """Value of the configured metric, None when it is not known exactly (a null lag, or a lag counted
    up to the cap, which is only a lower bound)."""
    recommendation: int
    """Replicas the metric asks for, before stabilization, step limit and the idle rule."""

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _ceil_div(value: float, per: float) -> int:
    # A tiny tolerance keeps float noise (e.g. 3.0000000001) from asking one replica too many.
    return max(0, math.ceil(value / per - 1e-9))


def exact_lag(sample: GroupSample) -> int | None:
    """The sample's lag when it is known exactly: None when unknown, and when the collector's count
    stopped at its cap (then ``sample.lag`` is only a lower bound)."""
    return None if sample.lag_capped else sample.lag


def metric_of(sample: GroupSample, metric: str) -> tuple[int | None, int, str]:
    """The configured metric of a sample.

    Returns (value or None when it is not known exactly, what is known for sure of it: a lower bound,
    a description). A lag counted up to the cap makes the lag and the backlog unknown, and the count
    is what is known of them.
    """
    lag, pending = sample.lag, sample.pending
    if lag is None:
        lag_text = "unknown"
    elif sample.lag_capped:
        lag_text = f"at least {lag} (counted up to the cap)"
    else:
        lag_text = f"{lag}{' (estimated)' if sample.lag_estimated else ''}"
    pending_text = "unknown" if pending is None else str(pending)
    if metric == "pending":
        return pending, pending or 0, f"pending {pending_text}"
    if metric == "lag":
        return exact_lag(sample), lag or 0, f"lag {lag_text}"
    known = (lag or 0) + (pending or 0)
    if lag is not None and pending is not None and sample.lag_capped:
        return None, known, f"backlog at least {known} (lag {lag_text} + pending {pending_text})"
    if lag is None or pending is None:
        return None, known, f"backlog unknown (lag {lag_text} + pending {pending_text})"
    return lag + pending, known, f"backlog {lag + pending} (lag {lag_text} + pending {pending_text})"


def consuming(previous: Point, sample: GroupSample, replicas: int | None = None) -> int:
    """How many consumers the acknowledgements between ``previous`` and ``sample`` are divided among.

    Not the replicas asked for: right after a scale-up the new pods are still starting, and dividing
    by them makes one replica look slower, so the next decision asks for more again, up to
    maxReplicas. What can be measured is the group's consumers at the end of the interval: a consumer
    appears with its first read, so a pod that has not started consuming is not counted (one that
    started during the interval counts in full: the rate errs low, by the pods that came up within one
    tick, and does not feed on itself). The consumers of pods that are gone stay until reclaim deletes
    them, so the count is capped by the pods the workload can have had in the interval, the larger of
    the replica counts at its two ends (``previous.replicas`` and ``replicas``, the count now).
    Without a consumer count: the replica count at the start of the interval.
    """
    if sample.consumers is None:
        return previous.replicas
    return min(sample.consumers, max(previous.replicas, previous.replicas if replicas is None else replicas))


def measure_rates(
    previous: Point | None, sample: GroupSample, remembered: float | None, replicas: int | None = None
) -> tuple[Rates | None, float | None]:
    """Arrival and per-replica acknowledge rates between the previous sample and this one.

    The arrival rate is the change of ``entries_read + lag`` (the entries added to the stream as the
    group sees them). The per-replica rate is the change of ``entries_read`` minus the change of
    ``pending`` (entries acknowledged) divided by the consumers that were consuming (:func:`consuming`;
    ``replicas``: the replica count now). It is only trusted when the group had a backlog at both ends
    of the interval: replicas that wait for work acknowledge less than they could, and that rate would
    keep the workload too large for ever. A trusted rate is smoothed into the remembered one;
    otherwise the remembered rate is used.

    Returns (rates or None when not measurable, the per-replica rate to remember).
    """
    if previous is None:
        return None, remembered
    dt = sample.at - previous.at
    if dt <= 0:
        return None, remembered
    # A capped count is no lag: arrivals computed from it would be wrong (the count stays at the cap
    # while the lag moves), so no rate is measured on it.
    lag, read, prev_lag, prev_read = exact_lag(sample), sample.entries_read, previous.lag, previous.entries_read
    if lag is None or read is None or prev_lag is None or prev_read is None:
        return None, remembered
    added = (read + lag) - (prev_read + prev_lag)
    if added < 0:  # the group was reset (XGROUP SETID) or re-created: start over
        return None, None
    arrival = added / dt
    per_replica = remembered
    measured_now = False
    # Divided among the consumers that were consuming, not the replicas asked for (see consuming).
    consumers = consuming(previous, sample, replicas)
    if sample.pending is not None and previous.pending is not None and consumers > 0:
        acked = (read - prev_read) - (sample.pending - previous.pending)
        saturated = prev_lag > 0 and lag > 0
        if saturated and acked > 0:
            rate = acked / dt / consumers
            per_replica = rate if remembered is None else (
                RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * remembered
            )
            measured_now = True
    if per_replica is None or per_replica <= 0:
        return None, remembered
    return Rates(arrival=arrival, per_replica=per_replica, measured_now=measured_now,
                 consuming=consumers if measured_now else None), per_replica


def _clamp(raw: int, spec: Autoscale, notes: list[str]) -> int:
    if raw > spec.max_replicas:
        notes.append(f"capped at max {spec.max_replicas}")
        return spec.max_replicas
    if raw < spec.min_replicas:
        notes.append(f"raised to min {spec.min_replicas}")
        return spec.min_replicas
    return raw


def decide(sample: GroupSample, spec: Autoscale, current: int, state: GroupState) -> Decision:
    """Decide the replica count of the workload consuming one group. See the module docstring."""
    now = sample.at
    current = max(0, current)
    notes: list[str] = []

    value, known_part, text = metric_of(sample, spec.metric)
    idle = sample.lag == 0 and sample.pending == 0
    # Rule 3: work is entries not delivered yet (the lag, or its lower bound) or pending, whatever the
    # metric. The metric pending alone would never wake a workload from zero: nothing is delivered, so
    # nothing is pending, while no consumer runs.
    has_work = known_part > 0 or (sample.pending or 0) > 0 or (sample.lag or 0) > 0
    idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None

    rates, remembered_rate = measure_rates(state.previous, sample, state.per_replica_rate, current)
    per = spec.backlog_per_replica

    if value is None:
        raw = _ceil_div(known_part, per)
        notes.append(f"{text}; what is known ({known_part}) / {per} per replica -> {raw}")
        recommendation = _clamp(raw, spec, notes)
        if has_work and recommendation == 0:
            recommendation = 1
        # Rule 4: what is known is a lower bound (nothing of a null lag, the count of a capped one), so
        # it may raise the count but never lowers it.
        if recommendation < current:
            if sample.lag_capped and spec.metric != "pending":
                notes.append(f"holding at {current}: a lag counted up to the cap is a lower bound and never "
                             "scales down")
            else:
                notes.append(f"holding at {current}: an unknown lag never scales down")
            recommendation = current
    else:
        drain = spec.target_drain_seconds
        if drain is not None and rates is not None:
            needed = rates.arrival + value / drain
            raw = _ceil_div(needed, rates.per_replica)
            source = f"measured over {rates.consuming} consumers" if rates.measured_now else "remembered"
            notes.append(
                f"{text} drained in {drain}s + arrivals {rates.arrival:.1f}/s = {needed:.1f}/s, "
                f"{rates.per_replica:.1f}/s per replica ({source}) -> {raw}"
            )
        else:
            raw = _ceil_div(value, per)
            notes.append(f"{text} / {per} per replica -> {raw}")
            if drain is not None:
                notes.append("processing rate not measurable yet, backlog rule")
        recommendation = _clamp(raw, spec, notes)
        if has_work and recommendation == 0:
            recommendation = 1
            notes.append("at least 1 while there is work")

    window = spec.scale_down_stabilization_seconds
    history = state.recommendations or ((now, current),)
    recent = (*((t, r) for t, r in history if t > now - window), (now, recommendation))

    if recommendation > current:
        desired = recommendation
        if current == 0:
            notes.append("woken from zero")
        if spec.max_step_up is not None and desired > current + spec.max_step_up:
            desired = current + spec.max_step_up
            notes.append(f"step limited to +{spec.max_step_up} -> {desired}")
    elif recommendation < current:
        highest = max(r for _, r in recent)
        desired = min(current, highest)
        if desired > recommendation:
            notes.append(f"scale-down held at {desired}: highest recommendation within {window}s")
    else:
        desired = current

    if desired == 0 and current > 0:
        if idle_since is None:
            desired = 1
            notes.append("kept at 1: lag or pending entries are not known to be zero")
        else:
            quiet = now - idle_since
            if quiet < spec.idle_seconds_before_zero:
                desired = 1
                notes.append(f"kept at 1: idle {quiet:.0f}s of {spec.idle_seconds_before_zero}s before zero")
            else:
                notes.append(f"idle {quiet:.0f}s -> 0")

    new_state = GroupState(
        idle_since=idle_since,
        recommendations=recent,
        previous=Point(
            at=now,
            lag=exact_lag(sample),
            pending=sample.pending,
            entries_read=sample.entries_read,
            replicas=current,
        ),
        per_replica_rate=remembered_rate,
    )
    if desired == current and not any(n.startswith(("scale-down held", "holding", "kept")) for n in notes):
        notes.append(f"stays at {current}")
    elif desired != current:
        notes.append(f"{current} -> {desired}")
    return Decision(
        desired=desired,
        current=current,
        reason=", ".join(notes),
        state=new_state,
        metric=value,
        recommendation=recommendation,
    )


__all__ = [
    "Decision",
    "GroupSample",
    "GroupState",
    "Point",
    "Rates",
    "Sample",
    "consuming",
    "decide",
    "exact_lag",
    "measure_rates",
    "metric_of",
]

"""Pure choices of the autoscale loop, apart from the code that acts on them.

* which pods a scale-down should remove first (``controller.kubernetes.io/pod-deletion-cost``);
* which consumers are orphans (their pod is gone, or has finished) and which live consumer takes their
  entries;
* what ``status.streams`` says, and whether a change is worth a write now or can wait.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis_messaging.api import models
from redis_messaging.redis.nodes import dead_letter_stream, queue_key

Obj = dict[str, Any]
GroupKey = tuple[str, str]  # (stream, group)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MAX_DELETION_COST = 2**31 - 1  # the annotation is an int32

FINISHED_PHASES = ("Failed", "Succeeded")
"""A pod in one of these phases runs no container any more, e.g. one the kubelet evicted: it stays
listed, without a deletionTimestamp, until someone deletes it."""
UNFINISHED_PODS = ",".join(f"status.phase!={phase}" for phase in FINISHED_PHASES)
"""The field selector that leaves finished pods out of a list: a metadata-only list has no phase."""


@dataclass(frozen=True)
class PodView:
    name: str
    terminating: bool = False
    deletion_cost: str | None = None
    finished: bool = False


def pod_views(items: Iterable[Obj]) -> dict[str, PodView]:
    """Pods (or their metadata only) by name. A pod's phase is known only from a whole pod: list the
    metadata with the field selector :data:`UNFINISHED_PODS` to leave finished pods out."""
    out = {}
    for item in items:
        meta = item.get("metadata") or {}
        out[meta["name"]] = PodView(
            meta["name"],
            terminating=bool(meta.get("deletionTimestamp")),
            deletion_cost=(meta.get("annotations") or {}).get(DELETION_COST),
            finished=(item.get("status") or {}).get("phase") in FINISHED_PHASES,
        )
    return out


def deletion_costs(pods: Iterable[PodView], pending: Mapping[str, int]) -> dict[str, str]:
    """The deletion-cost annotations to set before a scale-down, only those that differ from now.

    The ReplicaSet controller removes pods with a lower cost first. A pod's cost is the number of
    entries its consumer has pending (consumer name = pod name), so the pods that would hand back the
    fewest entries go first; a pod with no consumer costs 0. Terminating pods are left alone.
    """
    out = {}
    for pod in pods:
        if pod.terminating:
            continue
        cost = str(min(max(pending.get(pod.name, 0), 0), MAX_DELETION_COST))
        if pod.deletion_cost != cost:
            out[pod.name] = cost
    return out


def alive(pods: Mapping[str, PodView]) -> set[str]:
    """The pods whose consumer may still run: every listed pod but the finished ones (a terminating
    pod is alive: it drains what it holds)."""
    return {name for name, pod in pods.items() if not pod.finished}


def orphans(pending: Mapping[str, int], pods: Mapping[str, PodView]) -> tuple[set[str], str | None]:
    """(consumers whose pod is gone, the live consumer to give their entries to or None).

    A pod is gone when it does not exist or has finished (:data:`FINISHED_PHASES`, e.g. evicted): its
    consumer will never acknowledge what it holds. The claimer is a consumer whose pod is alive and not
    terminating, the one with the fewest pending entries (then by name, so the choice is stable); a
    finished pod never receives entries.
    """
    live = alive(pods)
    dead = {name for name in pending if name not in live}
    candidates = [name for name in pending if name in live and not pods[name].terminating]
    claimer = min(candidates, key=lambda name: (pending[name], name), default=None)
    return dead, claimer


# ---------------------------------------------------------------------------------------------
# status.streams


@dataclass
class GroupView:
    """What the loop knows about one group, for status and metrics."""

    lag: int | None = None
    lag_estimated: bool = False
    lag_capped: bool = False
    pending: int | None = None
    orphaned_pending: int | None = None
    consumers: int | None = None
    current_replicas: int | None = None
    desired_replicas: int | None = None
    last_decision: str | None = None
    last_scale_time: str | None = None
    error: str | None = None


def shape_status(streams: Sequence[models.Stream], views: Mapping[GroupKey, GroupView],
                 lengths: Mapping[str, int | None], stream_errors: Mapping[str, str],
                 trimmed: Mapping[str, int], shards: Mapping[str, str | None] | None = None,
                 dead_lettered: Mapping[GroupKey, int] | None = None) -> list[Obj]:
    """``status.streams`` for the declared streams, in declaration order, unknown values left out.
    ``shards``: cluster mode, the shard that holds each stream; ``dead_lettered``: the entries each group
    with ``maxDeliveries`` moved to its dead-letter stream."""
    out = []
    for stream in streams:
        groups = []
        for group in stream.groups:
            view = views.get((stream.name, group.name)) or GroupView()
            dead = group.max_deliveries is not None
            groups.append(models.GroupStatus(
                name=group.name, lag=view.lag, lag_estimated=view.lag_estimated, lag_capped=view.lag_capped,
                pending=view.pending,
                orphaned_pending=view.orphaned_pending, consumers=view.consumers,
                current_replicas=view.current_replicas, desired_replicas=view.desired_replicas,
                last_decision=view.last_decision, last_scale_time=view.last_scale_time, error=view.error,
                dead_letter_stream=dead_letter_stream(stream.name, group) if dead else None,
                dead_lettered=(dead_lettered or {}).get((stream.name, group.name), 0) if dead else None,
            ))
        status = models.StreamStatus(name=stream.name, length=lengths.get(stream.name),
                                     shard=(shards or {}).get(stream.name),
                                     trimmed=trimmed.get(stream.name, 0), error=stream_errors.get(stream.name),
                                     groups=groups)
        out.append(status.model_dump(by_alias=True, exclude_none=True))
    return out


def shape_queues(queues: Sequence[models.Queue], views: Mapping[GroupKey, GroupView],
                 shards: Mapping[str, str | None] | None = None) -> list[Obj]:
    out = []
    for queue in queues:
        view = views.get(queue_key(queue.name)) or GroupView()
        status = models.QueueStatus(name=queue.name, length=view.lag, shard=(shards or {}).get(queue.name),
                                    current_replicas=view.current_replicas, desired_replicas=view.desired_replicas,
                                    last_decision=view.last_decision, last_scale_time=view.last_scale_time,
                                    error=view.error)
        out.append(status.model_dump(by_alias=True, exclude_none=True))
    return out


def shape_channels(channels: Sequence[models.Channel], subscribers: Mapping[str, int | None],
                   errors: Mapping[str, str]) -> list[Obj]:
    return [models.ChannelStatus(name=c.name, sharded=c.sharded, subscribers=subscribers.get(c.name),
                                 error=errors.get(c.name)).model_dump(by_alias=True, exclude_none=True)
            for c in channels]


def should_write_all(new: Mapping[str, Sequence[Obj]], written: Mapping[str, Sequence[Obj]] | None, *,
                     since_written: float, interval: float) -> bool:
    """:func:`should_write` over status.streams, status.queues and status.channels together; a channel
    whose subscriber count reaches or leaves 0 is actionable (messages published then are lost)."""
    written = written or {}
    if all(list(new.get(k, ())) == list(written.get(k, ())) for k in set(new) | set(written)):
        return False

    def listening(channels: Sequence[Obj] | None) -> tuple[Any, ...]:
        return tuple((c.get("name"), (c.get("subscribers") or 0) > 0, c.get("error")) for c in channels or ())

    if listening(new.get("channels")) != listening(written.get("channels")):
        return True
    if actionable([*new.get("streams", ()), *_queues_as_status(new.get("queues"))]) != actionable(
            [*written.get("streams", ()), *_queues_as_status(written.get("queues"))]):
        return True
    return since_written >= interval


def _queues_as_status(queues: Sequence[Obj] | None) -> list[Obj]:
    return [{"name": queue_key(str(q.get("name")))[0], "groups": [q]} for q in queues or ()]


_NUMBERS = re.compile(r"[0-9]+(\.[0-9]+)?")


def actionable(streams: Sequence[Obj] | None) -> tuple[Any, ...]:
    """The part of ``status.streams`` a user acts on: replica counts, errors, entries dead-lettered, and
    which rules made the decision (its reason with the numbers left out: "backlog # ... -> #" stays the
    same while the backlog moves, "scale-down held" or "capped at max" appear and disappear)."""
    out: list[Any] = []
    for stream in streams or ():
        out.append((stream.get("name"), stream.get("error")))
        for group in stream.get("groups") or ():
            reason = group.get("lastDecision")
            out.append((group.get("name"), group.get("currentReplicas"), group.get("desiredReplicas"),
                        group.get("error"), None if reason is None else _NUMBERS.sub("#", reason),
                        group.get("deadLettered")))
    return tuple(out)


def should_write(new: Sequence[Obj], written: Sequence[Obj] | None, *, since_written: float,
                 interval: float) -> bool:
    """Write ``new`` now? Never when nothing changed; at once when something actionable changed;
    otherwise (lag and pending moved) once ``interval`` seconds have passed since the last write."""
    if written is not None and list(new) == list(written):
        return False
    if actionable(new) != actionable(written):
        return True
    return since_written >= interval

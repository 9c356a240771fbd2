"""The streams step of a pass: declared groups and retention on the node that owns each stream, and
who else scales the workloads the operator autoscales.

Runs after the topology step, on every pass (create, update, resume, the periodic safety net):

* groups are created as declared (and undeclared ones pruned when a stream says so), then retention
  trims each stream (safely unless ``retention.unsafe``); a created or pruned group is an Event;
* a HorizontalPodAutoscaler or a KEDA ScaledObject aimed at a workload that a group autoscales, or
  two groups aimed at the same workload, is a conflict: the operator refuses to scale that workload
  and says so in the ``AutoscaleConflict`` condition (a Warning Event when it appears). This is a
  check per pass, not per autoscaler tick: two list calls, only for resources that autoscale;
* a group with ``maxDeliveries`` whose dead-letter stream cannot take its dead letters (the stream
  itself, or in cluster mode a key on another hash slot: the copy and the acknowledgement run in one
  script) is refused in the ``DeadLettersReady`` condition (a Warning Event when it appears), and the
  autoscale loop moves nothing for it.

Nothing here raises for Redis or for a missing KEDA: a problem becomes a condition message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api import conditions as cond
from redis_messaging.api.models import RedisMessagingSpec, Stream
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube, KubeError
from redis_messaging.modes.base import Action
from redis_messaging.redis.addresses import Addresses
from redis_messaging.redis.nodes import (
    GroupKey,
    Node,
    Placement,
    Pools,
    dead_letter_refusals,
    provision,
    queues_as_streams,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]

STREAMS_READY = "StreamsReady"
AUTOSCALE_CONFLICT = "AutoscaleConflict"
DEAD_LETTERS_READY = "DeadLettersReady"
DEAD_LETTER_REFUSED = "DeadLetterStreamRefused"


# ---------------------------------------------------------------------------------------------
# Conflicts: pure


@dataclass(frozen=True)
class Conflict:
    stream: str
    group: str
    target: str  # e.g. "Deployment billing-worker"
    by: tuple[str, ...]  # e.g. ("HorizontalPodAutoscaler billing",)

    @property
    def message(self) -> str:
        return (f"{self.stream}/{self.group}: {self.target} is also scaled by {', '.join(self.by)}; "
                "the operator does not scale it")


def _target_of(ref: Any, default_kind: str | None) -> tuple[str, str] | None:
    if not isinstance(ref, dict) or not ref.get("name"):
        return None
    kind = ref.get("kind") or default_kind
    return (str(kind), str(ref["name"])) if kind else None


def autoscale_conflicts(streams: Sequence[Stream], hpas: Sequence[Obj],
                        scaled_objects: Sequence[Obj]) -> list[Conflict]:
    """Every autoscaled group whose workload something else scales too.

    An HPA ``spec.scaleTargetRef`` (kind and name) or a ScaledObject ``spec.scaleTargetRef`` (kind
    defaults to Deployment) naming the group's target, or another group of the same resource with the
    same target. The HPA that KEDA creates for a ScaledObject is not named twice.
    """
    others: dict[tuple[str, str], list[str]] = {}
    for so in scaled_objects:
        target = _target_of((so.get("spec") or {}).get("scaleTargetRef"), "Deployment")
        if target is not None:
            others.setdefault(target, []).append(f"ScaledObject {so['metadata']['name']}")
    for hpa in hpas:
        owners = (hpa.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("kind") == "ScaledObject" for o in owners):
            continue
        target = _target_of((hpa.get("spec") or {}).get("scaleTargetRef"), None)
        if target is not None:
            others.setdefault(target, []).append(f"HorizontalPodAutoscaler {hpa['metadata']['name']}")
    ours: dict[tuple[str, str], list[str]] = {}
    for stream in streams:
        for group in stream.groups:
            if group.autoscale is not None:
                t = group.autoscale.target
                ours.setdefault((t.kind, t.name), []).append(f"{stream.name}/{group.name}")
    out = []
    for stream in streams:
        for group in stream.groups:
            if group.autoscale is None:
                continue
            target = (group.autoscale.target.kind, group.autoscale.target.name)
            me = f"{stream.name}/{group.name}"
            by = [*sorted(others.get(target, [])), *(f"group {g}" for g in ours[target] if g != me)]
            if by:
                out.append(Conflict(stream.name, group.name, f"{target[0]} {target[1]}", tuple(by)))
    return out


# ---------------------------------------------------------------------------------------------
# The step


@dataclass
class StreamsReport:
    placement: Placement | None = None
    """Where the streams live (None: no master to reach yet)."""
    conflicts: dict[GroupKey, str] | None = None
    """Groups the operator must not scale, with why; None when the check could not be made (keep
    what the previous check found)."""
    trimmed: dict[str, int] = field(default_factory=dict)
    """Entries removed by retention in this pass, by stream."""
    conditions: list[cond.Cond] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


def _autoscales(spec: RedisMessagingSpec) -> bool:
    return (any(g.autoscale is not None for s in spec.streams for g in s.groups)
            or any(q.autoscale is not None for q in spec.queues))


class StreamsStep:
    def __init__(self, kube: Kube, addresses: Addresses, pools: Pools) -> None:
        self.kube = kube
        self.addresses = addresses
        self.pools = pools

    def placement(self, owner: Owner, master: str | None,
                  shards: Sequence[Mapping[str, Any]] | None) -> Placement | None:
        """Sentinel mode: the master. Cluster mode: ``status.shards`` as the topology reports it."""
        if shards is not None:
            served = []
            for shard in shards:
                if shard.get("master") and shard.get("slots"):
                    ranges = [tuple(int(x) for x in part.split("-")) for part in str(shard["slots"]).split(",")]
                    node = Node(shard["master"], self.addresses.redis(owner, shard["master"]), shard.get("name"))
                    served.append((node, [(r[0], r[-1]) for r in ranges]))
            return Placement.sharded(served)
        if master is None:
            return None
        return Placement(Node(master, self.addresses.redis(owner, master)))

    def run(self, spec: RedisMessagingSpec, owner: Owner, master: str | None, password: str | None,
            *, waiting: str = "", shards: Sequence[Mapping[str, Any]] | None = None) -> StreamsReport | None:
        """None when the resource declares no stream, queue or channel. ``shards``: cluster mode's
        ``status.shards``."""
        if not (spec.streams or spec.queues or spec.channels):
            return None
        report = StreamsReport()
        if _autoscales(spec):
            self._check_conflicts(spec, owner, report)
        else:
            report.conflicts = {}
        self._check_dead_letters(spec, report)
        report.placement = self.placement(owner, master, shards)
        if report.placement is None:
            report.conditions.append(cond.Cond(
                STREAMS_READY, False, "WaitingForMaster",
                f"streams and groups are provisioned once a master is reachable ({waiting or 'no master yet'})"))
            return report
        errors = []
        for where, streams in report.placement.by_node(spec.streams):
            client = self.pools.node((owner.namespace, owner.name), password, where.address,
                                     self.addresses.tls(owner))
            for stream in streams:
                done = provision(client, stream)
                start = {g.name: g.start_id for g in stream.groups}
                for group in done.created:
                    report.actions.append(Action(
                        "GroupCreated", f"created consumer group {group} of stream {stream.name} at {start[group]}"))
                for group in done.pruned:
                    report.actions.append(Action("GroupPruned", f"deleted consumer group {group} of stream "
                                                 f"{stream.name}: not declared and the stream says prune",
                                                 warning=True))
                if done.trimmed:
                    report.trimmed[stream.name] = done.trimmed
                    log.info("%s/%s: retention removed %d entries of stream %s", owner.namespace, owner.name,
                             done.trimmed, stream.name)
                if done.error is not None:
                    errors.append(f"{done.error} (on {where.name})")
        if errors:
            report.conditions.append(cond.Cond(STREAMS_READY, False, "StreamsFailed", "; ".join(errors)))
        else:
            groups = sum(len(s.groups) for s in spec.streams)
            report.conditions.append(cond.Cond(
                STREAMS_READY, True, "Provisioned",
                f"{len(spec.streams)} stream(s) and {groups} group(s) as declared on "
                f"{master if shards is None else 'the shards that own them'}"))
        return report

    @staticmethod
    def _check_dead_letters(spec: RedisMessagingSpec, report: StreamsReport) -> None:
        groups = sum(1 for s in spec.streams for g in s.groups if g.max_deliveries is not None)
        if not groups:
            return
        refused = dead_letter_refusals(spec)
        if refused:
            report.conditions.append(cond.Cond(DEAD_LETTERS_READY, False, DEAD_LETTER_REFUSED,
                                               "; ".join(refused.values())))
        else:
            report.conditions.append(cond.Cond(
                DEAD_LETTERS_READY, True, "AsDeclared",
                f"{groups} group(s) move the entries delivered more than maxDeliveries times to their "
                "dead-letter stream"))

    def _check_conflicts(self, spec: RedisMessagingSpec, owner: Owner, report: StreamsReport) -> None:
        try:
            hpas = self.kube.list("HorizontalPodAutoscaler", owner.namespace)
            try:
                scaled_objects = self.kube.list("ScaledObject", owner.namespace)
            except KubeError as exc:
                if exc.status != 404:  # 404: KEDA is not installed, so no ScaledObject exists
                    raise
                scaled_objects = []
        except KubeError as exc:
            report.conditions.append(cond.Cond(
                AUTOSCALE_CONFLICT, None, "CheckFailed",
                f"could not list HorizontalPodAutoscalers and ScaledObjects: {exc}"))
            return
        conflicts = autoscale_conflicts([*spec.streams, *queues_as_streams(spec.queues)], hpas, scaled_objects)
        report.conflicts = {(c.stream, c.group): c.message for c in conflicts}
        if conflicts:
            report.conditions.append(cond.Cond(AUTOSCALE_CONFLICT, True, "ConflictingAutoscaler",
                                               "; ".join(c.message for c in conflicts)))
        else:
            report.conditions.append(cond.Cond(AUTOSCALE_CONFLICT, False, "NoConflict",
                                               "no other autoscaler targets the autoscaled workloads"))

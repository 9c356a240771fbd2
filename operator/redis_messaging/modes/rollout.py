"""What both modes' ordered rolling updates share: when a pod is outdated and why, the moves of a
roll (wait, delete a pod, done), and the reporting (the RollingUpdate condition and its Events).

The StatefulSets use ``OnDelete``: the operator replaces pods itself, one disruption at a time, in an
order each mode decides (:mod:`redis_messaging.modes.sentinel.rolling`,
:mod:`redis_messaging.modes.cluster.rolling`). Nothing is remembered between passes: the next move
follows from the pods and from what Redis reports, so an operator restart resumes a roll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api import conditions as cond
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis.addresses import Addresses, OwnerConnections

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ROLLING_UPDATE = "RollingUpdate"
REVISION_LABEL = "controller-revision-hash"
RETRY_SECONDS = 2.0

# ---------------------------------------------------------------------------------------------
# Comparing a pod with its StatefulSet: reasons, in words


def outdated_reasons(pod: Obj, sts: Obj) -> tuple[str, ...]:
    """Why ``pod`` does not run its StatefulSet's current template (empty: it does)."""
    reasons: list[str] = []
    template = (sts.get("spec") or {}).get("template") or {}
    want_hash = ((template.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_CONFIG_HASH)
    have_hash = ((pod.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_CONFIG_HASH)
    if want_hash and have_hash != want_hash:
        reasons.append(f"config hash {have_hash} -> {want_hash}")
    have_images = {c["name"]: c.get("image") for c in (pod.get("spec") or {}).get("containers") or []}
    for container in (template.get("spec") or {}).get("containers") or []:
        have = have_images.get(container["name"])
        if have is not None and have != container.get("image"):
            reasons.append(f"image of {container['name']} {have} -> {container.get('image')}")
    update = ((sts.get("status") or {}).get("updateRevision"))
    revision = ((pod.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)
    if not reasons and update and revision and revision != update:
        reasons.append(f"pod template revision {revision} -> {update}")
    return tuple(reasons)


def pod_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# ---------------------------------------------------------------------------------------------
# The moves


@dataclass(frozen=True)
class PodState:
    name: str
    kind: str  # "redis" | "sentinel"
    ready: bool  # exists, not terminating, Ready
    outdated: tuple[str, ...] = ()
    terminating: bool = False  # deleted, not gone yet


def pod_state(name: str, kind: str, pod: Obj | None, sts: Obj | None) -> PodState:
    """A pod of a StatefulSet as the roll sees it (a missing pod, or StatefulSet: not ready)."""
    if pod is None or sts is None:
        return PodState(name, kind, ready=False)
    return PodState(name, kind, pod_ready(pod), outdated_reasons(pod, sts),
                    terminating=bool((pod.get("metadata") or {}).get("deletionTimestamp")))


@dataclass(frozen=True)
class Wait:
    why: str


@dataclass(frozen=True)
class DeletePod:
    pod: str
    kind: str
    reasons: tuple[str, ...]
    left: int  # outdated pods, this one included


@dataclass(frozen=True)
class Done:
    pass



Move = Wait | DeletePod | Done


def gate(pods: Mapping[str, PodState], unsynced: Collection[str] = ()) -> Done | Wait | None:
    """Done when no pod is outdated, Wait while one is not ready, else None: the roll may move.

    One exception (see :func:`stuck_replica`): when the only pod not ready is an outdated replica in
    ``unsynced``, the roll may move on, to restart it once the mode has checked the rest."""
    if not any(p.outdated for p in pods.values()):
        return Done()
    not_ready = sorted(p.name for p in pods.values() if not p.ready)
    if not_ready and stuck_replica(pods, unsynced) is None:
        return Wait(f"waiting for {', '.join(not_ready)} to be ready")
    return None


def stuck_replica(pods: Mapping[str, PodState], unsynced: Collection[str]) -> PodState | None:
    """The outdated replica to restart before any other move, if there is one: the only pod not ready,
    outdated, and in ``unsynced``: the mode's list of replicas that answer, are not loading, follow the
    master, have their link to it down, and run an engine older than the master's.

    Waiting for it to be ready would never end: a replica can only load the snapshot of a master running
    the same engine or an older one, so an old master demoted to follow a replica already upgraded
    (Redis 7.0 under Redis 8.0 or Valkey 9) refuses every full sync it is sent. Restarting it on the new
    template takes nothing away: it serves no read in sync and counts for no write
    (``min-replicas-to-write`` counts replicas that acknowledge), it is replaced next anyway, and every
    other pod is ready. The mode restarts it only once everything else is as a roll move requires: the
    other replicas in sync, and the master up for everyone who decides a failover (a replica restarted
    while the master is being failed over could not be promoted)."""
    not_ready = [p for p in pods.values() if not p.ready]
    if (len(not_ready) == 1 and not_ready[0].outdated and not not_ready[0].terminating
            and not_ready[0].name in unsynced):
        return not_ready[0]
    return None


def restart_stuck(pod: PodState, left: int, master: str) -> DeletePod:
    return DeletePod(pod.name, pod.kind, (*pod.outdated, f"not ready, its link to {master} down: its engine "
                                                         "cannot load the newer master's snapshot"), left)


# ---------------------------------------------------------------------------------------------
# Acting and reporting


@dataclass
class RollReport:
    actions: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)
    condition: cond.Cond | None = None
    retry_after: float | None = None
    step: object = field(default_factory=Done)  # what this pass decided


class Roller:
    """The acting half of a mode's roll: connections, pod deletion, reporting."""

    def __init__(self, kube: Kube | None, addresses: Addresses, *, timeout: float = 2.0) -> None:
        self.kube = kube
        self.addresses = addresses
        self.timeout = timeout
        self._connections = OwnerConnections(addresses, lambda pw: rs.Connections(pw, timeout=timeout))

    def connections(self, owner: Owner, password: str | None) -> rs.Connections:
        return self._connections.get(owner, password)

    def close(self) -> None:
        self._connections.close()

    @staticmethod
    def progress(report: RollReport, states: Mapping[str, PodState]) -> str | None:
        """How much is left, in words; None (and the UpToDate condition) when nothing is."""
        outdated = sorted(p.name for p in states.values() if p.outdated)
        if not outdated:
            report.condition = cond.Cond(ROLLING_UPDATE, False, "UpToDate", "every pod runs its current template")
            return None
        report.retry_after = RETRY_SECONDS
        return f"{len(outdated)} of {len(states)} pods to replace"

    def wait_or_delete(self, report: RollReport, progress: str, step: Wait | DeletePod, owner: Owner,
                       delete_pod: Callable[[str], None] | None) -> None:
        if isinstance(step, Wait):
            report.condition = cond.Cond(ROLLING_UPDATE, True, "Waiting", f"{progress}; {step.why}")
            return
        role = {"sentinel": "Sentinel ", "redis": "replica "}.get(step.kind, "")
        message = f"Restarting {role}{step.pod} ({'; '.join(step.reasons)}); {step.left - 1} more after it"
        if delete_pod is not None:
            delete_pod(step.pod)
        elif self.kube is not None:
            self.kube.delete("Pod", owner.namespace, step.pod)
        report.events.append((ROLLING_UPDATE, message))
        report.actions.append(f"{ROLLING_UPDATE}: {message}")
        report.condition = cond.Cond(ROLLING_UPDATE, True, "Restarting", f"{progress}; {message}")

    @staticmethod
    def switched(report: RollReport, progress: str, message: str) -> None:
        report.events.append(("RollingUpdateSwitchover", message))
        report.actions.append(f"RollingUpdateSwitchover: {message}")
        report.condition = cond.Cond(ROLLING_UPDATE, True, "SwitchingOver", f"{progress}; {message}")

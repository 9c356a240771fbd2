"""Ordered rolling updates of a cluster-mode resource (the shard StatefulSets use ``OnDelete``).

When a shard pod's template is older than its StatefulSet's, the operator replaces pods itself, one
disruption in the whole cluster at a time, and only while every node says ``cluster_state:ok`` and
every replica's link to its master is up (but for a stuck replica, below):

1. replicas, one by one (any shard);
2. for each outdated master: ``CLUSTER FAILOVER`` on an up-to-date replica of its shard. The failover
   is coordinated: the master stops accepting writes, the replica catches up with its offset, then
   takes over, so no acknowledged write is lost;
3. the old master, now a replica, like any replica.

A replica that is outdated, not ready and not linked to its master because its engine cannot load the
master's snapshot (an old master demoted under a newer engine) is restarted before any other move, once
every other replica is linked and no node suspects the master
(:func:`redis_messaging.modes.rollout.stuck_replica`).

A shard without replicas (``replicasPerShard: 0``) has nobody to hand over to: its master is restarted
in place, and its slots are unavailable until it is back (its data is on its volume).

Nothing is remembered between passes: the next move follows from the pods and what the nodes report,
so an operator restart resumes the roll. :func:`plan` is pure; :class:`ClusterRoller` acts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders.names import Owner
from redis_messaging.modes.rollout import (
    DeletePod,
    Done,
    Obj,
    PodState,
    Roller,
    RollReport,
    Wait,
    gate,
    pod_state,
    restart_stuck,
    stuck_replica,
)
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.engine import cannot_load_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterObservation:
    pods: Mapping[str, PodState]  # every shard pod the spec asks for, by name
    shard_of: Mapping[str, int]  # pod -> shard index
    views: Mapping[str, cl.NodeView]  # by pod


@dataclass(frozen=True)
class ClusterFailover:
    master: str
    to: str  # the up-to-date, linked replica of the same shard that takes over
    reasons: tuple[str, ...]


ClusterRollStep = Wait | DeletePod | ClusterFailover | Done


def unlinked_replicas(obs: ClusterObservation) -> set[str]:
    """Pods that answer as replicas, have their link to their master down, and run an engine that cannot
    load its master's snapshot (see :func:`~redis_messaging.modes.rollout.stuck_replica`). A node that is
    loading answers no ``DBSIZE``: it does not answer here."""
    by_id = {v.id: v for v in obs.views.values() if v.reachable and v.id}
    out = set()
    for pod, view in obs.views.items():
        me = view.myself
        if not view.reachable or me is None or me.is_master or view.link_up or me.master_id is None:
            continue
        master = by_id.get(me.master_id)
        if master is not None and cannot_load_from(master.engine, view.engine):
            out.add(pod)
    return out


def plan(obs: ClusterObservation) -> ClusterRollStep:
    """The next move of the roll; one disruption at a time."""
    unsynced = unlinked_replicas(obs)
    early = gate(obs.pods, unsynced)
    if early is not None:
        return early
    stuck = stuck_replica(obs.pods, unsynced)
    outdated = [p for p in obs.pods.values() if p.outdated]
    ids: dict[str, str] = {}
    for pod in sorted(obs.pods):
        view = obs.views.get(pod)
        if view is None or not view.reachable or view.myself is None:
            return Wait(f"waiting for {pod} to answer")
        if view.state != "ok":
            return Wait(f"waiting for cluster_state:ok on {pod} (it says {view.state or 'nothing'})")
        ids[pod] = view.myself.id
    masters: dict[str, str] = {}  # pod -> its master's pod, for replicas
    for pod, view in obs.views.items():
        me = view.myself
        if pod not in obs.pods or me is None or me.is_master:
            continue
        master = next((p for p, i in ids.items() if i == me.master_id), None)
        if master is None or obs.shard_of.get(master) != obs.shard_of.get(pod):
            return Wait(f"waiting for {pod} to replicate its shard's master")
        if not view.link_up and (stuck is None or pod != stuck.name):
            return Wait(f"waiting for {pod} to replicate its shard's master with its link up")
        masters[pod] = master
    if stuck is not None:
        # Only while no node suspects its master: a replica restarted while its master is failing could
        # not be elected in its place.
        master_id = ids[masters[stuck.name]]
        doubting = sorted(p for p, v in obs.views.items()
                          if (n := v.node(master_id)) is None or n.failed or n.suspected or not n.connected)
        if doubting:
            return Wait(f"{stuck.name} cannot sync with {masters[stuck.name]}; restarted once every node sees "
                        f"{masters[stuck.name]} up ({', '.join(doubting)} do not)")
        return restart_stuck(stuck, len(outdated), masters[stuck.name])
    replicas = sorted((p for p in outdated if p.name in masters), key=lambda p: p.name)
    if replicas:
        first = replicas[0]
        return DeletePod(first.name, "shard", first.outdated, len(outdated))
    old = sorted(outdated, key=lambda p: p.name)[0]  # an outdated master
    candidates = sorted(p for p, m in masters.items() if m == old.name and not obs.pods[p].outdated)
    if candidates:
        return ClusterFailover(old.name, candidates[0], old.outdated)
    if any(m == old.name for m in masters.values()):
        return Wait(f"no up-to-date replica to take over from {old.name}")
    # No replica at all in this shard: restarted in place (its slots wait for it).
    return DeletePod(old.name, "shard", (*old.outdated, "no replica to hand over to"), len(outdated))


class ClusterRoller(Roller):
    """The cluster-mode roll; connections, pod deletion and reporting are the Sentinel-mode step's."""

    def pod_states_of_shards(self, spec: RedisMessagingSpec, owner: Owner, statefulsets: Mapping[str, Obj],
                             pods: list[Obj]) -> tuple[dict[str, PodState], dict[str, int]]:
        by_name = {p["metadata"]["name"]: p for p in pods}
        states: dict[str, PodState] = {}
        shard_of: dict[str, int] = {}
        for index in range(spec.cluster.shards):
            sts = statefulsets.get(owner.shard(index))
            for ordinal in range(1 + spec.cluster.replicas_per_shard):
                name = owner.shard_pod(index, ordinal)
                shard_of[name] = index
                states[name] = pod_state(name, "shard", by_name.get(name), sts)
        return states, shard_of

    def run(self, spec: RedisMessagingSpec, owner: Owner, statefulsets: Mapping[str, Obj], pods: list[Obj],
            password: str | None, delete_pod: Callable[[str], None] | None = None,
            states: tuple[Mapping[str, PodState], Mapping[str, int]] | None = None) -> RollReport:
        """One move of the roll of a cluster-mode resource. ``states`` and ``delete_pod`` replace the
        pods' states and the Kubernetes delete (tests with processes and no kubelet)."""
        report = RollReport()
        pod_states, shard_of = states or self.pod_states_of_shards(spec, owner, statefulsets, pods)
        progress = self.progress(report, pod_states)
        if progress is None:
            return report
        conns = self.connections(owner, password)
        views = {pod: cl.observe(conns, self.addresses.redis(owner, pod)) for pod in pod_states}
        step = plan(ClusterObservation(pod_states, shard_of, views))
        if isinstance(step, ClusterFailover):
            cl.failover(conns, self.addresses.redis(owner, step.to))
            self.switched(report, progress, f"Switching shard master {step.master} over to {step.to} before "
                                            f"restarting it ({'; '.join(step.reasons)}); CLUSTER FAILOVER on {step.to}")
        elif isinstance(step, Wait | DeletePod):
            self.wait_or_delete(report, progress, step, owner, delete_pod)
        return report

"""Ordered rolling updates of a sentinel-mode resource (the StatefulSets use ``OnDelete``).

When a pod's template is older than its StatefulSet's (another controller revision, config hash or
image), the operator replaces pods itself, one disruption at a time:

1. Sentinels, one by one; the next only when every Sentinel is back and monitors the master;
2. Redis replicas, one by one; the next only when the restarted one is back in sync
   (``master_link_status:up`` and its offset caught up with the master's);
3. ``SENTINEL FAILOVER`` to an up-to-date, in-sync replica;
4. the old master, now a replica, like any replica.

A replica that is outdated, not ready and not linked to the master because its engine cannot load the
master's snapshot (an old master demoted under a newer engine) is restarted before any other move, once
the other replicas are in sync and no Sentinel sees the master down
(:func:`redis_messaging.modes.rollout.stuck_replica`); waiting for it would hold the roll for good.

Nothing is remembered between passes: what to do next follows from the pods (their revision and
annotations against the StatefulSet's) and from what Redis and Sentinel report, so an operator
restart resumes the roll where it was. :func:`plan` is pure; :class:`SentinelRoller` observes and acts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
from redis_messaging.modes.sentinel.objects import catch_up_millis
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis import switchover
from redis_messaging.redis.engine import cannot_load_from

log = logging.getLogger(__name__)

PAUSE_MAX_MS = 10_000  # the old master's writes are paused at most this long around the switch-over
CATCH_UP_SECONDS = 2.0


@dataclass(frozen=True)
class RollObservation:
    pods: Mapping[str, PodState]  # every pod the StatefulSets should have, by name
    redis: Mapping[str, rs.RedisNode]  # by pod
    sentinels: Mapping[str, rs.SentinelNode]  # by pod
    master: str | None  # the pod the majority of Sentinels name
    master_offset: int = 0  # read before the replicas' offsets
    follows: Mapping[str, str | None] = field(default_factory=dict)  # replica pod -> the pod it replicates
    # Sentinel pod -> replica pod -> why that Sentinel would not promote it now (None: it would)
    choices: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    names: Mapping[str, str | None] = field(default_factory=dict)  # Sentinel pod -> the master pod it names


@dataclass(frozen=True)
class Failover:
    master: str
    to: tuple[str, ...]  # in-sync up-to-date replicas Sentinel may pick
    reasons: tuple[str, ...]
    through: tuple[str, ...] = ()  # the Sentinels that would promote one of them, to ask in this order


RollStep = Wait | DeletePod | Failover | Done


def replica_in_sync(obs: RollObservation, pod: str) -> bool:
    """Replicating from the master, link up, offset at least the master's when it was observed."""
    node = obs.redis.get(pod)
    return (node is not None and node.reachable and node.role == "slave" and node.link_up
            and obs.follows.get(pod) == obs.master and node.offset >= obs.master_offset)


def unlinked_replicas(obs: RollObservation) -> set[str]:
    """Redis pods that answer as replicas of the master, are not loading, have their link to it down, and
    run an engine that cannot load its snapshot (see :func:`~redis_messaging.modes.rollout.stuck_replica`)."""
    master = obs.redis.get(obs.master) if obs.master is not None else None
    if master is None or not master.is_master:
        return set()
    return {p for p, n in obs.redis.items()
            if n.reachable and n.role == "slave" and not n.loading and not n.link_up
            and obs.follows.get(p) == obs.master and cannot_load_from(master.engine, n.engine)}


def plan(obs: RollObservation) -> RollStep:
    """The next move of the roll; one disruption at a time."""
    unsynced = unlinked_replicas(obs)
    early = gate(obs.pods, unsynced)
    if early is not None:
        return early
    stuck = stuck_replica(obs.pods, unsynced)
    outdated = [p for p in obs.pods.values() if p.outdated]
    # Sentinels: all monitoring the same master, no failover under way.
    sentinel_pods = [p for p in obs.pods.values() if p.kind == "sentinel"]
    redis_count = sum(1 for p in obs.pods.values() if p.kind == "redis")
    for p in sentinel_pods:
        s = obs.sentinels.get(p.name)
        if s is None or not s.reachable or not s.monitoring:
            return Wait(f"waiting for Sentinel {p.name} to monitor the master")
        if s.failing_over:
            return Wait("waiting for the failover in progress")
        # A Sentinel that does not know its peers cannot vote; one that does not know a replica
        # would not re-point it in a failover.
        if len(s.sentinels) < len(sentinel_pods) - 1 or len(s.replicas) < redis_count - 1:
            return Wait(f"waiting for Sentinel {p.name} to know every Sentinel and replica")
    if obs.master is None:
        return Wait("waiting for the Sentinels to agree on a master")
    master_node = obs.redis.get(obs.master)
    if master_node is None or not master_node.is_master:
        return Wait(f"waiting for {obs.master} to be the master the Sentinels name")
    replicas = [p for p in obs.pods.values() if p.kind == "redis" and p.name != obs.master]
    lagging = sorted(p.name for p in replicas
                     if not replica_in_sync(obs, p.name) and (stuck is None or p.name != stuck.name))
    if lagging:
        return Wait(f"waiting for {', '.join(lagging)} to catch up with {obs.master}")
    if stuck is not None:
        # Only while no Sentinel doubts the master: one that sees it down may be about to fail it over.
        doubting = sorted(s for s, node in obs.sentinels.items()
                          if node.master_down or obs.names.get(s) != obs.master)
        if doubting:
            return Wait(f"{stuck.name} cannot sync with {obs.master}; restarted once every Sentinel sees "
                        f"{obs.master} up as the master ({', '.join(doubting)} do not)")
        return restart_stuck(stuck, len(outdated), obs.master)
    ordered = sorted(outdated, key=lambda p: (p.kind != "sentinel", p.name == obs.master, -_ordinal(p.name)))
    first = ordered[0]
    if first.name != obs.master:
        return DeletePod(first.name, first.kind, first.outdated, len(outdated))
    candidates = tuple(sorted(p.name for p in replicas if not p.outdated))
    if not candidates:
        return Wait(f"no up-to-date replica to take over from {obs.master}")
    # Sentinel judges replicas on its last INFO of each (every 10 s), not on the replicas themselves:
    # asked too soon after a restart it answers NOGOODSLAVE. Ask only a Sentinel that would promote an
    # up-to-date replica, by Sentinel's rules for a master that is up (one that sees it down is left out).
    choosing = {s: c for s, c in sorted(obs.choices.items())
                if s in obs.sentinels and not obs.sentinels[s].master_down}
    through = tuple(s for s, seen in choosing.items() if any(seen.get(c, "unknown to it") is None for c in candidates))
    if not through:
        why = "; ".join(f"{s} would promote none of " + ", ".join(f"{c} ({seen.get(c) or 'unknown to it'})"
                                                                   for c in candidates)
                        for s, seen in choosing.items()) or "no Sentinel sees the master up"
        return Wait(f"waiting for a Sentinel to see a replica it would promote: {why} (Sentinel reads each "
                    "replica's INFO every 10 s)")
    return Failover(obs.master, candidates, first.outdated, through)


def _ordinal(pod: str) -> int:
    tail = pod.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class SentinelRoller(Roller):
    def observe(self, spec: RedisMessagingSpec, owner: Owner, pods: Mapping[str, PodState],
                password: str | None) -> RollObservation:
        conns = self.connections(owner, password)
        sentinels = {p: rs.observe_sentinel(conns, self.addresses.sentinel(owner, p), owner.master_name)
                     for p in (owner.sentinel_pod(i) for i in range(spec.sentinel.replicas))}
        named = Counter(s.master for s in sentinels.values() if s.reachable and s.monitoring and s.master)
        master: str | None = None
        if named:
            address, votes = named.most_common(1)[0]
            if votes * 2 > len(sentinels):
                master = self.addresses.pod_of(owner, address[0])
        redis_pods = [owner.redis_pod(i) for i in range(spec.redis.replicas)]
        redis: dict[str, rs.RedisNode] = {}
        if master in redis_pods:  # the master first: replicas must reach the offset it had then
            redis[master] = rs.observe_redis(conns, self.addresses.redis(owner, master))
        for pod in redis_pods:
            if pod not in redis:
                redis[pod] = rs.observe_redis(conns, self.addresses.redis(owner, pod))
        offset = redis[master].offset if master in redis else 0
        follows = {p: self.addresses.pod_of(owner, n.master[0]) if n.master else None for p, n in redis.items()}
        choices = {}
        for pod, s in sentinels.items():
            if s.reachable and s.monitoring:
                down_after = int(s.config.get("down-after-milliseconds", 0) or 0)
                choices[pod] = {self.addresses.pod_of(owner, v.address[0]) or f"{v.address[0]}:{v.address[1]}":
                                v.not_promotable(down_after) for v in s.replica_views}
        names = {p: self.addresses.pod_of(owner, s.master[0]) if s.master else None for p, s in sentinels.items()}
        return RollObservation(pods, redis, sentinels, master, offset, follows, choices, names)

    def failover(self, spec: RedisMessagingSpec, owner: Owner, password: str | None,
                 step: Failover) -> tuple[str | None, str]:
        """Pause the master's writes, let the replicas catch up, ask the first Sentinel that accepts
        to fail over: which one did, or None and why nothing was switched. The pause ends when the
        old master is a replica (next passes).

        The switch-over happens only once every replica (Sentinel may pick any) has caught up with the
        paused master, and a Sentinel accepted; otherwise writes resume at once and the next pass tries
        again. A Sentinel that refuses (NOGOODSLAVE: its view of the replicas lags them) is no error."""
        conns = self.connections(owner, password)
        master_address = self.addresses.redis(owner, step.master)
        replicas = [self.addresses.redis(owner, owner.redis_pod(i)) for i in range(spec.redis.replicas)]
        switchover.pause_writes(conns, master_address, min(spec.sentinel.failover_timeout, PAUSE_MAX_MS))
        waited = min(CATCH_UP_SECONDS, catch_up_millis(spec) / 1000)
        if not switchover.caught_up(conns, master_address, [r for r in replicas if r != master_address],
                                    timeout=waited):
            switchover.unpause(conns, master_address)
            return None, (f"the replicas did not catch up with {step.master} within {waited:g} s of pausing "
                          "its writes")
        refused = []
        for pod in step.through or tuple(owner.sentinel_pod(i) for i in range(spec.sentinel.replicas)):
            try:
                rs.sentinel_failover(conns, self.addresses.sentinel(owner, pod), owner.master_name)
                return pod, ""
            except Exception as exc:  # the next Sentinel is the retry
                refused.append(f"{pod}: {exc}")
                if not any(word in str(exc) for word in ("NOGOODSLAVE", "INPROG")):
                    log.warning("%s/%s: SENTINEL FAILOVER through %s failed: %s", owner.namespace, owner.name,
                                pod, exc)
        switchover.unpause(conns, master_address)
        return None, "no Sentinel accepted SENTINEL FAILOVER (" + "; ".join(refused) + ")"

    def release_paused(self, owner: Owner, obs: RollObservation, password: str | None) -> list[str]:
        """After a switch-over: the old master follows the master the Sentinels agree on at once (Sentinel
        itself would convert it only at its next INFO, up to 10 s, while it refuses writes for want of
        replicas), and the write pause ends on every replica. Returns what was re-pointed."""
        conns = self.connections(owner, password)
        done = []
        agreed = obs.master is not None and not any(s.failing_over for s in obs.sentinels.values())
        for pod, node in obs.redis.items():
            if agreed and obs.master is not None and pod != obs.master and node.is_master:
                try:
                    rs.replicate(conns, node.address, self.addresses.redis(owner, obs.master))
                except Exception as exc:  # the next pass (or Sentinel) tries again
                    log.info("%s/%s: %s does not follow %s yet: %s", owner.namespace, owner.name, pod,
                             obs.master, exc)
                    continue
                done.append(f"{pod} follows {obs.master}")
            if node.reachable and (node.role == "slave" or pod in {d.split()[0] for d in done}):
                switchover.unpause(conns, node.address)
        return done

    # -- the pass -----------------------------------------------------------------------------
    def pod_states(self, spec: RedisMessagingSpec, owner: Owner, statefulsets: Mapping[str, Obj],
                   pods: list[Obj]) -> dict[str, PodState]:
        by_name = {p["metadata"]["name"]: p for p in pods}
        out: dict[str, PodState] = {}
        for sts_name, kind, count, pod_name in (
                (owner.sentinel_sts, "sentinel", spec.sentinel.replicas, owner.sentinel_pod),
                (owner.redis_sts, "redis", spec.redis.replicas, owner.redis_pod)):
            sts = statefulsets.get(sts_name)
            for i in range(count):
                name = pod_name(i)
                out[name] = pod_state(name, kind, by_name.get(name), sts)
        return out

    def run(self, spec: RedisMessagingSpec, owner: Owner, statefulsets: Mapping[str, Obj], pods: list[Obj],
            password: str | None) -> RollReport:
        """One move of the roll of a sentinel-mode resource, from its StatefulSets and pods."""
        return self.run_states(spec, owner, self.pod_states(spec, owner, statefulsets, pods), password)

    def run_states(self, spec: RedisMessagingSpec, owner: Owner, states: Mapping[str, PodState],
                   password: str | None, delete_pod: Callable[[str], None] | None = None) -> RollReport:
        """One move, given the pods' states; ``delete_pod`` replaces the Kubernetes delete (tests)."""
        report = RollReport()
        progress = self.progress(report, states)
        if progress is None:
            return report
        obs = self.observe(spec, owner, states, password)
        for moved in self.release_paused(owner, obs, password):
            report.events.append(("RollingUpdateSwitchover", f"{moved} after the switch-over"))
            report.actions.append(f"RollingUpdateSwitchover: {moved}")
        step = report.step = plan(obs)
        if isinstance(step, Failover):
            sentinel, why = self.failover(spec, owner, password, step)
            if sentinel is None:
                self.wait_or_delete(report, progress, Wait(
                    f"{why}: no switch-over, writes resumed, tried again at the next pass"), owner, delete_pod)
                return report
            self.switched(report, progress, f"Switching the master over from {step.master} before restarting it "
                                            f"({'; '.join(step.reasons)}); SENTINEL FAILOVER through {sentinel}")
        elif isinstance(step, Wait | DeletePod):
            self.wait_or_delete(report, progress, step, owner, delete_pod)
        return report

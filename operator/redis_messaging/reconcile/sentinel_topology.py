"""Check and heal a Sentinel-mode topology.

Sentinel decides failovers. The operator only does what Sentinel cannot:

- it never acts while a failover is in progress, or while the master the Sentinels agree on is down
  and enough Sentinels are up to fail over themselves;
- a second master (split brain) that the Sentinel quorum does not recognise is made a replica;
- replicas that follow the wrong master are re-pointed;
- with no Sentinel quorum and no master for longer than Sentinel itself would wait, the replica with the
  highest replication offset is promoted (a master that is only starting, or slow, is waited for);
- Sentinels that monitor nothing or the wrong master are re-pointed, drifted settings are set again,
  and Sentinels that remember processes that no longer exist are reset, one per pass.

:func:`plan` is pure (observations in, steps out); :class:`SentinelTopology` observes and executes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.reconcile.addresses import Addresses, OwnerConnections
from redis_messaging.reconcile.topology import Action, TopologyReport
from redis_messaging.redis import sentinel as rs

log = logging.getLogger(__name__)

WAIT_SECONDS = 2.0
MIN_PROMOTE_GRACE_SECONDS = 10.0


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass(frozen=True)
class Replicate:
    pod: str
    master: str
    split_brain: bool = False


@dataclass(frozen=True)
class Promote:
    pod: str
    offset: int


@dataclass(frozen=True)
class Monitor:
    sentinel: str
    master: str


@dataclass(frozen=True)
class SetSentinel:
    sentinel: str
    settings: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Reset:
    sentinel: str
    why: str


Step = Replicate | Promote | Monitor | SetSentinel | Reset


@dataclass(frozen=True)
class Observation:
    redis: dict[str, rs.RedisNode]  # by pod name, every expected redis pod
    sentinels: dict[str, rs.SentinelNode]  # by pod name, every expected sentinel pod
    pod_of: Callable[[str], str | None]  # announced host -> pod name
    # How long, by the operator's clock, no reachable Redis has said it is a master (0: one does).
    masterless_seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    master: str | None
    steps: list[Step] = field(default_factory=list)
    reason: str = "Healthy"
    message: str = ""
    available: bool | None = None
    wait: bool = False


def desired_sentinel_settings(spec: RedisMessagingSpec) -> dict[str, str]:
    s = spec.sentinel
    return {
        "quorum": str(s.quorum),
        "down-after-milliseconds": str(s.down_after_milliseconds),
        "failover-timeout": str(s.failover_timeout),
        "parallel-syncs": str(s.parallel_syncs),
    }


def promote_grace_seconds(spec: RedisMessagingSpec) -> float:
    """How long the operator lets a masterless set be before it promotes a replica itself: at least
    what Sentinel waits before it calls a master down, and never less than a pod needs to start."""
    return max(spec.sentinel.down_after_milliseconds / 1000, MIN_PROMOTE_GRACE_SECONDS)


def _promotion(obs: Observation, spec: RedisMessagingSpec, pod: str) -> Plan | None:
    """None when ``pod`` may be promoted now, else the plan that waits for the grace to run out."""
    grace = promote_grace_seconds(spec)
    if obs.masterless_seconds >= grace:
        return None
    return Plan(None, reason="NoMaster", available=False, wait=True,
                message=f"no master and no Sentinel majority; {pod} (highest replication offset) is promoted "
                        f"if no master returns within {grace - obs.masterless_seconds:.0f}s")


def _newer_dissent(sentinels: dict[str, rs.SentinelNode], obs: Observation, consensus: str) -> bool:
    """Whether a Sentinel that names another master holds a newer configuration (a higher
    config-epoch) than every Sentinel naming ``consensus``: the end of a failover the others have
    not heard of yet. A dissent that is not newer will never spread by itself."""
    agree: list[int] = []
    dissent: list[int] = []
    for s in sentinels.values():
        if s.monitoring and s.master is not None:
            (agree if obs.pod_of(s.master[0]) == consensus else dissent).append(s.epoch)
    return bool(dissent) and max(dissent) > max(agree, default=0)


def _best_master(obs: Observation) -> tuple[str | None, bool]:
    """With no Sentinel quorum: the master to keep, or the replica to promote (second item True)."""
    masters = [(p, n) for p, n in obs.redis.items() if n.is_master]
    if masters:
        # most replicas attached first, then the most data
        pod, _ = max(masters, key=lambda pn: (len(pn[1].replicas), pn[1].offset, pn[0]))
        return pod, False
    replicas = [(p, n) for p, n in obs.redis.items() if n.reachable]
    if not replicas:
        return None, False
    pod, _ = max(replicas, key=lambda pn: (pn[1].offset, pn[0]))
    return pod, True


def plan(obs: Observation, spec: RedisMessagingSpec, *, expected_sentinels: int) -> Plan:
    reachable_sentinels = {p: s for p, s in obs.sentinels.items() if s.reachable}
    majority = expected_sentinels // 2 + 1
    if any(s.failing_over for s in reachable_sentinels.values()):
        return Plan(None, reason="FailoverInProgress", wait=True,
                    message="a Sentinel is failing over; the operator waits for it to finish")
    votes = Counter(obs.pod_of(s.master[0]) for s in reachable_sentinels.values()
                    if s.monitoring and s.master is not None)
    votes.pop(None, None)
    consensus, count = votes.most_common(1)[0] if votes else (None, 0)
    sentinels_can_decide = len(reachable_sentinels) >= majority

    steps: list[Step] = []
    master: str | None
    if consensus is not None and count >= spec.sentinel.quorum:
        master = consensus
        node = obs.redis.get(master)
        if node is None or not node.reachable:
            if sentinels_can_decide:
                return Plan(master, reason="MasterDown", available=False, wait=True,
                            message=f"master {master} is unreachable; Sentinel is expected to fail over")
            master, promote = _best_master(obs)
            if master is None:
                return Plan(None, reason="NoMaster", available=False, wait=True,
                            message="no redis pod is reachable")
            if promote:
                if (waiting := _promotion(obs, spec, master)) is not None:
                    return waiting
                steps.append(Promote(master, obs.redis[master].offset))
        elif node.role != "master":
            return Plan(master, reason="MasterIsReplica", available=False, wait=True,
                        message=f"Sentinels name {master} but it reports being a replica; waiting for them")
    elif votes and sentinels_can_decide:
        return Plan(None, reason="SentinelsDisagree", wait=True,
                    message=f"Sentinels disagree on the master ({dict(votes)}), quorum {spec.sentinel.quorum}")
    else:
        master, promote = _best_master(obs)
        if master is None:
            return Plan(None, reason="NoMaster", available=False, wait=True, message="no redis pod is reachable")
        if promote:
            if (waiting := _promotion(obs, spec, master)) is not None:
                return waiting
            steps.append(Promote(master, obs.redis[master].offset))

    if master is None:  # unreachable: every branch above returned or chose one
        return Plan(None, reason="NoMaster", available=False, wait=True, message="no master could be chosen")
    # Redis: everybody else follows the master.
    unanimous = len(votes) == 1 and count == len(reachable_sentinels)
    for pod, node in sorted(obs.redis.items()):
        if pod == master or not node.reachable:
            continue
        if node.role == "master":
            if consensus is not None and not unanimous and _newer_dissent(reachable_sentinels, obs, consensus):
                # A second master while a Sentinel with a newer configuration names another one is the
                # end of a failover the others have not caught up with: never demote it then.
                epochs = {p: s.epoch for p, s in sorted(reachable_sentinels.items()) if s.monitoring}
                return Plan(master, reason="SentinelsConverging", wait=True, available=True,
                            message=f"{pod} is a second master while the Sentinels converge ({dict(votes)}, "
                                    f"config epochs {epochs})")
            steps.append(Replicate(pod, master, split_brain=True))
        elif node.master is None or obs.pod_of(node.master[0]) != master:
            steps.append(Replicate(pod, master))

    # Sentinels: monitor the master with the declared settings.
    wanted = desired_sentinel_settings(spec)
    for pod, s in sorted(reachable_sentinels.items()):
        if not s.monitoring or s.master is None or obs.pod_of(s.master[0]) != master:
            steps.append(Monitor(pod, master))
            continue
        drift = tuple((k, v) for k, v in wanted.items() if s.config.get(k) != v)
        if drift:
            steps.append(SetSentinel(pod, drift))

    # Forget processes that no longer exist: one Sentinel per pass, only when all else is calm.
    if not steps and len(reachable_sentinels) == expected_sentinels:
        known_redis = set(obs.redis)
        known_sentinels = set(obs.sentinels)
        for pod, s in sorted(reachable_sentinels.items()):
            stale_replicas = [h for h, _ in s.replicas if obs.pod_of(h) not in known_redis]
            stale_sentinels = [h for h, _ in s.sentinels if obs.pod_of(h) not in known_sentinels]
            if stale_replicas or stale_sentinels or len(s.sentinels) > expected_sentinels - 1:
                what = ", ".join(stale_replicas + stale_sentinels) or "duplicate Sentinel entries"
                steps.append(Reset(pod, f"remembers processes that no longer exist: {what}"))
                break

    node = obs.redis.get(master)
    available = bool(node and node.is_master) or any(isinstance(s, Promote) for s in steps)
    return Plan(master, steps=steps, reason="Healthy" if not steps else "Healing", available=available)


# ---------------------------------------------------------------------------------------------
# Execution


class SentinelTopology:
    """Observes the processes of a sentinel-mode resource, executes the plan, reports."""

    def __init__(self, addresses: Addresses, *, timeout: float = 2.0) -> None:
        self.addresses = addresses
        self.timeout = timeout
        self._connections = OwnerConnections(addresses, lambda pw: rs.Connections(pw, timeout=timeout))
        self._masterless_since: dict[str, float] = {}  # by resource: when no master was first seen
        self.clock: Callable[[], float] = time.monotonic

    def connections(self, owner: Owner, password: str | None) -> rs.Connections:
        return self._connections.get(owner, password)

    def forget(self, owner: Owner) -> None:
        self._connections.forget(owner)
        self._masterless_since.pop(self._connections.key(owner), None)

    def observe(self, spec: RedisMessagingSpec, owner: Owner, conns: rs.Connections) -> Observation:
        redis_pods = [owner.redis_pod(i) for i in range(spec.redis.replicas)]
        sentinel_pods = [owner.sentinel_pod(i) for i in range(spec.sentinel.replicas)]
        redis = {p: rs.observe_redis(conns, self.addresses.redis(owner, p)) for p in redis_pods}
        key, now = self._connections.key(owner), self.clock()
        if any(n.is_master for n in redis.values()):
            self._masterless_since.pop(key, None)
            masterless = 0.0
        else:
            masterless = now - self._masterless_since.setdefault(key, now)
        return Observation(
            redis=redis,
            sentinels={p: rs.observe_sentinel(conns, self.addresses.sentinel(owner, p), owner.master_name)
                       for p in sentinel_pods},
            pod_of=lambda host: self.addresses.pod_of(owner, host),
            masterless_seconds=masterless,
        )

    def check_and_heal(self, spec: RedisMessagingSpec, owner: Owner, pods: list[dict[str, Any]],
                       password: str | None) -> TopologyReport:
        conns = self.connections(owner, password)
        obs = self.observe(spec, owner, conns)
        result = plan(obs, spec, expected_sentinels=spec.sentinel.replicas)
        actions = []
        failed = []
        for step in result.steps:
            try:
                actions.append(self._execute(step, spec, owner, conns, password))
            except Exception as exc:  # report and retry on the next pass; never crash the pass
                failed.append(f"{step}: {type(exc).__name__}: {exc}")
        healthy = not result.wait and not result.steps and self._in_sync(obs, result.master)
        reason = result.reason
        if reason == "Healthy" and not healthy:
            reason = "Syncing"  # nothing to repair: replicas syncing, Sentinels still learning of each other
        message = result.message or self._summary(obs, result.master)
        if failed:
            message = f"{message}; failed: {'; '.join(failed)}"
        labels = {} if result.master is None else {
            p: (names.ROLE_MASTER if p == result.master else names.ROLE_REPLICA) for p in obs.redis}
        return TopologyReport(
            master=result.master,
            available=result.available,
            healthy=healthy,
            reason=reason if not failed else "HealingFailed",
            message=message,
            actions=actions,
            labels=labels,
            retry_after=WAIT_SECONDS if (result.wait or result.steps) else None,
        )

    @staticmethod
    def _in_sync(obs: Observation, master: str | None) -> bool:
        if master is None:
            return False
        for pod, node in obs.redis.items():
            if not node.reachable:
                return False
            if pod != master and not (node.link_up and node.master and obs.pod_of(node.master[0]) == master):
                return False
        # Sentinel can only fail over to replicas it knows, with peers it knows.
        replicas = {p for p in obs.redis if p != master}
        expected_peers = len(obs.sentinels) - 1
        for s in obs.sentinels.values():
            if not s.reachable or {obs.pod_of(h) for h, _ in s.replicas} < replicas:
                return False
            if len({obs.pod_of(h) for h, _ in s.sentinels} - {None}) < expected_peers:
                return False
        return True

    @staticmethod
    def _summary(obs: Observation, master: str | None) -> str:
        up = sum(1 for n in obs.redis.values() if n.reachable)
        linked = sum(1 for n in obs.redis.values() if n.reachable and n.role == "slave" and n.link_up)
        sent = sum(1 for s in obs.sentinels.values() if s.reachable)
        known = min((len(s.replicas) for s in obs.sentinels.values() if s.reachable), default=0)
        return (f"master {master}; redis {up}/{len(obs.redis)} reachable, {linked} replicas in sync; "
                f"sentinel {sent}/{len(obs.sentinels)} reachable, each knowing at least {known} replicas")

    def _execute(self, step: Step, spec: RedisMessagingSpec, owner: Owner, conns: rs.Connections,
                 password: str | None) -> Action:
        addr = self.addresses
        if isinstance(step, Promote):
            rs.promote(conns, addr.redis(owner, step.pod))
            return Action("MasterPromoted", f"no master and no Sentinel quorum: promoted {step.pod} "
                          f"(highest replication offset {step.offset})", warning=True)
        if isinstance(step, Replicate):
            rs.replicate(conns, addr.redis(owner, step.pod), addr.redis(owner, step.master))
            if step.split_brain:
                return Action("SplitBrainRepaired", f"{step.pod} was a second master; it now replicates "
                              f"{step.master}, the master the Sentinels recognise", warning=True)
            return Action("ReplicaRepointed", f"{step.pod} now replicates {step.master}")
        if isinstance(step, Monitor):
            settings = desired_sentinel_settings(spec)
            quorum = settings.pop("quorum")
            if password is not None:
                settings["auth-pass"] = password
            rs.sentinel_monitor(conns, addr.sentinel(owner, step.sentinel), owner.master_name,
                                addr.redis(owner, step.master), int(quorum), settings)
            return Action("SentinelReconfigured", f"{step.sentinel} now monitors {step.master}")
        if isinstance(step, SetSentinel):
            rs.sentinel_set(conns, addr.sentinel(owner, step.sentinel), owner.master_name, dict(step.settings))
            changed = ", ".join(f"{k}={v}" for k, v in step.settings)
            return Action("SentinelReconfigured", f"{step.sentinel}: {changed}")
        rs.sentinel_reset(conns, addr.sentinel(owner, step.sentinel), owner.master_name)
        return Action("SentinelReset", f"{step.sentinel} {step.why}")

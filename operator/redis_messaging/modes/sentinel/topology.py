"""Check and heal a Sentinel-mode topology.

Sentinel decides failovers. The operator only does what Sentinel cannot, and never anything that can
cost an acknowledged write. The rules, each enforced where the decision is made below:

- **It never acts during a failover**, nor while the master the Sentinels agree on is down and enough
  Sentinels are up to fail over themselves.
- **It never demotes a master that holds writes the chosen master lacks** (:func:`holds` compares
  replication ids and offsets: ``master_replid``, ``master_replid2``, ``second_repl_offset``,
  ``master_repl_offset``). Of two masters it keeps the one that holds the other's data; when the second
  master is ahead of the one the Sentinels name, the Sentinels are made to follow it, and only when every
  configured Sentinel can be told at once; when each holds writes the other lacks, it changes nothing
  and says so.
- **It promotes only on a view that no hidden side can contradict**: a reachable majority of the
  configured Sentinels (which then know no master), or every Redis pod reachable, or the old master's
  death confirmed by Kubernetes (its pod gone or its container not running). It never promotes while a
  replica still follows a live master it cannot reach, and never before the set has been masterless for
  as long as Sentinel itself would wait. Otherwise it waits and the Condition says why.
- **An empty or stale Redis never becomes the master others follow**: the pod elected is the one whose
  data holds every other pod's (:func:`richest`); when histories cannot be compared (restarts from AOF
  start a new history), the one with the most keys, then the most data. Pods whose data is not vouched
  for start as replicas of nobody with ``replica-priority`` 0 (redis-start.sh), so Sentinel never promotes
  them; the operator gives a replica its priority back once it is in sync with the master.

Besides: replicas that follow the wrong master are re-pointed; Sentinels that monitor nothing or the
wrong master are re-pointed, drifted settings are set again, and Sentinels that remember processes that
no longer exist are reset, one per pass.

:func:`plan` is pure (observations in, steps out); :class:`SentinelTopology` observes and executes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.modes.base import Action, TopologyReport, engine_status
from redis_messaging.redis import sentinel as rs
from redis_messaging.redis.addresses import Addresses, OwnerConnections

log = logging.getLogger(__name__)

WAIT_SECONDS = 2.0
MIN_PROMOTE_GRACE_SECONDS = 10.0
DEFAULT_REPLICA_PRIORITY = "100"


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
    why: str = ""


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


@dataclass(frozen=True)
class SetPriority:
    pod: str
    priority: str


@dataclass(frozen=True)
class Failover:
    sentinel: str
    to: str


Step = Replicate | Promote | Monitor | SetSentinel | Reset | SetPriority | Failover


@dataclass(frozen=True)
class Observation:
    redis: dict[str, rs.RedisNode]  # by pod name, every expected redis pod
    sentinels: dict[str, rs.SentinelNode]  # by pod name, every expected sentinel pod
    pod_of: Callable[[str], str | None]  # announced host -> pod name
    # How long, by the operator's clock, no reachable Redis has said it is a master (0: one does).
    masterless_seconds: float = 0.0
    # Redis pods whose death Kubernetes confirms: the pod is gone, or its redis container not running.
    dead: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    master: str | None
    steps: list[Step] = field(default_factory=list)
    reason: str = "Healthy"
    message: str = ""
    available: bool | None = None
    wait: bool = False
    warning: bool = False  # a wait that needs a human's attention (an Event says so)


def desired_sentinel_settings(spec: RedisMessagingSpec) -> dict[str, str]:
    s = spec.sentinel
    return {
        "quorum": str(s.quorum),
        "down-after-milliseconds": str(s.down_after_milliseconds),
        "failover-timeout": str(s.failover_timeout),
        "parallel-syncs": str(s.parallel_syncs),
    }


def desired_priority(spec: RedisMessagingSpec) -> str:
    return str(dict(spec.redis.config).get("replica-priority", DEFAULT_REPLICA_PRIORITY))


def promote_grace_seconds(spec: RedisMessagingSpec) -> float:
    """How long the operator lets a masterless set be before it promotes a replica itself: at least
    what Sentinel waits before it calls a master down, and never less than a pod needs to start."""
    return max(spec.sentinel.down_after_milliseconds / 1000, MIN_PROMOTE_GRACE_SECONDS)


def sentinel_patience_seconds(spec: RedisMessagingSpec) -> float:
    """How long the operator leaves a master the Sentinels name, but which serves as a replica, to a
    Sentinel failover before it elects a master itself: the grace, plus one failover timeout."""
    return promote_grace_seconds(spec) + spec.sentinel.failover_timeout / 1000


# ---------------------------------------------------------------------------------------------
# Data: who holds what


def holds(a: rs.RedisNode, b: rs.RedisNode) -> bool:
    """Whether ``a`` holds every write ``b`` holds, so that ``b`` can follow ``a`` losing nothing.

    Replication histories: a node's data is its history ``replid`` up to ``offset``; a node promoted
    from another history keeps that one as ``replid2``, valid up to ``second_offset - 1``. Histories
    that share nothing (a restart from AOF starts a new one) cannot be compared: then only an empty
    ``b`` is held."""
    if not a.reachable or a.loading:
        return False  # what it holds is not known yet
    if b.empty:
        return True
    if not a.replid or not b.replid:
        return False
    if a.replid == b.replid:
        return a.offset >= b.offset
    if a.replid2 and a.replid2 == b.replid:  # a was promoted from b's history, after b's position
        return b.offset < a.second_offset
    if b.replid2 and b.replid2 == a.replid and b.offset < b.second_offset:
        return a.offset >= b.offset  # b was promoted from a's history and has written nothing since
    return False


def _ordinal(pod: str) -> int:
    tail = pod.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def richest(nodes: Mapping[str, rs.RedisNode]) -> str | None:
    """The pod to elect among reachable, loaded ``nodes``: one whose data holds every other's; when
    no history holds all others (they cannot be compared), the most keys, then the largest dataset.
    Ties: the highest offset, then the lowest ordinal."""
    candidates = {p: n for p, n in nodes.items() if n.reachable and not n.loading}
    if not candidates:
        return None
    supersets = [p for p, n in candidates.items() if all(holds(n, o) for q, o in candidates.items() if q != p)]
    pool = supersets or list(candidates)
    return max(pool, key=lambda p: (candidates[p].keys, candidates[p].dataset_bytes, candidates[p].offset,
                                    -_ordinal(p)))


def _describe(node: rs.RedisNode) -> str:
    return f"{node.keys} keys, offset {node.offset}"


# ---------------------------------------------------------------------------------------------
# The plan


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


def _elect(obs: Observation, spec: RedisMessagingSpec, *, old_master: str | None, sentinel_majority: bool,
           why: str) -> Plan | Promote | str:
    """A replica to promote (a :class:`Promote`), a master that already serves and holds every other
    master's data (its name), or the plan that waits and says why not yet."""
    reachable = {p: n for p, n in obs.redis.items() if n.reachable}
    if not reachable:
        return Plan(None, reason="NoMaster", available=False, wait=True, message=f"{why}; no redis pod is reachable")
    masters = {p: n for p, n in reachable.items() if n.is_master}
    if masters:  # one serves already (e.g. promoted in an earlier pass): never a second one
        keeper = _keep(masters)
        if keeper is None:
            return _diverged(masters)
        return keeper
    # A replica whose link is up follows a live master: one the operator cannot reach serves somewhere.
    for pod, node in sorted(reachable.items()):
        if node.role == "slave" and node.link_up and node.master is not None:
            followed = obs.pod_of(node.master[0]) or f"{node.master[0]}:{node.master[1]}"
            return Plan(None, reason="MasterUnreachable", available=False, wait=True,
                        message=f"{why}; {pod} still replicates {followed}, which serves but the operator "
                                "cannot reach: no promotion while a master may serve")
    loading = sorted(p for p, n in reachable.items() if n.loading)
    if loading:
        return Plan(None, reason="NoMaster", available=False, wait=True,
                    message=f"{why}; waiting for {', '.join(loading)} to load their data before electing")
    unreachable = sorted(set(obs.redis) - set(reachable))
    every_redis = not unreachable
    death_confirmed = ((old_master is not None and old_master in obs.dead)
                       or (bool(unreachable) and set(unreachable) <= obs.dead))
    if not (every_redis or sentinel_majority or death_confirmed):
        return Plan(None, reason="NoSafeView", available=False, wait=True,
                    message=f"{why}; the operator reaches {len(reachable)}/{len(obs.redis)} redis pods and "
                            f"{sum(1 for s in obs.sentinels.values() if s.reachable)}/{len(obs.sentinels)} "
                            f"Sentinels: a master may serve on the other side ({', '.join(unreachable)} not "
                            "reachable, not confirmed gone); it promotes on a Sentinel majority, every redis "
                            "pod, or the old master's pod gone")
    best = richest(reachable)
    if best is None:  # every reachable node was loading: returned above
        return Plan(None, reason="NoMaster", available=False, wait=True, message=why)
    quiet = every_redis and sentinel_majority and not any(
        s.monitoring for s in obs.sentinels.values() if s.reachable)
    grace = promote_grace_seconds(spec)
    if not quiet and obs.masterless_seconds < grace:
        return Plan(None, reason="NoMaster", available=False, wait=True,
                    message=f"{why}; {best} ({_describe(reachable[best])}, the most data) is promoted if no "
                            f"master returns within {grace - obs.masterless_seconds:.0f}s")
    return Promote(best, reachable[best].offset,
                   why=f"{why}; {best} holds the most data ({_describe(reachable[best])})")


def _diverged(masters: dict[str, rs.RedisNode]) -> Plan:
    return Plan(None, reason="MastersDiverged", available=True, wait=True, warning=True,
                message=f"{', '.join(sorted(masters))} are masters and each holds writes the other lacks; no "
                        "Sentinel quorum names one. The operator demotes neither: keep one by hand (REPLICAOF "
                        "on the other)")


def _keep(masters: dict[str, rs.RedisNode]) -> str | None:
    """Of several masters without a Sentinel quorum: the one that holds every other's data, if any."""
    keepers = [p for p, n in masters.items() if all(holds(n, o) for q, o in masters.items() if q != p)]
    if not keepers:
        return None
    return max(keepers, key=lambda p: (len(masters[p].replicas), masters[p].offset, -_ordinal(p)))


def _take(elected: Promote | str, steps: list[Step]) -> str:
    """The master an election chose; a promotion goes first among the steps."""
    if isinstance(elected, Promote):
        steps.append(elected)
        return elected.pod
    return elected


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
    sentinel_majority = len(reachable_sentinels) >= majority

    steps: list[Step] = []
    master: str | None = None
    if consensus is not None and count >= spec.sentinel.quorum:
        node = obs.redis.get(consensus)
        if node is None or not node.reachable:
            if sentinel_majority:
                return Plan(consensus, reason="MasterDown", available=False, wait=True,
                            message=f"master {consensus} is unreachable; Sentinel is expected to fail over")
            elected = _elect(obs, spec, old_master=consensus, sentinel_majority=False,
                             why=f"master {consensus} is unreachable and so is a majority of Sentinels")
            if isinstance(elected, Plan):
                return elected
            master = _take(elected, steps)
        elif node.role != "master":
            # It restarted and waits as a replica: its data is not vouched for. Sentinel fails over to a
            # replica that holds the data; the operator steps in only if that does not happen.
            # Sentinel can only promote a replica with a replica-priority above 0: when none is left (a full
            # restart: every pod waits, its data not vouched for), only the operator can elect.
            eligible = any(n.reachable and n.role == "slave" and n.priority > 0
                           for p, n in obs.redis.items() if p != consensus)
            patience = sentinel_patience_seconds(spec) if eligible else promote_grace_seconds(spec)
            if not sentinel_majority or obs.masterless_seconds < patience:
                return Plan(consensus, reason="MasterIsReplica", available=False, wait=True,
                            message=f"Sentinels name {consensus} but it serves as a replica (restarted, its data "
                                    "not vouched for); waiting for Sentinel to fail over")
            elected = _elect(obs, spec, old_master=None, sentinel_majority=True,
                             why=f"Sentinels name {consensus}, a replica, and did not fail over")
            if isinstance(elected, Plan):
                return elected
            master = _take(elected, steps)
        else:
            master = consensus
    elif votes and sentinel_majority:
        return Plan(None, reason="SentinelsDisagree", wait=True,
                    message=f"Sentinels disagree on the master ({dict(votes)}), quorum {spec.sentinel.quorum}")
    else:
        masters = {p: n for p, n in obs.redis.items() if n.is_master}
        if masters:
            master = _keep(masters)
            if master is None:
                return _diverged(masters)
        else:
            elected = _elect(obs, spec, old_master=None, sentinel_majority=sentinel_majority,
                             why="no master and no Sentinel quorum")
            if isinstance(elected, Plan):
                return elected
            master = _take(elected, steps)

    # Redis: everybody else follows the master, unless it holds writes the master lacks.
    chosen = obs.redis[master]
    unanimous = len(votes) == 1 and count == len(reachable_sentinels)
    promoting = any(isinstance(s, Promote) for s in steps)
    for pod, node in sorted(obs.redis.items()):
        if pod == master or not node.reachable:
            continue
        if node.role == "master":
            if consensus == master and not unanimous and _newer_dissent(reachable_sentinels, obs, consensus):
                # A second master while a Sentinel with a newer configuration names another one is the
                # end of a failover the others have not caught up with: never demote it then.
                epochs = {p: s.epoch for p, s in sorted(reachable_sentinels.items()) if s.monitoring}
                return Plan(master, reason="SentinelsConverging", wait=True, available=True,
                            message=f"{pod} is a second master while the Sentinels converge ({dict(votes)}, "
                                    f"config epochs {epochs})")
            if holds(chosen, node):
                steps.append(Replicate(pod, master, split_brain=True))
                continue
            others = [n for p, n in obs.redis.items() if n.is_master and p != pod]
            if (consensus == master and all(holds(node, o) for o in others)
                    and len(reachable_sentinels) == expected_sentinels
                    and all(pod in {obs.pod_of(h) for h, _ in s.replicas} for s in reachable_sentinels.values())):
                # The second master is ahead of the one the Sentinels name, and no Sentinel is hidden that
                # could be leading a failover to it: a failover to it, with a newer config epoch.
                return _follow_ahead(obs, spec, ahead=pod, behind=master, sentinels=reachable_sentinels)
            # The Sentinels name the master (they make the other one a replica themselves once they see
            # it; a hidden Sentinel may be failing over to it): the operator demotes neither.
            return Plan(master, reason="SecondMaster", wait=True, available=True, warning=consensus != master,
                        message=f"{pod} is a second master holding writes {master} lacks ({pod}: "
                                f"{_describe(node)}, {master}: {_describe(chosen)}); the operator demotes no "
                                "master that holds writes the chosen one lacks")
        elif node.master is None or obs.pod_of(node.master[0]) != master:
            if node.link_up and not promoting and not holds(chosen, node):
                continue  # it follows another live master whose data ours lacks: not re-pointed (Syncing)
            steps.append(Replicate(pod, master))
    steps += _sentinel_steps(obs, spec, master, reachable_sentinels, expected_sentinels, steps)
    steps += _priority_steps(obs, spec, master)
    chosen_up = chosen.is_master
    available = chosen_up or promoting
    return Plan(master, steps=steps, reason="Healthy" if not steps else "Healing", available=available)


def _follow_ahead(obs: Observation, spec: RedisMessagingSpec, *, ahead: str, behind: str,
                  sentinels: dict[str, rs.SentinelNode]) -> Plan:
    """The Sentinels name ``behind`` while ``ahead`` holds all of its data and more. A proper failover
    to ``ahead`` (a newer config epoch that every Sentinel adopts): every other replica gets priority 0
    so that Sentinel can pick only ``ahead``, ``behind`` follows ``ahead`` (it loses nothing), and a
    Sentinel is asked to fail over. Priorities come back once the replicas are in sync."""
    steps: list[Step] = [SetPriority(pod, "0") for pod, node in sorted(obs.redis.items())
                         if pod not in (ahead, behind) and node.reachable and node.priority != 0]
    steps.append(Replicate(behind, ahead, split_brain=True))
    steps.append(Failover(sorted(sentinels)[0], ahead))
    return Plan(ahead, steps=steps, reason="Healing", available=True,
                message=f"{ahead} holds every write of {behind}, the master the Sentinels name, and more: "
                        f"failing over to {ahead}")


def _sentinel_steps(obs: Observation, spec: RedisMessagingSpec, master: str,
                    reachable_sentinels: dict[str, rs.SentinelNode], expected_sentinels: int,
                    steps: list[Step]) -> list[Step]:
    """Sentinels monitor the master with the declared settings; stale memories are reset one per pass."""
    out: list[Step] = []
    wanted = desired_sentinel_settings(spec)
    for pod, s in sorted(reachable_sentinels.items()):
        if not s.monitoring or s.master is None or obs.pod_of(s.master[0]) != master:
            out.append(Monitor(pod, master))
            continue
        drift = tuple((k, v) for k, v in wanted.items() if s.config.get(k) != v)
        if drift:
            out.append(SetSentinel(pod, drift))
    # Forget processes that no longer exist: one Sentinel per pass, only when all else is calm.
    if not steps and not out and len(reachable_sentinels) == expected_sentinels:
        known_redis = set(obs.redis)
        known_sentinels = set(obs.sentinels)
        for pod, s in sorted(reachable_sentinels.items()):
            stale_replicas = [h for h, _ in s.replicas if obs.pod_of(h) not in known_redis]
            stale_sentinels = [h for h, _ in s.sentinels if obs.pod_of(h) not in known_sentinels]
            if stale_replicas or stale_sentinels or len(s.sentinels) > expected_sentinels - 1:
                what = ", ".join(stale_replicas + stale_sentinels) or "duplicate Sentinel entries"
                out.append(Reset(pod, f"remembers processes that no longer exist: {what}"))
                break
    return out


def _priority_steps(obs: Observation, spec: RedisMessagingSpec, master: str) -> list[Step]:
    """A replica in sync with the master holds vouched-for data again: Sentinel may promote it."""
    wanted = desired_priority(spec)
    out: list[Step] = []
    for pod, node in sorted(obs.redis.items()):
        if (pod != master and node.reachable and node.role == "slave" and node.link_up
                and node.master is not None and obs.pod_of(node.master[0]) == master
                and str(node.priority) != wanted):
            out.append(SetPriority(pod, wanted))
    return out


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

    def close(self) -> None:
        self._connections.close()
        self._masterless_since.clear()

    def observe(self, spec: RedisMessagingSpec, owner: Owner, conns: rs.Connections,
                pods: list[dict[str, Any]] | None = None) -> Observation:
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
            dead=frozenset() if pods is None else confirmed_dead(redis_pods, pods),
        )

    def check_and_heal(self, spec: RedisMessagingSpec, owner: Owner, pods: list[dict[str, Any]],
                       password: str | None) -> TopologyReport:
        conns = self.connections(owner, password)
        obs = self.observe(spec, owner, conns, pods)
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
            status=engine_status(node.engine for node in obs.redis.values()),
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
            return Action("MasterPromoted", f"promoted {step.pod}: {step.why}", warning=True)
        if isinstance(step, Replicate):
            rs.replicate(conns, addr.redis(owner, step.pod), addr.redis(owner, step.master))
            if step.split_brain:
                return Action("SplitBrainRepaired", f"{step.pod} was a second master holding nothing "
                              f"{step.master} lacks; it now replicates {step.master}", warning=True)
            return Action("ReplicaRepointed", f"{step.pod} now replicates {step.master}")
        if isinstance(step, SetPriority):
            rs.set_priority(conns, addr.redis(owner, step.pod), step.priority)
            if step.priority == "0":
                return Action("ReplicaPriority", f"{step.pod} may not be promoted by Sentinel for now")
            return Action("ReplicaPriority", f"{step.pod} is in sync: Sentinel may promote it again "
                          f"(replica-priority {step.priority})")
        if isinstance(step, Failover):
            rs.sentinel_failover(conns, addr.sentinel(owner, step.sentinel), owner.master_name)
            return Action("MasterSwitchRequested", f"asked {step.sentinel} to fail over to {step.to}, which holds "
                          "every write of the master the Sentinels named", warning=True)
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


def _container_running(pod: dict[str, Any], container: str) -> bool:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return "running" in (status.get("state") or {})
    return False


def confirmed_dead(redis_pods: list[str], pods: list[dict[str, Any]]) -> frozenset[str]:
    """Redis pods that Kubernetes says run no redis-server: gone, or their redis container not running.

    A frozen or partitioned process still counts as running: only Kubernetes' word that the process
    is gone lets the operator promote without a view of the rest."""
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
    dead = set()
    for name in redis_pods:
        pod = by_name.get(name)
        phase = None if pod is None else (pod.get("status") or {}).get("phase")
        if pod is None or phase in ("Failed", "Succeeded") or not _container_running(pod, "redis"):
            dead.add(name)
    return frozenset(dead)

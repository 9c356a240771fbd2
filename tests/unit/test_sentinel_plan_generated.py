"""The Sentinel healing plan over generated observations: every safety rule, on every case.

Each Redis node's data is modelled as a set of writes on a tree of replication histories (a history
forks from another when a replica is promoted; a restart from AOF starts a new one that says nothing of
its past), and its INFO fields (``master_replid``, ``master_replid2``, ``second_repl_offset``, the
offset, the key count) are derived from that model, so the rules are checked against what each node
really holds, not against the planner's own reading of those fields. Reachability of every pod and
Sentinel is drawn independently (the operator on either side of a partition), as are config epochs,
failovers in progress, Kubernetes' word on dead pods, and the time the set has been masterless.
"""

from __future__ import annotations

from dataclasses import dataclass

from generated import generated
from hypothesis import given
from hypothesis import strategies as st

from redis_messaging.api import models
from redis_messaging.modes.sentinel.topology import (
    Failover,
    Observation,
    Promote,
    Replicate,
    SetPriority,
    plan,
    promote_grace_seconds,
    sentinel_patience_seconds,
)
from redis_messaging.redis.sentinel import NO_MASTER, RedisNode, SentinelNode

SPEC = models.parse_spec({"sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 5000}})
REDIS = ("r0", "r1", "r2")
SENTINELS = ("s0", "s1", "s2")
GRACE = promote_grace_seconds(SPEC)
PATIENCE = sentinel_patience_seconds(SPEC)


def addr(pod: str) -> tuple[str, int]:
    return (f"{pod}.host", 26379 if pod.startswith("s") else 6379)


def pod_of(host: str) -> str | None:
    return host.split(".")[0] if host.endswith(".host") else None


@dataclass(frozen=True)
class Branch:
    """A replication history: ``replid``, forked from ``parent`` at offset ``fork`` (its writes start at
    ``fork + 1``); the root has no parent."""

    replid: str
    parent: int | None
    fork: int


def data_of(branches: list[Branch], branch: int, offset: int) -> frozenset[tuple[int, int]]:
    """The writes a node holds at ``offset`` of ``branch``: its own, then its ancestors' up to each fork."""
    out: set[tuple[int, int]] = set()
    b: int | None = branch
    upto = offset
    while b is not None:
        start = branches[b].fork + 1 if branches[b].parent is not None else 1
        out |= {(b, o) for o in range(start, upto + 1)}
        upto = min(upto, branches[b].fork)
        b = branches[b].parent
    return frozenset(out)


@st.composite
def histories(draw: st.DrawFn) -> list[Branch]:
    branches = [Branch("a" * 40, None, 0)]
    for i in range(draw(st.integers(0, 2))):
        parent = draw(st.integers(0, len(branches) - 1))
        branches.append(Branch(chr(ord("b") + i) * 40, parent, draw(st.integers(0, 12))))
    return branches


@dataclass(frozen=True)
class Case:
    obs: Observation
    data: dict[str, frozenset[tuple[int, int]]]  # what each reachable Redis holds, by pod


@st.composite
def cases(draw: st.DrawFn) -> Case:
    branches = draw(histories())
    redis: dict[str, RedisNode] = {}
    data: dict[str, frozenset[tuple[int, int]]] = {}
    fresh = iter("fghijk")
    for pod in REDIS:
        if draw(st.integers(0, 4)) == 0:
            redis[pod] = RedisNode(addr(pod), False, error="ConnectionError")
            continue
        branch = draw(st.integers(0, len(branches) - 1))
        low = branches[branch].fork if branches[branch].parent is not None else 0
        offset = draw(st.integers(low, low + 12))
        held = data_of(branches, branch, offset)
        role = draw(st.sampled_from(["master", "replica", "unattached"]))
        restarted = draw(st.integers(0, 3)) == 0  # from AOF: its data, a new history, offset 0
        b = branches[branch]
        parent = branches[b.parent] if b.parent is not None else None
        facts = {
            "replid": next(fresh) * 40 if restarted else b.replid,
            "replid2": "" if restarted or parent is None else parent.replid,
            "second_offset": -1 if restarted or parent is None else b.fork + 1,
            "offset": 0 if restarted else offset,
            "keys": len(held),
            "loading": draw(st.integers(0, 9)) == 0,
            "priority": draw(st.sampled_from([0, 100])),
        }
        if role == "master":
            redis[pod] = RedisNode(addr(pod), True, "master", **facts)  # type: ignore[arg-type]
        else:
            follows = NO_MASTER if role == "unattached" else addr(draw(st.sampled_from([p for p in REDIS if p != pod])))
            redis[pod] = RedisNode(addr(pod), True, "slave", master=follows,  # type: ignore[arg-type]
                                   link_up=role == "replica" and draw(st.booleans()), **facts)
        data[pod] = held
    sentinels: dict[str, SentinelNode] = {}
    for s in SENTINELS:
        if draw(st.integers(0, 3)) == 0:
            sentinels[s] = SentinelNode(addr(s), False, error="ConnectionError")
        elif draw(st.integers(0, 4)) == 0:
            sentinels[s] = SentinelNode(addr(s), True, monitoring=False)
        else:
            flags = ["master"] + (["failover_in_progress"] if draw(st.integers(0, 9)) == 0 else [])
            sentinels[s] = SentinelNode(
                addr(s), True, monitoring=True, master=addr(draw(st.sampled_from(REDIS))), flags=frozenset(flags),
                epoch=draw(st.integers(0, 3)), config={}, replicas=tuple(addr(p) for p in REDIS),
                sentinels=tuple(addr(o) for o in SENTINELS if o != s))
    dead = frozenset(p for p in REDIS if not redis[p].reachable and draw(st.booleans()))
    masterless = draw(st.sampled_from([0.0, GRACE - 1, GRACE, PATIENCE]))
    return Case(Observation(redis, sentinels, pod_of=pod_of, masterless_seconds=masterless, dead=dead), data)


def consensus(obs: Observation) -> str | None:
    named = [pod_of(s.master[0]) for s in obs.sentinels.values() if s.reachable and s.monitoring and s.master]
    best = max(set(named), key=named.count, default=None)
    return best if best is not None and named.count(best) >= SPEC.sentinel.quorum else None


@generated(5000)
@given(case=cases())
def test_generated_sentinel_plans_keep_every_safety_rule(case: Case) -> None:
    obs, data = case.obs, case.data
    result = plan(obs, SPEC, expected_sentinels=3)
    reachable = {p: n for p, n in obs.redis.items() if n.reachable}
    reachable_sentinels = [s for s in obs.sentinels.values() if s.reachable]
    promoted = [s.pod for s in result.steps if isinstance(s, Promote)]
    assert len(promoted) <= 1

    # Never a demotion or a re-pointing that drops writes the chosen master lacks.
    for step in result.steps:
        if isinstance(step, Replicate):
            node = reachable[step.pod]
            if node.is_master or (node.role == "slave" and node.link_up):
                assert data[step.pod] <= data[step.master], (step, result)

    if promoted:
        chosen = promoted[0]
        # ... only on a view no hidden side can contradict
        unreachable = {p for p, n in obs.redis.items() if not n.reachable}
        named = consensus(obs)
        assert (not unreachable or len(reachable_sentinels) >= 2 or (named is not None and named in obs.dead)
                or unreachable <= obs.dead), result
        # ... never while a failover runs, a master serves, or a replica still follows a live master
        assert not any(s.failing_over for s in reachable_sentinels)
        assert not any(n.is_master for n in reachable.values())
        assert not any(n.role == "slave" and n.link_up for n in reachable.values())
        # ... never a pod whose data another reachable pod holds more of (an empty or stale one)
        assert not reachable[chosen].loading
        for pod, node in reachable.items():
            if not node.loading:
                assert not data[chosen] < data[pod], (chosen, pod, result)
        # ... and never before Sentinel itself would have given up on the old master
        quiet = not unreachable and len(reachable_sentinels) >= 2 and not any(s.monitoring for s in reachable_sentinels)
        assert quiet or obs.masterless_seconds >= GRACE

    for step in result.steps:
        if isinstance(step, Failover):  # a proper failover only to a pod that holds the named master's data
            assert result.master == step.to
            assert all(data[p] <= data[step.to] for p, n in reachable.items() if n.is_master)
        if isinstance(step, SetPriority) and step.priority != "0":  # back only once in sync with the master
            node = reachable[step.pod]
            assert node.link_up
            assert node.master is not None
            assert pod_of(node.master[0]) == result.master

    # A plan acts only while no Sentinel is failing over.
    if any(s.failing_over for s in reachable_sentinels):
        assert result.steps == []

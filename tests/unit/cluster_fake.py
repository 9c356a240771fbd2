"""A cluster described by hand, for the pure cluster plan: pods, node ids, roles, slots, open marks and
the keys each node holds of the open slots. The tests of :mod:`redis_messaging.modes.cluster.topology`
build their observations with it (harness, not tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis_messaging.modes.cluster import topology as ct
from redis_messaging.redis import cluster as cl

SLOTS = 16384


@dataclass
class Fake:
    """A cluster as a test describes it: pods, their node ids, who replicates whom, who owns what."""

    shards: int = 3
    per: int = 1
    ids: dict[str, str] = field(default_factory=dict)
    masters: dict[str, str | None] = field(default_factory=dict)  # pod -> master pod (None: a master)
    slots: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    alone: set[str] = field(default_factory=set)  # pods that know no other node
    down: set[str] = field(default_factory=set)  # pods that do not answer
    failed: set[str] = field(default_factory=set)  # node ids flagged fail
    extra: list[cl.ClusterNode] = field(default_factory=list)  # entries of dead ids etc.
    migrating: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    importing: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)  # replicas with link up (default: all)
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    keys: dict[str, dict[int, int]] = field(default_factory=dict)  # pod -> open slot -> keys (default 0)
    uncounted: set[str] = field(default_factory=set)  # answering pods whose keys were not counted
    epochs: dict[str, int] = field(default_factory=dict)  # pod -> config epoch (default 0)
    believes: dict[str, dict[int, str]] = field(default_factory=dict)  # viewer pod -> slot -> the owner in its table
    hostnames: dict[str, str] = field(default_factory=dict)  # pod -> the hostname other nodes know it by

    def __post_init__(self) -> None:
        for i in range(self.shards):
            for j in range(1 + self.per):
                self.add(f"r-shard-{i}-{j}", i, j)

    def add(self, pod: str, shard: int, ordinal: int) -> None:
        self.members[pod] = (shard, ordinal)
        self.ids.setdefault(pod, f"id-{pod}")
        self.masters.setdefault(pod, None)

    def ip(self, pod: str) -> str:
        return f"ip-{pod}"

    def node(self, pod: str, *, me: bool, table: dict[str, list[tuple[int, int]]] | None = None) -> cl.ClusterNode:
        master = self.masters.get(pod)
        flags = {"master" if master is None else "slave"}
        if me:
            flags.add("myself")
        if self.ids[pod] in self.failed:
            flags.add("fail")
        return cl.ClusterNode(
            id=self.ids[pod], ip=self.ip(pod), port=6379, hostname=pod if me else self.hostnames.get(pod, pod),
            flags=frozenset(flags),
            master_id=None if master is None else self.ids[master], connected=True,
            config_epoch=self.epochs.get(pod, 0), slots=tuple((table or self.slots).get(pod, [])),
            migrating=tuple(self.migrating.get(pod, [])) if me else (),
            importing=tuple(self.importing.get(pod, [])) if me else (),
        )

    def observation(self, shards: int | None = None) -> ct.Observation:
        views: dict[str, cl.NodeView] = {}
        cluster = [p for p in self.members if p not in self.alone]
        for pod in self.members:
            if pod in self.down:
                views[pod] = cl.NodeView(("a", 1), reachable=False, error="refused")
                continue
            table = dict(self.slots)
            for slot, owner in self.believes.get(pod, {}).items():
                table = given(table, slot, owner)
            others = [] if pod in self.alone else [self.node(p, me=False, table=table) for p in cluster if p != pod]
            others += [] if pod in self.alone else self.extra
            nodes = (self.node(pod, me=True, table=table), *others)
            claimed = sum(n.slot_count for n in nodes)
            linked = self.masters[pod] is not None and (not self.links or pod in self.links)
            views[pod] = cl.NodeView(("a", 1), reachable=True, nodes=nodes, state="ok" if claimed == SLOTS else "fail",
                                     link_up=linked)
        open_slots = sorted({slot for pod, marks in (*self.migrating.items(), *self.importing.items())
                             if pod not in self.down for slot, _ in marks})
        counted = [p for p in self.members if p not in self.down and p not in self.uncounted] if open_slots else []
        slot_keys = {pod: {slot: self.keys.get(pod, {}).get(slot, 0) for slot in open_slots} for pod in counted}
        return ct.Observation(
            views=views, members=dict(self.members), shards=shards or self.shards, replicas_per_shard=self.per,
            min_good_replicas=min(1, self.per), pod_of=lambda host: host if host in self.members else None,
            ips={p: self.ip(p) for p in self.members if p not in self.down}, slot_keys=slot_keys,
        )

    def bootstrapped(self) -> Fake:
        for i, (a, b) in enumerate(ct.even_ranges(self.shards)):
            self.slots[f"r-shard-{i}-0"] = [(a, b)]
            for j in range(1, 1 + self.per):
                self.masters[f"r-shard-{i}-{j}"] = f"r-shard-{i}-0"
        return self

    # -- changes a test makes to the cluster it describes -----------------------------------------
    def give(self, slot: int, pod: str) -> Fake:
        """``slot`` is served by ``pod`` now (taken from whoever served it)."""
        self.slots = given(self.slots, slot, pod)
        return self

    def fail_over(self, master: str, replica: str, *, old: str = "dead") -> Fake:
        """``replica`` took over from ``master`` (the cluster's own failover): it serves the slots and the
        shard's other replicas follow it. ``old``: ``dead`` (down, flagged fail), ``replica`` (back on
        its volume, following the new master) or ``gone`` (its pod runs a new node now, and the old id
        is forgotten everywhere; the new node follows the new master)."""
        shard = self.members[master][0]
        self.slots[replica] = self.slots.pop(master, [])
        self.masters[replica] = None
        for pod, (s, _) in self.members.items():
            if s == shard and pod not in (master, replica):
                self.masters[pod] = replica
        if old == "dead":
            self.down.add(master)
            self.failed.add(self.ids[master])
        else:
            self.masters[master] = replica
            if old == "gone":
                self.ids[master] = f"new-{master}"
        return self


def given(slots: dict[str, list[tuple[int, int]]], slot: int, pod: str) -> dict[str, list[tuple[int, int]]]:
    """A copy of ``slots`` (pod -> ranges) where ``slot`` is ``pod``'s, taken from whoever had it."""
    out: dict[str, list[tuple[int, int]]] = {}
    for owner, ranges in slots.items():
        kept: list[tuple[int, int]] = []
        for a, b in ranges:
            if a <= slot <= b:
                kept += [r for r in ((a, slot - 1), (slot + 1, b)) if r[0] <= r[1]]
            else:
                kept.append((a, b))
        out[owner] = kept
    out.setdefault(pod, []).append((slot, slot))
    return out

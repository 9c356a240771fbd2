"""Check and heal a cluster-mode topology: bootstrap, scale out and in, heal, report shards.

The cluster bus decides failovers; the operator does what the cluster cannot do by itself. Every pass
observes every node (one round trip each), makes a :func:`plan` (pure: observations in, steps out),
executes it, and reports. The plan is a fixed order of phases; a phase with work to do returns its
steps and the next pass, on a fresh observation, goes on:

1. **join**: every reachable shard pod that the cluster does not know is met (``CLUSTER MEET``), and a
   known node whose address changed (a rescheduled pod; ``nodes.conf`` is on its volume, its hostname
   is stable) is met again at its new address. A node that knows another cluster with slots is never
   merged in.
2. **forget**: node ids that failed and whose pod now runs another node (it lost its volume) are
   forgotten on every node, unless a live replica may still take over for them.
3. **assign**: slots that no node claims are added to the master of the shard the even split gives
   them to. On a fresh cluster that is the bootstrap; on a cluster holding slots it only fixes
   coverage lost with a shard whose every node was replaced (a slot a master was importing goes to
   that master: it holds the keys moved so far). A cluster that holds slots is never re-created.
4. **replicas**: every other pod of a shard replicates the shard's master (``CLUSTER REPLICATE``),
   so each shard keeps ``replicasPerShard`` replicas after failovers and replaced pods.
5. **open slots**: importing/migrating slots left by an interrupted migration are finished (keys
   moved, slot assigned to the target shard's current master), or made stable only when the target
   shard provably holds none of their keys; see :func:`open_slot` for the rule.
6. **balance**: when every shard has its master and replicas in sync and the cluster state is ok,
   slots move until every shard holds an even share (within one slot); shards beyond ``shards`` give
   all theirs away, spread over every remaining shard. Migration runs in pipelined batches within a
   time budget per pass; the cluster's own slot table and its open-slot marks are the record of
   progress, so a pass after a crash anywhere continues where the last one stopped. Where every node
   runs Valkey 9 or later (and ``cluster.slotMigration`` is Auto), each move is one job of the engine's
   atomic slot migration instead; the engine's record of its jobs is the record of progress, and a
   job found running is followed, never started twice (:class:`~redis_messaging.redis.cluster.AtomicMover`).
7. **release**: a shard being removed that owns no slot any more is forgotten on every remaining
   node, its nodes reset, and its StatefulSet handed back to the reconcile pass for deletion.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec, ShardStatus
from redis_messaging.builders import config, names
from redis_messaging.builders.names import Owner
from redis_messaging.modes.base import Action, TopologyReport, engine_status
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.addresses import Addresses, OwnerConnections
from redis_messaging.redis.engine import has_atomic_slot_migration, replicates_setslot

log = logging.getLogger(__name__)

SLOTS = cl.SLOTS
MIN_SHARDS = 3
WAIT_SECONDS = 1.0
BLOCKED_SECONDS = 10.0
"""How soon a pass comes back while a slot move is stopped by a key on both sides (a human decides)."""
SLOT_MOVE_BLOCKED = "SlotMoveBlocked"
SETSLOT_CONNECTIONS = 16
"""Connections a key-by-key move spreads each stage's CLUSTER SETSLOT commands over where the engine
answers them only once the replicas acknowledged them (Valkey): 30 s -> 10 s for a quarter of the slots."""
PROGRESSING_REASONS = frozenset({"Joining", "Bootstrapping", "Resharding", "ScalingIn"})
"""Reasons of a pass that works towards the declared topology on purpose: Progressing, not Degraded."""


# ---------------------------------------------------------------------------------------------
# Slots: pure arithmetic


def even_counts(shards: int) -> list[int]:
    """How many slots each of ``shards`` shards holds when balanced (the first ones one more)."""
    base, extra = divmod(SLOTS, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def even_ranges(shards: int) -> list[tuple[int, int]]:
    """The contiguous range of each shard in an even split (what a fresh cluster starts with)."""
    out = []
    start = 0
    for count in even_counts(shards):
        out.append((start, start + count - 1))
        start += count
    return out


def even_shard_of(slot: int, shards: int) -> int:
    for i, (start, end) in enumerate(even_ranges(shards)):
        if start <= slot <= end:
            return i
    raise ValueError(f"slot {slot} out of range")


format_ranges = cl.format_ranges


@dataclass(frozen=True)
class SlotMove:
    source: int  # shard index
    target: int
    slots: tuple[int, ...]


def balance(owned: dict[int, set[int]], shards: int) -> list[SlotMove]:
    """The moves that leave shards ``0..shards-1`` with :func:`even_counts` slots each and every other
    shard of ``owned`` with none. Donors give their highest slots; receivers are served in index order
    so the result is deterministic and contiguous where it can be."""
    want = dict(enumerate(even_counts(shards)))
    give: dict[int, list[int]] = {}
    need: dict[int, int] = {}
    for shard in sorted(set(owned) | set(want)):
        have = sorted(owned.get(shard, set()))
        target = want.get(shard, 0)
        if len(have) > target:
            give[shard] = have[target:]
        elif len(have) < target:
            need[shard] = target - len(have)
    moves: list[SlotMove] = []
    receivers = [(shard, count) for shard, count in sorted(need.items())]
    r = 0
    for donor in sorted(give):
        slots = give[donor]
        while slots and r < len(receivers):
            receiver, count = receivers[r]
            chunk, slots = slots[:count], slots[count:]
            moves.append(SlotMove(donor, receiver, tuple(chunk)))
            if count > len(chunk):
                receivers[r] = (receiver, count - len(chunk))
            else:
                r += 1
    return moves


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass(frozen=True)
class Meet:
    pod: str
    via: str
    ip: str
    port: int
    rejoin: bool = False


@dataclass(frozen=True)
class AddSlots:
    pod: str
    shard: int
    slots: tuple[tuple[int, int], ...]
    bootstrap: bool
    imported: bool = False  # slots the pod was importing from a source that is gone: it holds their keys


@dataclass(frozen=True)
class Replicate:
    pod: str
    master: str
    master_id: str


@dataclass(frozen=True)
class Forget:
    node_id: str
    pod: str | None
    on: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Reset:
    pod: str


@dataclass(frozen=True)
class Move:
    source: str  # pods
    target: str
    slots: tuple[int, ...]
    source_shard: int
    target_shard: int
    resume: bool = False  # finishing slots an interrupted migration left open
    only_if_empty: bool = False  # the source may take no write: nothing is opened if the slots hold keys


@dataclass(frozen=True)
class Stabilize:
    """``CLUSTER SETSLOT <slot> STABLE`` on ``pod``. ``guard``: pods counted again right before, each of
    which must answer and hold no key of the slots, or nothing is closed (a key may have arrived since
    the observation). The importing side is closed first, so no ASK-redirected write lands meanwhile."""

    pod: str
    slots: tuple[int, ...]
    guard: tuple[str, ...] = ()


Step = Meet | AddSlots | Replicate | Forget | Reset | Move | Stabilize


@dataclass(frozen=True)
class Observation:
    views: dict[str, cl.NodeView]  # by pod: every expected pod, and the pods of shards being removed
    members: dict[str, tuple[int, int]]  # pod -> (shard, ordinal), for every pod of views
    shards: int
    replicas_per_shard: int
    min_good_replicas: int  # replicas in sync a master needs to accept writes (min-replicas-to-write)
    pod_of: Callable[[str], str | None]  # announced hostname -> pod
    ips: dict[str, str] = field(default_factory=dict)  # pod -> its current IP, where known
    ports: dict[str, int] = field(default_factory=dict)  # pod -> its client port
    # pod -> open slot -> keys it holds of that slot (CLUSTER COUNTKEYSINSLOT), for every slot some node
    # imports or migrates, on every reachable node, replicas included; a pod or slot missing is unknown.
    # Empty when no slot is open (nothing is counted then).
    slot_keys: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardView:
    index: int
    master: str | None  # pod
    master_id: str | None
    replicas: tuple[str, ...]  # pods replicating the master, as the cluster says
    in_sync: int  # replicas with their link up
    slots: tuple[tuple[int, int], ...]
    leaving: bool


@dataclass(frozen=True)
class Plan:
    steps: list[Step] = field(default_factory=list)
    reason: str = "Healthy"
    message: str = ""
    available: bool | None = None
    wait: bool = False
    healthy: bool = False
    shards: list[ShardView] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # pod -> master | replica


class _Analysis:
    """What the plan needs to know, derived once from an observation."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.reachable = {p: v for p, v in obs.views.items() if v.reachable and v.myself is not None}
        self.expected = sorted((p for p in obs.views if obs.members[p][0] < obs.shards), key=obs.members.__getitem__)
        self.leaving = sorted((p for p in obs.views if obs.members[p][0] >= obs.shards), key=obs.members.__getitem__)
        self.leaving_shards = sorted({obs.members[p][0] for p in self.leaving})
        self.anchor = self._anchor()
        anchor_view = self.reachable.get(self.anchor) if self.anchor else None
        self.table: dict[str, cl.ClusterNode] = {n.id: n for n in anchor_view.nodes} if anchor_view else {}
        self.id_of = {p: v.id for p, v in self.reachable.items() if v.id is not None}
        self.pod_by_id = {i: p for p, i in self.id_of.items()}
        self._claimed: set[int] | None = None
        self._shard_pods: dict[int, list[str]] = {}

    def _anchor(self) -> str | None:
        """A reachable master holding slots that knows the most nodes (an expected pod first); on a
        fresh cluster, the first reachable expected pod."""
        members = self.obs.members
        holding = [p for p, v in self.reachable.items() if v.myself and v.myself.is_master and v.myself.slots]
        if holding:
            return max(holding, key=lambda p: (len(self.reachable[p].nodes), members[p][0] < self.obs.shards,
                                               -members[p][0], -members[p][1]))
        candidates = [p for p in self.expected if p in self.reachable]
        return candidates[0] if candidates else None

    def pod_of_node(self, node: cl.ClusterNode) -> str | None:
        pod = self.pod_by_id.get(node.id)
        if pod is not None:
            return pod
        return self.obs.pod_of(node.hostname) if node.hostname else None

    def node_of_pod(self, pod: str) -> cl.ClusterNode | None:
        node_id = self.id_of.get(pod)
        if node_id is not None:
            return self.table.get(node_id)
        found = [n for n in self.table.values() if n.hostname and self.obs.pod_of(n.hostname) == pod]
        if not found:
            return None
        # The live one if several ids carry the pod's hostname (a replaced pod before its old id is forgotten).
        return min(found, key=lambda n: (n.failed or n.no_address, not n.is_master))

    def shard_pods(self, shard: int) -> list[str]:
        if shard not in self._shard_pods:
            self._shard_pods[shard] = sorted((p for p, (s, _) in self.obs.members.items() if s == shard),
                                             key=self.obs.members.__getitem__)
        return list(self._shard_pods[shard])

    def claimed(self) -> set[int]:
        """Every slot some node claims, in any reachable node's view."""
        if self._claimed is None:
            # the views mostly agree: each distinct range is expanded once
            claims = {r for view in self.reachable.values() for node in view.nodes for r in node.slots}
            self._claimed = set()
            for start, end in claims:
                self._claimed.update(range(start, end + 1))
        return set(self._claimed)

    def shard_master(self, shard: int) -> cl.ClusterNode | None:
        pods = self.shard_pods(shard)
        nodes = [(p, n) for p in pods if (n := self.node_of_pod(p)) is not None]
        owning = [(p, n) for p, n in nodes if n.is_master and n.slots]
        if owning:
            return max(owning, key=lambda pn: (pn[1].slot_count, not pn[1].failed, -self.obs.members[pn[0]][1]))[1]
        masters = [(p, n) for p, n in nodes if n.is_master and not n.failed and p in self.reachable]
        if not masters:
            return None
        followed = Counter(n.master_id for _, n in nodes if n.master_id)
        return max(masters, key=lambda pn: (followed[pn[1].id], -self.obs.members[pn[0]][1]))[1]

    def shard_of_id(self, node_id: str) -> int | None:
        """The shard of a node id: of the pod running it, or of the pod its table entry names."""
        pod = self.pod_by_id.get(node_id)
        if pod is None:
            node = self.table.get(node_id)
            pod = self.pod_of_node(node) if node is not None else None
        where = self.obs.members.get(pod or "")
        return where[0] if where is not None else None

    def usable_master(self, shard: int) -> str | None:
        """The pod of the shard's master if it can take part in a slot move now: reachable, a master in
        the cluster's table and in its own view, not flagged ``fail``."""
        node = self.shard_master(shard)
        pod = self.pod_of_node(node) if node is not None else None
        view = self.reachable.get(pod or "")
        if node is None or pod is None or view is None or node.failed or not node.is_master:
            return None
        me = view.myself
        return pod if me is not None and me.id == node.id and me.is_master else None

    def slot_owner(self, slot: int) -> cl.ClusterNode | None:
        """The master that serves ``slot`` in the anchor's table (the newest claim if two)."""
        claims = [n for n in self.table.values() if n.is_master and any(b <= slot <= e for b, e in n.slots)]
        return max(claims, key=lambda n: n.config_epoch) if claims else None

    def self_claim(self, slot: int) -> cl.ClusterNode | None:
        """The master that says itself it serves ``slot`` (the newest claim if two). An importing node
        keeps the slot's old owner in its table whatever claims it hears (Redis skips importing slots),
        so when the source of a move failed over, the anchor's table may name a replica: the new
        master's own word is what serves the slot."""
        claims = [v.myself for v in self.reachable.values()
                  if v.myself is not None and v.myself.is_master and any(b <= slot <= e for b, e in v.myself.slots)]
        if not claims:
            return None
        newest = max(claims, key=lambda n: n.config_epoch)
        return self.table.get(newest.id, newest)

    def table_claim(self, slot: int, *, include_failed: bool = False) -> cl.ClusterNode | None:
        """The newest claim of ``slot`` in any reachable node's table; None when two nodes claim it with
        the same epoch (``include_failed``: claims of nodes flagged ``fail`` count too). When the source
        of a move failed over before the assignment, the target (importing) names the old source, now a
        replica, and
        the new master may have given the slot up on hearing of the target's higher epoch from a
        master told of the move: no node serves it in its own line, and the tables name the target."""
        newest: cl.ClusterNode | None = None
        tied = False  # another node claims it with the same epoch: which one wins is not known
        for view in self.reachable.values():
            for node in view.nodes:
                if not (node.is_master and (include_failed or not node.failed)
                        and any(b <= slot <= e for b, e in node.slots)):
                    continue
                if newest is None or node.config_epoch > newest.config_epoch:
                    newest, tied = node, False
                elif node.config_epoch == newest.config_epoch and node.id != newest.id:
                    tied = True
        if newest is None or tied:
            return None
        return self.table.get(newest.id, newest)

    def drain_target(self, shard: int) -> tuple[str, int] | None:
        """Another remaining shard's master that takes writes now (reachable, its replicas in sync), the
        one serving the fewest slots: (its pod, its shard); None if none."""
        need = min(self.obs.min_good_replicas, self.obs.replicas_per_shard)
        best: tuple[int, str, int] | None = None
        for other in range(self.obs.shards):
            pod = self.usable_master(other) if other != shard else None
            if pod is None:
                continue
            view = self.shard_view(other)
            count = sum(e - b + 1 for b, e in view.slots)
            if view.in_sync >= need and (best is None or count < best[0]):
                best = (count, pod, other)
        return (best[1], best[2]) if best is not None else None

    def keys_in(self, pod: str, slot: int) -> int | None:
        """Keys of an open slot on ``pod``, as counted in this observation; None: unknown."""
        if pod not in self.reachable:
            return None
        return self.obs.slot_keys.get(pod, {}).get(slot)

    def shard_view(self, shard: int) -> ShardView:
        master = self.shard_master(shard)
        replicas: list[str] = []
        in_sync = 0
        if master is not None:
            for node in self.table.values():
                if node.master_id == master.id and not node.failed:
                    pod = self.pod_of_node(node)
                    replicas.append(pod or f"{node.hostname or node.ip}")
                    view = self.reachable.get(pod or "")
                    if view is not None and view.link_up:
                        in_sync += 1
        return ShardView(
            index=shard,
            master=self.pod_of_node(master) if master is not None else None,
            master_id=master.id if master is not None else None,
            replicas=tuple(sorted(replicas)),
            in_sync=in_sync,
            slots=master.slots if master is not None else (),
            leaving=shard >= self.obs.shards,
        )


def _summary(a: _Analysis, shards: list[ShardView]) -> str:
    up = sum(1 for p in a.expected if p in a.reachable)
    state = a.reachable[a.anchor].state if a.anchor else "unknown"
    parts = [f"cluster_state {state}; nodes {up}/{len(a.expected)} reachable"]
    for s in shards:
        if not s.leaving:
            parts.append(f"shard {s.index}: {len(s.replicas)} replicas, {sum(e - b + 1 for b, e in s.slots)} slots")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Open slots: what an interrupted migration left behind


@dataclass
class Marks:
    """The importing/migrating marks of one slot, as the reachable nodes report them on their own line."""

    migrating: list[tuple[str, str]] = field(default_factory=list)  # (pod, target node id)
    importing: list[tuple[str, str]] = field(default_factory=list)  # (pod, source node id)

    @property
    def pods(self) -> list[str]:
        return sorted({p for p, _ in self.migrating} | {p for p, _ in self.importing})


@dataclass(frozen=True)
class Resume:
    """Move what is left of the slot from ``source`` (a master) to ``target`` (its shard's master)."""

    source: str
    target: str
    source_shard: int
    target_shard: int


@dataclass(frozen=True)
class Close:
    """Make the slot stable on every node marking it; ``guard``: the pods that held none of its keys."""

    guard: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    why: str  # without the slot number: slots waiting for the same reason are listed together


OpenSlotDecision = Resume | Close | Wait


def open_slot(a: _Analysis, slot: int, marks: Marks) -> list[OpenSlotDecision]:
    """What to do with one open slot. The rule (the safety rule of DESIGN.md, as implemented):

    **A slot move is never closed on the source while any node of the target shard holds keys of that
    slot; when the target master failed over, the move resumes towards the shard's new master;
    ``MIGRATE`` runs without ``REPLACE``, and ``BUSYKEY`` stops the move with a Condition and an Event
    naming the slot and key.**

    In detail:

    - The *target shard* is the shard of the node the marks name (the migrating node's target, the
      importing node). A target id no table knows any more (its node is gone from the cluster) names
      no shard: then the target is the slot's owner if the migrating node no longer serves it, else the
      shard outside the owner's that holds keys of the slot; if none does (every node answering,
      counting 0) the slot is closed.
    - The target shard's master is usable (reachable, a master, not ``fail``): the move resumes towards
      it, whichever node of the shard that is now (after a failover: the promoted replica, whose
      data has the keys moved so far). The source's ``MIGRATING`` is pointed at it, the remaining keys
      follow. A target shard being removed gets the slot too when it may hold keys of it (keys from
      both sides end on it, none overwritten); the balance phase then moves the slot on to a remaining
      shard, as it does with every slot of a leaving shard.
    - The slot is closed (``SETSLOT STABLE``) only when the target shard *provably* holds no key of it:
      every node of the shard, replicas included, answered and counted 0, and the move cannot or need
      not go on (no usable master, or a shard being removed). The importing side is closed first and
      the counts are taken again right before the source is closed.
    - Anything else waits and says why: an unreachable node of the target shard (unknown is not 0),
      a target shard without a master while it may hold keys, an owner that does not answer, keys of
      the slot on a third shard, marks naming two target shards.
    - The slot's owner is the newest claim in the anchor's table; failing that, in a master's own line;
      failing that, in any reachable node's table (see :meth:`_Analysis.table_claim`).
    - The target shard serves the slot already (the assignment was interrupted half-way): whatever a
      source shard (one holding keys of it, migrating it, or named by the target's import) still holds
      of it moves over, and the marks are cleared by the assignment.
    """
    obs = a.obs
    members = obs.members
    owner = a.slot_owner(slot)
    owner_pod = a.pod_of_node(owner) if owner is not None else None
    if owner is None or not owner.is_master or owner_pod not in members:
        owner = a.self_claim(slot)
        owner_pod = a.pod_of_node(owner) if owner is not None else None
    if owner is None or owner_pod not in members:
        owner = a.table_claim(slot)
        owner_pod = a.pod_of_node(owner) if owner is not None else None
    if owner is None or owner_pod not in members:
        return [Wait("open, and no node of this resource serves it")]
    owner_shard = members[owner_pod][0]
    named: set[int] = set()
    gone: list[str] = []
    for _pod, target_id in marks.migrating:
        shard = a.shard_of_id(target_id)
        if shard is None:
            gone.append(target_id)
        else:
            named.add(shard)
    named |= {members[pod][0] for pod, _ in marks.importing}
    holders = {members[p][0] for p in members if (a.keys_in(p, slot) or 0) > 0}
    if len(named) > 1:
        return [Wait(f"its open marks name shards {', '.join(map(str, sorted(named)))} as its target")]
    if named:
        (target,) = named
    elif owner_shard not in {members[pod][0] for pod, _ in marks.migrating}:
        target = owner_shard  # assigned to the target shard already; its node that took it is gone since
    else:
        # the target node is gone: any node outside the owner's shard may hold what it took
        outside = sorted(p for p in members if members[p][0] != owner_shard)
        unknown = [p for p in outside if a.keys_in(p, slot) is None]
        if unknown:
            return [Wait(f"migrating to node {gone[0][:8]}, which is gone; whether {', '.join(unknown)} "
                         "holds keys of it is unknown (not reachable)")]
        elsewhere = sorted(holders - {owner_shard})
        if len(elsewhere) > 1:
            return [Wait(f"migrating to node {gone[0][:8]}, which is gone; shards "
                         f"{', '.join(map(str, elsewhere))} hold keys of it: not moved automatically")]
        if not elsewhere:
            return [Close(tuple(outside))]
        target = elsewhere[0]
    target_pods = a.shard_pods(target)
    counts = {p: a.keys_in(p, slot) for p in target_pods}
    empty = bool(counts) and all(c == 0 for c in counts.values())
    taker = a.usable_master(target)
    if owner_shard != target:
        stray = sorted(holders - {owner_shard, target})
        if stray:
            return [Wait(f"keys of it are on shard {', '.join(map(str, stray))} too, neither its owner nor its "
                         "target: not moved automatically")]
        if empty and (taker is None or target >= obs.shards):
            return [Close(tuple(target_pods))]
        if taker is None:
            unknown = [p for p, c in counts.items() if c is None]
            held = [f"{p} holds {c}" for p, c in counts.items() if c]
            return [Wait(f"its target shard {target} has no usable master, and "
                         + "; ".join(held + ([f"{', '.join(unknown)} not reachable"] if unknown else []))
                         + ": the move resumes when the shard has a master again")]
        source = a.usable_master(owner_shard)
        if source != owner_pod:
            return [Wait(f"its owner {owner_pod} is not reachable (or not a master)")]
        return [Resume(owner_pod, taker, owner_shard, target)]
    # the target shard serves the slot already: what a source shard still holds of it comes over
    if taker is None or taker != owner_pod:
        return [Wait(f"shard {target}, which serves it, has no usable master")]
    # the shard an import names is a source too: when the target still imports a slot that the tables
    # give it (the assignment interrupted before the target took it), a move from that shard moves what
    # is left (nothing, usually) and ends with the assignment on the target
    imported_from = {a.shard_of_id(source_id) for _, source_id in marks.importing}
    sources = sorted((holders | {members[p][0] for p, _ in marks.migrating}
                      | {s for s in imported_from if s is not None}) - {target})
    if not sources:
        return [Wait(f"marked open on {', '.join(marks.pods)} of shard {target}, which serves it")]
    out: list[OpenSlotDecision] = []
    for shard in sources:
        giver = a.usable_master(shard)
        if giver is None:
            out.append(Wait(f"shard {shard} holds keys of it or migrates it, and has no usable master"))
        else:
            out.append(Resume(giver, taker, shard, target))
    return out


@dataclass
class OpenSlots:
    steps: list[Step] = field(default_factory=list)
    waits: list[str] = field(default_factory=list)  # "slots 5-7: why"
    finishing: int = 0  # open slots with a step


def open_marks(a: _Analysis) -> dict[int, Marks]:
    out: dict[int, Marks] = {}
    for pod, view in sorted(a.reachable.items()):
        me = view.myself
        if me is None:
            continue
        for slot, target_id in me.migrating:
            out.setdefault(slot, Marks()).migrating.append((pod, target_id))
        for slot, source_id in me.importing:
            out.setdefault(slot, Marks()).importing.append((pod, source_id))
    return out


def open_slots(a: _Analysis) -> OpenSlots:
    """Phase 5: every open slot decided by :func:`open_slot`, as steps grouped by pod; the waits said."""
    moves: dict[tuple[str, str, int, int], list[int]] = {}
    close_importing: dict[str, list[int]] = {}
    close_migrating: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    waits: dict[str, list[int]] = {}
    finishing = set()
    for slot, marks in sorted(open_marks(a).items()):
        for decision in open_slot(a, slot, marks):
            if isinstance(decision, Wait):
                waits.setdefault(decision.why, []).append(slot)
                continue
            finishing.add(slot)
            if isinstance(decision, Resume):
                key = (decision.source, decision.target, decision.source_shard, decision.target_shard)
                moves.setdefault(key, []).append(slot)
                continue
            for pod, _ in marks.importing:
                close_importing.setdefault(pod, []).append(slot)
            for pod, _ in marks.migrating:
                close_migrating.setdefault((pod, decision.guard), []).append(slot)
    steps: list[Step] = [Stabilize(pod, tuple(slots)) for pod, slots in sorted(close_importing.items())]
    steps += [Stabilize(pod, tuple(slots), guard) for (pod, guard), slots in sorted(close_migrating.items())]
    steps += [Move(source, target, tuple(slots), source_shard, target_shard, resume=True)
              for (source, target, source_shard, target_shard), slots in sorted(moves.items())]
    said = [f"slot{'s' if len(slots) > 1 else ''} {format_ranges(cl.ranges(slots))}: {why}"
            for why, slots in sorted(waits.items(), key=lambda item: item[1][0])]
    return OpenSlots(steps=steps, waits=said, finishing=len(finishing))


def plan(obs: Observation, *, reshard: bool = True) -> Plan:
    """The next steps for the cluster as observed (see the module docstring for the phases)."""
    a = _Analysis(obs)
    if obs.shards < MIN_SHARDS:
        return Plan(reason="ScaleInRefused", wait=True,
                    message=f"a Redis Cluster needs at least {MIN_SHARDS} shards; spec.cluster.shards is {obs.shards}")
    if a.anchor is None:
        return Plan(reason="WaitingForPods", available=None, wait=True,
                    message=f"no cluster node answers (0/{len(a.expected)} reachable)")
    anchor_view = a.reachable[a.anchor]
    available = anchor_view.state == "ok"
    roles = {p: ("master" if v.myself and v.myself.is_master else "replica") for p, v in a.reachable.items()
             if v.myself is not None and (v.myself.is_master or v.myself.master_id)}

    def shard_views() -> list[ShardView]:
        return [a.shard_view(i) for i in [*range(obs.shards), *a.leaving_shards]]

    def early(steps: list[Step], reason: str, message: str = "") -> Plan:
        views = shard_views()
        return Plan(steps=steps, reason=reason, message=message or _summary(a, views), available=available,
                    wait=True, shards=views, roles=roles)

    unreachable = [p for p in a.expected if p not in a.reachable]
    bootstrapped = bool(a.claimed())
    if not bootstrapped and unreachable:
        return early([], "WaitingForPods", f"bootstrap waits for every node: {', '.join(unreachable)} "
                     f"not reachable ({len(a.expected) - len(unreachable)}/{len(a.expected)})")

    # 1. join
    steps: list[Step] = []
    foreign = []
    for pod in a.expected:
        view = a.reachable.get(pod)
        if view is None or pod == a.anchor or view.id is None:
            continue
        ip = obs.ips.get(pod)
        port = obs.ports.get(pod, names.REDIS_PORT)
        known = a.table.get(view.id)
        if known is None:
            if any(n.slots for n in view.nodes):
                foreign.append(pod)  # knows a cluster with slots that is not this one: never merged
            elif ip:
                steps.append(Meet(pod, a.anchor, ip, port))
        elif ip and not known.in_handshake and (known.ip != ip or known.no_address) and not known.myself:
            steps.append(Meet(pod, a.anchor, ip, port, rejoin=True))
    if steps:
        return early(steps, "Joining")
    if any(n.in_handshake for n in a.table.values()):
        return early([], "Joining", "waiting for cluster handshakes to finish")

    # 2. forget node ids that are gone for good
    for node in sorted(a.table.values(), key=lambda n: n.id):
        if node.myself or not (node.failed or node.no_address):
            continue
        # A pod answering with this id right now runs it: never forgotten, whatever its table entry
        # says of its name (a restarted node's entry may name it by an address no pod is known by yet,
        # seen with Redis 8: forgotten, the node was never let back in).
        owner_pod = a.pod_by_id.get(node.id) or (obs.pod_of(node.hostname) if node.hostname else None)
        current = a.reachable.get(owner_pod or "")
        replaced = current is not None and current.id != node.id
        stranger = owner_pod is None or owner_pod not in obs.members
        if not (replaced or stranger):
            continue  # its pod may come back with its nodes.conf
        if node.is_master and any(n.master_id == node.id and not n.failed for n in a.table.values()):
            continue  # a replica may still take over its slots
        on = tuple(p for p, v in a.reachable.items() if v.node(node.id) is not None and v.id != node.id
                   and (v.myself is None or v.myself.master_id != node.id))
        if on:
            why = (f"{owner_pod} runs a new node now" if replaced else
                   f"{node.hostname or node.ip or 'an unknown address'} is not a pod of this resource")
            steps.append(Forget(node.id, owner_pod, on, why))
    if steps:
        return early(steps, "Healing")

    # 3. assign slots nobody claims (the bootstrap, or coverage lost with every node of a shard)
    unowned = set(range(SLOTS)) - a.claimed()
    if unowned:
        if unreachable:
            return early([], "WaitingForPods", f"{len(unowned)} slots are unassigned; waiting for every node "
                         f"({', '.join(unreachable)} not reachable)")
        joined = [p for p in a.expected if a.id_of.get(p) in a.table]
        if len(joined) < len(a.expected):
            return early([], "Joining", "waiting for every node to join before assigning slots")
        # A slot some master was importing when its source vanished goes to that master: the keys moved
        # so far are there, and ADDSLOTS ends the import. The rest follow the even split.
        importers: dict[str, list[int]] = {}
        for pod, view in sorted(a.reachable.items()):
            me = view.myself
            if me is not None and me.is_master and not me.failed and me.id in a.table:
                for slot, _ in me.importing:
                    if slot in unowned:
                        importers.setdefault(pod, []).append(slot)
                        unowned.discard(slot)
        for pod, slots in sorted(importers.items()):
            steps.append(AddSlots(pod, obs.members[pod][0], tuple(cl.ranges(slots)), bootstrap=False, imported=True))
        by_shard: dict[int, list[int]] = {}
        for slot in unowned:
            by_shard.setdefault(even_shard_of(slot, obs.shards), []).append(slot)
        for shard, free in sorted(by_shard.items()):
            taker = a.shard_master(shard)
            taker_pod = a.pod_of_node(taker) if taker is not None else None
            if taker_pod is None or taker_pod not in a.reachable:
                return early(steps, "WaitingForPods", f"shard {shard} has no master to take its slots")
            steps.append(AddSlots(taker_pod, shard, tuple(cl.ranges(free)), bootstrap=not bootstrapped))
        return early(steps, "Bootstrapping" if not bootstrapped else "Healing")

    # 4. replicas follow their shard's master
    problems = list(foreign)
    for shard in range(obs.shards):
        master = a.shard_master(shard)
        master_pod = a.pod_of_node(master) if master is not None else None
        if master is None or master_pod not in a.reachable or master.failed:
            continue
        for pod in a.shard_pods(shard):
            view = a.reachable.get(pod)
            if pod == master_pod or view is None or view.myself is None or view.id not in a.table:
                continue
            me = view.myself
            if me.is_master and me.slots:
                # A master of the shard back from a crash while its replica had taken over, serving the
                # slots the replica had not heard it took (a move's last batch): the cluster's table
                # names it their owner, and no node claims them with a newer epoch. Neither master has a
                # replica, so neither takes a write (min-replicas-to-write): the slots move, keys and all
                # (MIGRATE without REPLACE), to another shard's master that has its replicas, else to
                # this shard's master (which takes them only without keys); the node then serves nothing
                # and follows its shard's master. Slots a newer claim gives the shard's master (an old
                # master that did not hear it was replaced) are not moved: its copy may be stale.
                # Slots it has open are left to the open-slot phase. Without a replica of its own, the
                # move runs only if they hold no key: MIGRATE is a write, which such a master refuses.
                own = a.table.get(me.id)
                usable = own is not None and own.is_master and not own.failed
                marked = {x for x, _ in (*me.migrating, *me.importing)}
                theirs = tuple(sorted(
                    x for x in me.slot_set() - marked if usable and a.slot_owner(x) is own
                    and (claim := a.table_claim(x, include_failed=True)) is not None and claim.id == me.id))
                drain = a.drain_target(shard) if theirs else None
                if theirs and drain is None and a.usable_master(shard) == master_pod:
                    drain = (master_pod, shard)
                if theirs and drain is not None:
                    alone = not any(n.master_id == me.id and not n.failed for n in a.table.values())
                    steps.append(Move(pod, drain[0], theirs, shard, drain[1], resume=True, only_if_empty=alone))
                else:
                    problems.append(f"{pod} and {master_pod} both serve slots of shard {shard}")
            elif (me.is_master or me.master_id != master.id) and view.node(master.id) is not None:
                steps.append(Replicate(pod, master_pod, master.id))
    if steps:
        return early(steps, "Healing")

    # 5. slots an interrupted migration left open (see open_slot for the rule)
    opened = open_slots(a)
    if opened.steps or opened.waits:
        reason = "Resharding" if opened.steps else "SlotMoveWaiting"
        parts = []
        if opened.finishing:
            parts.append(f"finishing {opened.finishing} slots an interrupted migration left open")
        parts += opened.waits
        return early(opened.steps, reason, "; ".join(parts))

    views = shard_views()
    by_index = {s.index: s for s in views}

    # 6. balance
    not_ready = []
    for shard in range(obs.shards):
        s = by_index[shard]
        master_node = a.table.get(s.master_id or "")
        if s.master is None or s.master not in a.reachable or master_node is None or master_node.failed:
            not_ready.append(f"shard {shard} has no reachable master")
        elif s.in_sync < min(obs.min_good_replicas, obs.replicas_per_shard):
            not_ready.append(f"shard {shard} has {s.in_sync} replicas in sync")
    for s in views:
        if s.leaving and s.slots and s.master not in a.reachable:
            not_ready.append(f"shard {s.index} (being removed) has no reachable master")
        elif s.leaving and s.slots and s.in_sync < min(obs.min_good_replicas, obs.replicas_per_shard):
            not_ready.append(f"shard {s.index} (being removed) has {s.in_sync} replicas in sync")
    suspect = [n for n in a.table.values() if n.is_master and n.slots and (n.failed or n.suspected)]
    calm = available and not suspect and not not_ready
    owned = {s.index: {x for b, e in s.slots for x in range(b, e + 1)} for s in views if s.master is not None}
    moves = balance(owned, obs.shards) if calm else []
    if reshard and moves:
        for move in moves:
            giver, taker_pod = by_index[move.source].master, by_index[move.target].master
            if giver is not None and taker_pod is not None:
                steps.append(Move(giver, taker_pod, move.slots, move.source, move.target))
        total = sum(len(m.slots) for m in moves)
        return Plan(steps=steps, reason="Resharding", available=available, wait=True, shards=views, roles=roles,
                    message=f"moving {total} slots: " + ", ".join(
                        f"{len(m.slots)} from shard {m.source} to shard {m.target}" for m in moves))

    # 7. release shards being removed once they own nothing
    released = []
    if calm and a.leaving_shards:
        leaving_pods = set(a.leaving)
        leaving_ids = {n.id for v in a.reachable.values() for n in v.nodes
                       if a.pod_of_node(n) in leaving_pods}
        leaving_ids |= {a.id_of[p] for p in a.leaving if p in a.id_of}
        remaining = {p: v for p, v in a.reachable.items() if p not in leaving_pods}
        if any(n.slots for v in a.reachable.values() for n in v.nodes if n.id in leaving_ids):
            not_ready.append("a shard being removed still owns slots")
        else:
            for node_id in sorted(leaving_ids):
                on = tuple(p for p, v in remaining.items() if v.node(node_id) is not None)
                if on:
                    steps.append(Forget(node_id, a.pod_by_id.get(node_id), on, "its shard is being removed"))
            for pod in a.leaving:
                view = a.reachable.get(pod)
                if view is not None and not view.alone:
                    steps.append(Reset(pod))
            if not steps and not unreachable:
                released = list(a.leaving_shards)
        if steps:
            return Plan(steps=steps, reason="ScalingIn", available=available, wait=True, shards=views, roles=roles,
                        message=f"removing shards {a.leaving_shards}: forgetting their nodes")

    # 8. report
    covered = len(a.claimed()) == SLOTS

    def owners(view: cl.NodeView) -> dict[str, tuple[tuple[int, int], ...]]:
        return {n.id: n.slots for n in view.nodes if n.is_master and n.slots}

    # every node has converged on the same slot map and says the cluster is ok
    agreed = all(owners(v) == owners(anchor_view) and v.state == "ok" for v in a.reachable.values())
    complete = all(len(by_index[i].replicas) >= obs.replicas_per_shard and by_index[i].in_sync >= obs.replicas_per_shard
                   for i in range(obs.shards))
    healthy = (calm and covered and agreed and complete and not unreachable and not problems
               and not a.leaving_shards and not moves)
    message = _summary(a, views)
    if problems or not_ready:
        message = f"{message}; " + "; ".join(problems + not_ready)
    if healthy:
        reason = "Healthy"
    elif released:
        reason = "ShardRemoved"
    elif not available:
        reason = "ClusterDown"
    elif unreachable:
        reason = "WaitingForPods"  # e.g. the pods of a new shard are starting
    else:
        reason = "Degraded"
    return Plan(steps=[], reason=reason, message=message, available=available, wait=not healthy,
                healthy=healthy, shards=[v for v in views if not (released and v.index in released)],
                released=released, roles=roles)


# ---------------------------------------------------------------------------------------------
# Execution


class ClusterTopology:
    """Observes the nodes of a cluster-mode resource, executes the plan, reports."""

    def __init__(self, addresses: Addresses, *, timeout: float = 2.0, migrate_timeout: float = 60.0,
                 reshard_budget: float = 20.0, batch_slots: int = 256, reshard: bool = True,
                 hook: cl.Hook | None = None, resolve: Callable[[str], str] = cl.resolve) -> None:
        self.addresses = addresses
        self.timeout = timeout
        self.migrate_timeout = migrate_timeout
        self.reshard_budget = reshard_budget
        self.batch_slots = batch_slots
        self.reshard = reshard
        self.hook = hook
        self.resolve = resolve
        self._plain = OwnerConnections(addresses, lambda pw: cl.Connections(pw, timeout=timeout))
        self._raw = OwnerConnections(addresses, lambda pw: cl.RawConnections(pw, timeout=migrate_timeout))
        # per resource: the blocked slot moves last reported, so that the Warning Event is sent once per
        # new finding, not once per pass (the Ready condition says it on every pass)
        self._blocked: dict[str, frozenset[tuple[int, bytes]]] = {}

    def connections(self, owner: Owner, password: str | None) -> tuple[cl.Connections, cl.RawConnections]:
        return self._plain.get(owner, password), self._raw.get(owner, password)

    def forget(self, owner: Owner) -> None:
        self._plain.forget(owner)
        self._raw.forget(owner)
        self._blocked.pop(OwnerConnections.key(owner), None)

    def close(self) -> None:
        self._plain.close()
        self._raw.close()
        self._blocked.clear()

    # -- observe ------------------------------------------------------------------------------
    def observe(self, spec: RedisMessagingSpec, owner: Owner, pods: list[dict[str, Any]],
                conns: cl.Connections) -> Observation:
        shards, per = spec.cluster.shards, spec.cluster.replicas_per_shard
        members: dict[str, tuple[int, int]] = {
            owner.shard_pod(i, j): (i, j) for i in range(shards) for j in range(1 + per)}
        for item in pods:  # pods of shards being removed, as Kubernetes knows them
            where = owner.shard_of_pod(item.get("metadata", {}).get("name", ""))
            if where is not None and where[0] >= shards:
                members[owner.shard_pod(*where)] = where
        views = self._observe_all(owner, conns, list(members))

        def pod_of(host: str) -> str | None:
            return self.addresses.pod_of(owner, host)

        # ... and as the cluster knows them (a pod list may lag behind, or not be given at all).
        more: list[str] = []
        for view in list(views.values()):
            for node in view.nodes:
                pod = pod_of(node.hostname) if node.hostname else None
                where = owner.shard_of_pod(pod) if pod else None
                if pod and where is not None and where[0] >= shards and pod not in members:
                    members[pod] = where
                    more.append(pod)
        views.update(self._observe_all(owner, conns, more))
        slot_keys = self._count_open_slots(owner, conns, views)
        ips: dict[str, str] = {}
        ports: dict[str, int] = {}
        for pod, view in views.items():
            if view.reachable:
                host, port = self.addresses.redis(owner, pod)
                ports[pod] = port
                try:
                    ips[pod] = self.resolve(host)
                except OSError as exc:
                    log.info("%s: %s does not resolve: %s", pod, host, exc)
        return Observation(
            views=views, members=members, shards=shards, replicas_per_shard=per,
            min_good_replicas=config.min_replicas_to_write(spec, 1 + per),
            pod_of=pod_of, ips=ips, ports=ports, slot_keys=slot_keys,
        )

    def _count_open_slots(self, owner: Owner, conns: cl.Connections,
                          views: dict[str, cl.NodeView]) -> dict[str, dict[int, int]]:
        """Keys of every open slot on every reachable node, replicas included (one pipeline each,
        concurrently): what the plan needs to never close a move whose target shard holds keys. Nothing
        is sent when no slot is open."""
        answering = {p: v for p, v in views.items() if v.reachable and v.myself is not None}
        slots = sorted({slot for v in answering.values() if v.myself is not None
                        for slot, _ in (*v.myself.migrating, *v.myself.importing)})
        if not slots:
            return {}
        pods = list(answering)
        with ThreadPoolExecutor(max_workers=min(16, len(pods)), thread_name_prefix="cluster-count") as pool:
            counts = pool.map(lambda p: cl.count_keys(conns, self.addresses.redis(owner, p), slots), pods)
            return {p: c for p, c in zip(pods, counts, strict=True) if c is not None}

    def _observe_all(self, owner: Owner, conns: cl.Connections, pods: list[str]) -> dict[str, cl.NodeView]:
        """Every pod's view, observed concurrently: an unreachable pod costs one timeout, not one each."""
        if not pods:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(pods)), thread_name_prefix="cluster-observe") as pool:
            views = pool.map(lambda p: cl.observe(conns, self.addresses.redis(owner, p)), pods)
            return dict(zip(pods, views, strict=True))

    # -- check and heal -----------------------------------------------------------------------
    def check_and_heal(self, spec: RedisMessagingSpec, owner: Owner, pods: list[dict[str, Any]],
                       password: str | None) -> TopologyReport:
        conns, raw = self.connections(owner, password)
        obs = self.observe(spec, owner, pods, conns)
        result = plan(obs, reshard=self.reshard)
        actions: list[Action] = []
        failed: list[str] = []
        waiting: list[str] = []
        wait_for: float | None = None
        blocked: list[Blocked] = []
        deadline = time.monotonic() + self.reshard_budget
        atomic = spec.cluster.slot_migration == "Auto" and atomic_capable(obs)
        target_side_open = False  # a Stabilize of an importing side failed: no source is closed after it
        for step in result.steps:
            if isinstance(step, Stabilize) and step.guard and target_side_open:
                failed.append(f"{_describe_step(step)}: not closed, as its target side is still open")
                continue
            try:
                action = self._execute(step, owner, obs, conns, raw, deadline, blocked, atomic=atomic)
            except cl.MigrationWaiting as exc:  # no failure: said, and the pass comes back when it is time
                waiting.append(f"{_describe_step(step)}: {exc}")
                wait_for = exc.retry_after
                break  # later moves may depend on this one's slots
            except Exception as exc:  # report and retry on the next pass; never crash the pass
                failed.append(f"{_describe_step(step)}: {type(exc).__name__}: {exc}")
                if isinstance(step, Move):
                    break  # later moves may depend on this one's slots
                target_side_open |= isinstance(step, Stabilize) and not step.guard
                continue
            if action is not None:
                actions.append(action)
        message = result.message
        if waiting:
            message = f"{message}; waiting: {'; '.join(waiting)}"
        if failed:
            message = f"{message}; failed: {'; '.join(failed)}"
        reason = result.reason if not failed else "HealingFailed"
        found = frozenset((b.slot, k) for b in blocked for k in b.keys)
        if blocked:
            said = "; ".join(b.describe() for b in blocked[:3])
            if len(blocked) > 3:
                said += f"; and {len(blocked) - 3} more slots ({format_ranges(cl.ranges(b.slot for b in blocked[3:]))})"
            reason, message = SLOT_MOVE_BLOCKED, f"{said}; {message}"
            if found != self._blocked.get(OwnerConnections.key(owner)):
                actions.append(Action(SLOT_MOVE_BLOCKED, said, warning=True))
        self._blocked[OwnerConnections.key(owner)] = found
        shards = [ShardStatus(name=owner.shard(s.index), master=s.master, replicas=list(s.replicas),
                              slots=format_ranges(s.slots)).model_dump(by_alias=True, exclude_none=True)
                  for s in result.shards]
        return TopologyReport(
            master=None,
            available=result.available,
            healthy=result.healthy and not failed and not blocked,
            reason=reason,
            message=message,
            actions=actions,
            status={"shards": shards, **engine_status(view.engine for view in obs.views.values())},
            labels={p: names.ROLE_MASTER if r == "master" else names.ROLE_REPLICA for p, r in result.roles.items()},
            retry_after=(BLOCKED_SECONDS if blocked and not failed else
                         max(WAIT_SECONDS, wait_for) if wait_for is not None and not failed else
                         WAIT_SECONDS if (result.wait or result.steps or failed) else None),
            release=[owner.shard(i) for i in result.released],
        )

    def _endpoint(self, owner: Owner, obs: Observation, pod: str) -> cl.Endpoint:
        view = obs.views[pod]
        me = view.myself
        if me is None:
            raise cl.MigrationError(f"{pod} did not answer")
        ip = me.ip or obs.ips.get(pod, "")
        return cl.Endpoint(me.id, self.addresses.redis(owner, pod), ip, me.port or names.REDIS_PORT)

    def _execute(self, step: Step, owner: Owner, obs: Observation, conns: cl.Connections,
                 raw: cl.RawConnections, deadline: float, blocked: list[Blocked], *,
                 atomic: bool = False) -> Action | None:
        addr = self.addresses
        if isinstance(step, Meet):
            cl.meet(conns, addr.redis(owner, step.via), step.ip, step.port)
            if step.rejoin:
                return Action("NodeRejoined", f"{step.pod} met again at its new address {step.ip}")
            return Action("NodeJoined", f"{step.pod} joined the cluster")
        if isinstance(step, AddSlots):
            cl.add_slots(conns, addr.redis(owner, step.pod), step.slots)
            count = sum(e - b + 1 for b, e in step.slots)
            if step.bootstrap:
                return Action("SlotsAssigned", f"shard {step.shard} ({step.pod}) serves {count} slots "
                              f"{format_ranges(step.slots)}")
            if step.imported:
                return Action("SlotCoverageFixed", f"{count} slots whose migration source is gone "
                              f"({format_ranges(step.slots)}) are now served by shard {step.shard} ({step.pod}), "
                              "which was importing them: it holds the keys moved so far; keys not moved "
                              "before the source was lost are gone", warning=True)
            return Action("SlotCoverageFixed", f"{count} slots no node served ({format_ranges(step.slots)}) "
                          f"are now served by shard {step.shard} ({step.pod}); their data was lost", warning=True)
        if isinstance(step, Replicate):
            cl.replicate(conns, addr.redis(owner, step.pod), step.master_id)
            return Action("ReplicaAttached", f"{step.pod} now replicates {step.master}")
        if isinstance(step, Forget):
            forgotten = [p for p in step.on if cl.forget(conns, addr.redis(owner, p), step.node_id)]
            if not forgotten:
                return None
            return Action("NodeForgotten", f"node {step.node_id[:8]} ({step.pod or 'unknown pod'}) forgotten on "
                          f"{len(forgotten)} nodes: {step.why}")
        if isinstance(step, Reset):
            cl.reset(conns, addr.redis(owner, step.pod))
            return Action("NodeReset", f"{step.pod} left the cluster (its shard is being removed)")
        if isinstance(step, Stabilize):
            for pod in step.guard:  # counted again: a key may have arrived since the observation
                counts = cl.count_keys(conns, addr.redis(owner, pod), step.slots)
                if counts is None or any(counts.values()):
                    why = "does not answer" if counts is None else "holds keys of them now"
                    raise cl.MigrationError(f"not closed: {pod} {why}")
            cl.stabilize(conns, addr.redis(owner, step.pod), step.slots)
            return Action("SlotsStabilized", f"{len(step.slots)} open slots ({format_ranges(cl.ranges(step.slots))}) "
                          f"on {step.pod} closed: their migration cannot go on and no node of their target shard "
                          "holds a key of them", warning=True)
        if time.monotonic() > deadline:
            return None  # the next pass continues
        if step.only_if_empty:
            counts = cl.count_keys(conns, addr.redis(owner, step.source), step.slots)
            held = sum(counts.values()) if counts is not None else None
            if held != 0:
                raise cl.MigrationError(
                    f"{step.source} serves {len(step.slots)} slots ({format_ranges(cl.ranges(step.slots))}) "
                    f"that its shard's master does not, and " + ("does not answer" if held is None else
                    f"holds {held} keys of them") + "; it has no replica, so it takes no write "
                    "(min-replicas-to-write) and MIGRATE cannot move them: not moved automatically")
        source = self._endpoint(owner, obs, step.source)
        target = self._endpoint(owner, obs, step.target)
        by_engine = atomic and not step.resume  # half-moved slots are finished key by key
        if by_engine or has_atomic_slot_migration(obs.views[step.source].engine):
            # The engine's own move; or, before a key-by-key one, a job of the engine found running on the
            # source (started before the resource chose KeyByKey): it is followed to its end first.
            engine_mover = cl.AtomicMover(raw, hook=self.hook)
            if by_engine or engine_mover.running(source.address):
                return self._move_atomically(engine_mover, step, source, target, deadline)
        if has_atomic_slot_migration(obs.views[step.target].engine):
            importing = cl.AtomicMover(raw).importing(target.address)
            if importing:  # its marks would be refused, and mixing the two is never safe
                raise cl.MigrationWaiting(f"{step.target} takes slots in from an engine's migration "
                                          f"({importing[0].describe()}); the key-by-key move waits for it to end",
                                          retry_after=WAIT_SECONDS)
        others = [addr.redis(owner, p) for p, v in obs.views.items()
                  if v.reachable and v.myself is not None and v.myself.is_master
                  and p not in (step.source, step.target)]
        spread = any(replicates_setslot(obs.views[p].engine) for p in (step.source, step.target))
        mover = cl.SlotMover(raw, batch_slots=self.batch_slots, hook=self.hook,
                             setslot_connections=SETSLOT_CONNECTIONS if spread else 1)
        target_node = obs.views[step.target].myself
        first = 1 if target_node is not None and not target_node.slots else None  # a master serving nothing yet
        stats = mover.move(source, target, step.slots, others, deadline=deadline, first_batch=first)
        blocked += [Blocked(slot, keys, step.source, step.target, step.source_shard, step.target_shard)
                    for slot, keys in sorted(stats.blocked.items())]
        if not stats.slots:
            return None
        verb = "finished moving" if step.resume else "moved"
        left = len(step.slots) - stats.slots - len(stats.blocked)
        more = (f" ({left} left for the next pass)" if left else "") + (
            f" ({len(stats.blocked)} stopped: keys on both sides)" if stats.blocked else "")
        return Action("SlotsMigrated", f"{verb} {stats.slots} slots and {stats.keys} keys from shard "
                      f"{step.source_shard} ({step.source}) to shard {step.target_shard} ({step.target}) in "
                      f"{stats.seconds:.2f}s{more}")

    def _move_atomically(self, mover: cl.AtomicMover, step: Move, source: cl.Endpoint, target: cl.Endpoint,
                         deadline: float) -> Action | None:
        stats = mover.move(source, target, step.slots, deadline=deadline)
        if stats.followed:
            if stats.running:
                return None  # still running: the next pass follows it
            to = (f"shard {step.target_shard} ({step.target})" if stats.target == target.id
                  else f"node {stats.target[:8]}")
            return Action("SlotsMigrated", f"moved {stats.slots} slots from shard {step.source_shard} "
                          f"({step.source}) to {to}, atomically: the engine's migration {stats.job[:8]}, found "
                          "running, ended")
        if stats.running:
            return Action("SlotMigrationStarted", f"the engine moves {len(step.slots)} slots "
                          f"({format_ranges(cl.ranges(step.slots))}) and {stats.keys} keys from shard "
                          f"{step.source_shard} ({step.source}) to shard {step.target_shard} ({step.target}) "
                          f"atomically (migration {stats.job[:8]}); the next passes follow it")
        return Action("SlotsMigrated", f"moved {stats.slots} slots and {stats.keys} keys from shard "
                      f"{step.source_shard} ({step.source}) to shard {step.target_shard} ({step.target}) in "
                      f"{stats.seconds:.2f}s, atomically (the engine's migration {stats.job[:8]})")


def atomic_capable(obs: Observation) -> bool:
    """Every node of the resource answers and runs an engine that moves slots atomically: a job's data
    is replicated to the target's replicas by the engine, so an older replica must not be among them."""
    return bool(obs.views) and all(v.reachable and has_atomic_slot_migration(v.engine) for v in obs.views.values())


@dataclass(frozen=True)
class Blocked:
    """A slot whose move stopped because keys of it exist on both sides (MIGRATE said BUSYKEY)."""

    slot: int
    keys: tuple[bytes, ...]
    source: str
    target: str
    source_shard: int
    target_shard: int

    def describe(self) -> str:
        shown = ", ".join(repr(k.decode(errors="backslashreplace")) for k in self.keys[:3])
        more = f" and {len(self.keys) - 3} more" if len(self.keys) > 3 else ""
        one = len(self.keys) == 1
        return (f"slot {self.slot} cannot move from shard {self.source_shard} ({self.source}) to shard "
                f"{self.target_shard} ({self.target}): key{'' if one else 's'} {shown}{more} exist{'s' if one else ''} "
                f"on both; the move is stopped so that neither value is overwritten (clients see the one on "
                f"{self.source}). Keep one: delete the other copy (on {self.target}: ASKING, then DEL), and "
                "the next pass finishes the move")


def _describe_step(step: Step) -> str:
    if isinstance(step, Move):
        return f"moving {len(step.slots)} slots from {step.source} to {step.target}"
    return type(step).__name__ + " " + getattr(step, "pod", "")

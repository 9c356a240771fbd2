"""Cluster-mode topology: observe Redis Cluster nodes, and the commands that build, reshard and heal it.

Every function takes addresses (host, port) and a password; none knows about Kubernetes. A node is
observed in one pipelined round trip (``CLUSTER NODES``, ``CLUSTER INFO``, ``INFO replication server``,
``DBSIZE``). Nothing here decides anything: :mod:`redis_messaging.modes.cluster.topology` plans
from what these functions observe.

Moving slots (:class:`SlotMover`) follows the protocol of the Redis Cluster specification, batched:
for a batch of slots, ``CLUSTER SETSLOT <slot> IMPORTING`` on the target and ``MIGRATING`` on the
source (one pipeline each), then rounds of ``CLUSTER GETKEYSINSLOT`` and ``MIGRATE ... KEYS`` for every
slot of the batch in one pipeline per round, a check that no key is left (``COUNTKEYSINSLOT``), and
``CLUSTER SETSLOT <slot> NODE`` on the target, then the source, then every other master. Every step
can be repeated, so a batch interrupted anywhere is finished by running it again.

``MIGRATE`` runs without ``REPLACE``: a key that exists on both sides (``BUSYKEY``) is never overwritten.
That slot's move stops there, open, with both values kept (the source's is the one clients see), and
:attr:`MoveStats.blocked` names the slot and the keys, for a human to decide which value to keep.

Valkey 9 moves slots itself (:class:`AtomicMover`: ``CLUSTER MIGRATESLOTS``, followed with ``CLUSTER
GETSLOTMIGRATIONS``): all of a job's slots or none, and no mark is ever left open.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis.client import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from redis_messaging.redis.engine import Engine, engine_of
from redis_messaging.redis.sentinel import Connections
from redis_messaging.redis.tls import ClientTls

log = logging.getLogger(__name__)

Address = tuple[str, int]
SLOTS = 16384
BUS_PORT_OFFSET = 10000

__all__ = [
    "SLOTS", "Address", "AtomicMover", "ClusterNode", "Connections", "NodeView", "RawConnections", "SlotJob",
    "SlotMover", "add_slots", "count_keys", "forget", "format_ranges", "meet", "observe", "parse_nodes",
    "parse_slot_jobs", "ranges", "replicate", "reset", "resolve", "slot_of", "stabilize",
]


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key (CRC16 of the key or of its ``{hash tag}``, modulo 16384)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted slots as inclusive ``(start, end)`` ranges: ``[0, 1, 2, 7]`` -> ``[(0, 2), (7, 7)]``."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def format_ranges(slot_ranges: Sequence[tuple[int, int]]) -> str:
    """``[(0, 2), (7, 7)]`` -> ``0-2,7``: slot ranges as messages and the status show them."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in slot_ranges)


def _cmd(client: Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ResponseError) else f"{type(exc).__name__}: {exc}"


class RawConnections(Connections):
    """Clients that return bytes (keys may be any bytes), with a long timeout: for moving keys."""

    def __init__(self, password: str | None, *, timeout: float = 60.0, tls: ClientTls | None = None) -> None:
        super().__init__(password, timeout=timeout, decode=False, connect_timeout=min(timeout, 5.0), tls=tls)


def resolve(host: str) -> str:
    """The IP address of ``host`` (an IP is returned as is). ``CLUSTER MEET`` takes only addresses."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return str(info[4][0])
    raise OSError(f"{host} resolves to no address")


# ---------------------------------------------------------------------------------------------
# Observation


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``: a node as one observer sees it."""

    id: str
    ip: str
    port: int
    hostname: str
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    config_epoch: int
    slots: tuple[tuple[int, int], ...] = ()
    migrating: tuple[tuple[int, str], ...] = ()  # (slot, target id): only on the observer's own line
    importing: tuple[tuple[int, str], ...] = ()  # (slot, source id): only on the observer's own line

    @property
    def myself(self) -> bool:
        return "myself" in self.flags

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Agreed failing (``fail``), not only suspected (``fail?``)."""
        return "fail" in self.flags

    @property
    def suspected(self) -> bool:
        return "fail?" in self.flags

    @property
    def in_handshake(self) -> bool:
        return "handshake" in self.flags

    @property
    def no_address(self) -> bool:
        return "noaddr" in self.flags

    @property
    def slot_count(self) -> int:
        return sum(end - start + 1 for start, end in self.slots)

    def slot_set(self) -> set[int]:
        return {s for start, end in self.slots for s in range(start, end + 1)}


def _parse_address(text: str) -> tuple[str, int, str]:
    """``ip:port@cport[,hostname]`` -> (ip, port, hostname)."""
    endpoint, _, hostname = text.partition(",")
    hostport = endpoint.split("@", 1)[0]
    ip, _, port = hostport.rpartition(":")
    return ip.strip("[]"), int(port or 0), hostname


def parse_nodes(text: str) -> list[ClusterNode]:
    """Parse the reply of ``CLUSTER NODES``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        ip, port, hostname = _parse_address(parts[1])
        slots: list[tuple[int, int]] = []
        migrating: list[tuple[int, str]] = []
        importing: list[tuple[int, str]] = []
        for token in parts[8:]:
            if token.startswith("["):
                body = token.strip("[]")
                if "->-" in body:
                    slot, _, target = body.partition("->-")
                    migrating.append((int(slot), target))
                elif "-<-" in body:
                    slot, _, source = body.partition("-<-")
                    importing.append((int(slot), source))
                continue
            start, _, end = token.partition("-")
            slots.append((int(start), int(end or start)))
        out.append(ClusterNode(
            id=parts[0], ip=ip, port=port, hostname=hostname,
            flags=frozenset(f for f in parts[2].split(",") if f and f != "noflags"),
            master_id=None if parts[3] == "-" else parts[3],
            connected=parts[7] == "connected",
            config_epoch=int(parts[6]) if parts[6].isdigit() else 0,
            slots=tuple(slots), migrating=tuple(migrating), importing=tuple(importing),
        ))
    return out


def _info_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class NodeView:
    """What one cluster node says: its table of nodes, its cluster state, its replication link."""

    address: Address
    reachable: bool
    error: str = ""
    nodes: tuple[ClusterNode, ...] = ()
    state: str = ""  # cluster_state: ok | fail
    slots_assigned: int = 0  # cluster_slots_assigned
    current_epoch: int = 0
    link_up: bool = False  # a replica: master_link_status is up
    keys: int = 0
    engine: Engine | None = None  # what the process runs (INFO server)

    @property
    def myself(self) -> ClusterNode | None:
        return next((n for n in self.nodes if n.myself), None)

    @property
    def id(self) -> str | None:
        me = self.myself
        return me.id if me is not None else None

    def node(self, node_id: str) -> ClusterNode | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    @property
    def alone(self) -> bool:
        """Knows no other node: fresh (or reset), not part of any cluster."""
        return len(self.nodes) <= 1


def observe(conns: Connections, address: Address) -> NodeView:
    """One node's view, in one pipelined round trip; an unreachable or loading node says why."""
    try:
        pipe = conns.get(address).pipeline(transaction=False)
        pipe.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        pipe.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        pipe.execute_command("INFO", "replication", "server")  # type: ignore[no-untyped-call]
        pipe.execute_command("DBSIZE")  # type: ignore[no-untyped-call]
        nodes, info, replication, keys = pipe.execute(raise_on_error=True)
    except (RedisError, OSError) as exc:
        return NodeView(address, reachable=False, error=_describe(exc))
    fields = _info_fields(str(info))
    repl = replication if isinstance(replication, dict) else _info_fields(str(replication))
    return NodeView(
        address,
        reachable=True,
        nodes=tuple(parse_nodes(str(nodes))),
        state=fields.get("cluster_state", ""),
        slots_assigned=int(fields.get("cluster_slots_assigned", 0) or 0),
        current_epoch=int(fields.get("cluster_current_epoch", 0) or 0),
        link_up=str(repl.get("master_link_status", "")) == "up",
        keys=int(keys or 0),
        engine=engine_of(repl),
    )


def count_keys(conns: Connections, address: Address, slots: Sequence[int]) -> dict[int, int] | None:
    """How many keys the node at ``address`` holds in each of ``slots`` (``CLUSTER COUNTKEYSINSLOT``, one
    pipeline; a replica counts its own copy); None when it does not answer: the counts are unknown."""
    if not slots:
        return {}
    try:
        pipe = conns.get(address).pipeline(transaction=False)
        for slot in slots:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", str(slot))  # type: ignore[no-untyped-call]
        replies = pipe.execute(raise_on_error=True)
    except (RedisError, OSError) as exc:
        log.info("keys of open slots not counted on %s:%s: %s", *address, _describe(exc))
        return None
    return {slot: int(count) for slot, count in zip(slots, replies, strict=True)}


# ---------------------------------------------------------------------------------------------
# Commands


def meet(conns: Connections, address: Address, ip: str, port: int) -> None:
    """``CLUSTER MEET``: the node at ``address`` shakes hands with the node at ``ip:port``."""
    _cmd(conns.get(address), "CLUSTER", "MEET", ip, str(port), str(port + BUS_PORT_OFFSET))


def add_slots(conns: Connections, address: Address, slot_ranges: Sequence[tuple[int, int]]) -> None:
    """``CLUSTER ADDSLOTSRANGE``: only for slots no node of the cluster claims."""
    args: list[str] = []
    for start, end in slot_ranges:
        args += [str(start), str(end)]
    if args:
        _cmd(conns.get(address), "CLUSTER", "ADDSLOTSRANGE", *args)


def replicate(conns: Connections, address: Address, master_id: str) -> None:
    _cmd(conns.get(address), "CLUSTER", "REPLICATE", master_id)


def failover(conns: Connections, replica: Address) -> None:
    """``CLUSTER FAILOVER`` on a replica: coordinated with its master, which stops taking writes
    until the replica has caught up with it, so no acknowledged write is lost."""
    _cmd(conns.get(replica), "CLUSTER", "FAILOVER")


def forget(conns: Connections, address: Address, node_id: str) -> bool:
    """``CLUSTER FORGET``; False when the node did not know ``node_id`` (already forgotten)."""
    try:
        _cmd(conns.get(address), "CLUSTER", "FORGET", node_id)
    except ResponseError as exc:
        if "unknown node" in str(exc).lower():
            return False
        raise
    return True


def reset(conns: Connections, address: Address) -> None:
    """``CLUSTER RESET HARD``: the node forgets every other node and takes a new id (it must be empty)."""
    _cmd(conns.get(address), "CLUSTER", "RESET", "HARD")


def stabilize(conns: Connections, address: Address, slots: Sequence[int]) -> None:
    """``CLUSTER SETSLOT <slot> STABLE`` for every slot, in one pipeline: drop importing/migrating marks."""
    pipe = conns.get(address).pipeline(transaction=False)
    for slot in slots:
        pipe.execute_command("CLUSTER", "SETSLOT", str(slot), "STABLE")  # type: ignore[no-untyped-call]
    pipe.execute(raise_on_error=True)


def bump_epoch(conns: Connections, address: Address) -> None:
    _cmd(conns.get(address), "CLUSTER", "BUMPEPOCH")


# ---------------------------------------------------------------------------------------------
# Moving slots


class MigrationError(RuntimeError):
    """A batch could not finish; running it again continues where it stopped."""


@dataclass(frozen=True)
class Endpoint:
    """A master taking part in a move: where the operator reaches it, where the cluster reaches it."""

    id: str
    address: Address  # what the operator connects to
    cluster_ip: str  # what the source's MIGRATE connects to (the address the node announces)
    cluster_port: int


Hook = Callable[[str, Sequence[int]], None]
"""Called at each stage of a batch (``opened``, ``migrated``, ``target-assigned``, ``assigned``) with its slots; a test
raises from it to interrupt a migration at that exact point."""


@dataclass
class MoveStats:
    slots: int = 0  # slots moved and assigned to the target
    keys: int = 0
    batches: int = 0
    seconds: float = 0.0
    blocked: dict[int, tuple[bytes, ...]] = field(default_factory=dict)  # slot -> keys on both sides (BUSYKEY)


class SlotMover:
    """Moves slots between two masters in pipelined batches (see the module docstring)."""

    def __init__(self, raw: RawConnections, *, batch_slots: int = 256, keys_per_migrate: int = 1000,
                 migrate_timeout_ms: int = 30_000, max_rounds: int = 1000, hook: Hook | None = None,
                 epoch_wait: float = 5.0, setslot_connections: int = 1) -> None:
        self.raw = raw
        self.setslot_connections = setslot_connections
        self.epoch_wait = epoch_wait
        self.batch_slots = batch_slots
        self.keys_per_migrate = keys_per_migrate
        self.migrate_timeout_ms = migrate_timeout_ms
        self.max_rounds = max_rounds
        self.hook = hook

    def move(self, source: Endpoint, target: Endpoint, slots: Sequence[int], others: Sequence[Address] = (),
             *, deadline: float | None = None, first_batch: int | None = None) -> MoveStats:
        """Move ``slots`` (owned by ``source``, or half-moved to ``target``) batch by batch, until done
        or ``deadline`` (time.monotonic()) has passed at the end of a batch. ``others``: the other
        masters, told the new owner at once instead of by gossip. ``first_batch``: the size of the
        first batch (a new master is in no client's slot map until it serves a slot, and some clients
        cannot follow an ASK redirection to a node they do not know: one slot first keeps that window
        to a few milliseconds)."""
        stats = MoveStats()
        started = time.monotonic()
        todo = sorted(slots)
        batches = []
        if first_batch and todo:
            batches.append(todo[:first_batch])
            todo = todo[first_batch:]
        batches += [todo[i:i + self.batch_slots] for i in range(0, len(todo), self.batch_slots)]
        for batch in batches:
            if deadline is not None and time.monotonic() > deadline:
                break
            keys, blocked = self._move_batch(source, target, batch, others)
            stats.keys += keys
            stats.slots += len(batch) - len(blocked)
            stats.blocked.update(blocked)
            stats.batches += 1
        stats.seconds = time.monotonic() - started
        return stats

    def _stage(self, name: str, batch: Sequence[int]) -> None:
        if self.hook is not None:
            self.hook(name, batch)

    def _pipeline_all(self, address: Address, commands: Iterable[Sequence[Any]]) -> list[Any]:
        pipe = self.raw.get(address).pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)  # type: ignore[no-untyped-call]
        return list(pipe.execute(raise_on_error=False))

    def _setslot_all(self, address: Address, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """``CLUSTER SETSLOT`` commands, their replies in order. Valkey (8.0 and later) replicates each
        one to the node's replicas and answers only once they acknowledged it, one command after the
        other on a connection: there a batch is spread over ``setslot_connections`` connections, whose
        waits overlap (the commands are independent: each names another slot). Redis answers at once:
        one pipeline is fastest."""
        todo = list(commands)
        if self.setslot_connections <= 1 or len(todo) < 2 * self.setslot_connections:
            return self._pipeline_all(address, todo)
        size = -(-len(todo) // self.setslot_connections)
        parts = [todo[i:i + size] for i in range(0, len(todo), size)]
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="setslot") as pool:
            replies = list(pool.map(lambda part: self._pipeline_all(address, part), parts))
        return [reply for part in replies for reply in part]

    def _move_batch(self, source: Endpoint, target: Endpoint, batch: Sequence[int],
                    others: Sequence[Address]) -> tuple[int, dict[int, tuple[bytes, ...]]]:
        """Move one batch; the keys moved, and the slots stopped by a key on both sides (left open)."""
        # 1. open: the target imports, the source migrates. Repeating either is harmless; "already
        #    the owner" (target) or "not the owner" (source) means that side finished before.
        #    An importing target ignores a new master's claim of the slot (the source's replica that
        #    took over), then drops the slots of the old source when it hears it is a replica: the slot
        #    has no owner in its table, and it refuses every key sent (CLUSTERDOWN Hash slot not
        #    served). Such a target is told the source owns it first.
        unowned = self._owned_elsewhere(target, source, batch)
        if unowned:
            log.info("slots %s have no owner in %s's table; telling it %s owns them",
                     ranges(unowned), target.id[:8], source.id[:8])
            replies = self._setslot_all(target.address, (("CLUSTER", "SETSLOT", s, "NODE", source.id)
                                                          for s in unowned))
            _check(replies, unowned, "the source's ownership on the target")
        replies = self._setslot_all(target.address, (("CLUSTER", "SETSLOT", s, "IMPORTING", source.id)
                                                      for s in batch))
        _check(replies, batch, "importing on the target", ok=("already the owner",))
        replies = self._setslot_all(source.address, (("CLUSTER", "SETSLOT", s, "MIGRATING", target.id)
                                                      for s in batch))
        _check(replies, batch, "migrating on the source", ok=("not the owner",))
        self._stage("opened", batch)

        # 2. keys: rounds of GETKEYSINSLOT + MIGRATE for every slot still holding keys. Never REPLACE:
        #    a key the target holds already (BUSYKEY) stays where it is on both sides, and its slot stops.
        moved = 0
        blocked: dict[int, tuple[bytes, ...]] = {}
        pending = list(batch)
        auth = ["AUTH", self.raw.password] if self.raw.password is not None else []
        for _ in range(self.max_rounds):
            if not pending:
                break
            found = self._pipeline_all(source.address, (("CLUSTER", "GETKEYSINSLOT", s, self.keys_per_migrate)
                                                        for s in pending))
            commands = []
            with_keys: list[tuple[int, list[bytes]]] = []
            for slot, keys in zip(pending, found, strict=True):
                if isinstance(keys, Exception):
                    raise MigrationError(f"slot {slot}: keys not listed on the source: {_describe(keys)}")
                if keys:
                    with_keys.append((slot, list(keys)))
                    commands.append(("MIGRATE", target.cluster_ip, target.cluster_port, "", 0,
                                     self.migrate_timeout_ms, *auth, "KEYS", *keys))
            if not commands:
                break
            results = self._pipeline_all(source.address, commands)
            for (slot, keys), result in zip(with_keys, results, strict=True):
                if isinstance(result, Exception) and "BUSYKEY" in str(result):
                    # MIGRATE deleted on the source every key the target took; the ones left are busy.
                    blocked[slot] = self._busy_keys(source, target, keys)
                    moved += len(keys) - len(blocked[slot])
                    continue
                if isinstance(result, Exception) and "NOKEY" not in str(result):
                    raise MigrationError(f"slot {slot}: MIGRATE to {target.cluster_ip}:{target.cluster_port} "
                                         f"failed: {_describe(result)}")
                moved += len(keys)
            # A slot that gave fewer keys than asked is empty now: new keys of a migrating slot are
            # created on the target (ASK), and keys written meanwhile were moved by MIGRATE itself.
            pending = [slot for slot, keys in with_keys if len(keys) >= self.keys_per_migrate and slot not in blocked]
        else:
            raise MigrationError(f"slots {pending[:5]}... still hold keys after {self.max_rounds} rounds")
        done = [s for s in batch if s not in blocked]
        if blocked:
            log.warning("slots %s not moved from %s to %s: keys on both sides", sorted(blocked), source.id, target.id)
        if not done:
            return moved, blocked
        left = self._pipeline_all(source.address, (("CLUSTER", "COUNTKEYSINSLOT", s) for s in done))
        for slot, count in zip(done, left, strict=True):
            if isinstance(count, Exception) or int(count) != 0:
                raise MigrationError(f"slot {slot} still holds keys on the source ({count}); the next pass "
                                     "continues")
        self._stage("migrated", done)

        # 3. assign. The target's copies of the keys are safe while it imports the slot; once it owns the
        #    slot, a node claiming the slot with a higher config epoch makes them "dirty" and Redis
        #    deletes them. The source's replica is such a node if it wins an election before it heard
        #    of the move (slot marks and ownership are not replicated; a pre-stop hook fails a master
        #    over at any time). So the target first gets the highest config epoch and every master
        #    learns it, the other masters are told the new owner (from then on they refuse to vote for
        #    a replica claiming the slot for the source), the source is checked to be the master still,
        #    and only then the target takes the slot, then the source.
        self._outbid_source(source, target, others)
        for other in others:
            try:
                replies = self._setslot_all(other, (("CLUSTER", "SETSLOT", s, "NODE", target.id) for s in done))
            except (RedisError, OSError) as exc:  # it learns from gossip instead
                log.info("slots not announced to %s:%s directly: %s", *other, _describe(exc))
        role = self._pipeline_all(source.address, (("ROLE",),))[0]
        if isinstance(role, Exception) or not role or _text(role[0]) != "master":
            raise MigrationError(f"the source {source.id[:8]} is no longer a master (it failed over during the "
                                 "move); the slots stay open and the move resumes from the shard's new master")
        replies = self._setslot_all(target.address, (("CLUSTER", "SETSLOT", s, "NODE", target.id) for s in done))
        _check(replies, done, "assignment on the target")
        self._stage("target-assigned", done)
        replies = self._setslot_all(source.address, (("CLUSTER", "SETSLOT", s, "NODE", target.id) for s in done))
        _check(replies, done, "assignment on the source")
        self._stage("assigned", done)
        return moved, blocked

    def _owned_elsewhere(self, target: Endpoint, source: Endpoint, batch: Sequence[int]) -> list[int]:
        """The slots of ``batch`` that no master owns in the target's table (a slot another master owns
        there is left as it is: the target accepts the keys of a slot it imports whoever owns it)."""
        reply = self._pipeline_all(target.address, (("CLUSTER", "NODES"),))[0]
        if isinstance(reply, Exception):
            raise MigrationError(f"the target's table not read: {_describe(reply)}")
        owned: set[int] = set()
        for node in parse_nodes(_text(reply)):
            if node.is_master:
                owned |= node.slot_set()
        return [s for s in batch if s not in owned]

    def _outbid_source(self, source: Endpoint, target: Endpoint, others: Sequence[Address]) -> None:
        """Give the target the cluster's highest config epoch (``CLUSTER BUMPEPOCH``: it still imports,
        nothing it holds is at stake) and wait, bounded, until the source and every other master that
        answers knows it. Past the bound the batch fails with its slots still open (safe)."""
        reply = self._pipeline_all(target.address, (("CLUSTER", "BUMPEPOCH"),))[0]
        if isinstance(reply, Exception):
            raise MigrationError(f"the target's config epoch not raised: {_describe(reply)}")
        epoch = int(_text(reply).split()[-1])
        deadline = time.monotonic() + self.epoch_wait
        waiting = [source.address, *others]
        while True:
            behind = []
            for address in waiting:
                try:
                    text = _text(self._pipeline_all(address, (("CLUSTER", "NODES"),))[0])
                except (RedisError, OSError):
                    continue  # a master the operator cannot reach; it learns by gossip
                seen = next((n.config_epoch for n in parse_nodes(text) if n.id == target.id), 0)
                if seen < epoch:
                    behind.append(address)
            if not behind:
                return
            if time.monotonic() > deadline:
                raise MigrationError(f"config epoch {epoch} of the target {target.id[:8]} not known to "
                                     f"{len(behind)} master(s) within {self.epoch_wait:g}s; the next pass continues")
            waiting = behind
            time.sleep(0.02)

    def _busy_keys(self, source: Endpoint, target: Endpoint, keys: Sequence[bytes]) -> tuple[bytes, ...]:
        """The keys of a MIGRATE refused with BUSYKEY that are still on the source and also on the target
        (asked with ASKING: the target does not serve the slot yet)."""
        left = self._pipeline_all(source.address, (("EXISTS", k) for k in keys))
        still = [k for k, n in zip(keys, left, strict=True) if not isinstance(n, Exception) and int(n)]
        pipe = self.raw.get(target.address).pipeline(transaction=False)
        for key in still:
            pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
            pipe.execute_command("EXISTS", key)  # type: ignore[no-untyped-call]
        there = list(pipe.execute(raise_on_error=False))[1::2] if still else []
        both = tuple(k for k, n in zip(still, there, strict=True) if not isinstance(n, Exception) and int(n))
        return both or tuple(still)


def _check(replies: Sequence[Any], batch: Sequence[int], what: str, ok: tuple[str, ...] = ()) -> None:
    for slot, reply in zip(batch, replies, strict=True):
        if isinstance(reply, Exception) and not any(text in str(reply) for text in ok):
            raise MigrationError(f"slot {slot}: {what} refused: {_describe(reply)}")


# ---------------------------------------------------------------------------------------------
# Moving slots atomically (Valkey 9: CLUSTER MIGRATESLOTS)

JOB_FINISHED = frozenset({"success", "failed", "cancelled", "canceled"})
JOB_FAILED = frozenset({"failed", "cancelled", "canceled"})


@dataclass(frozen=True)
class SlotJob:
    """One atomic slot migration, as ``CLUSTER GETSLOTMIGRATIONS`` lists it (on its source: EXPORT; on
    its target: IMPORT)."""

    name: str
    operation: str  # EXPORT | IMPORT
    slots: tuple[tuple[int, int], ...]
    source: str  # node ids
    target: str
    state: str
    message: str = ""
    created: int = 0  # unix seconds, the node's clock
    updated: int = 0

    @property
    def finished(self) -> bool:
        return self.state in JOB_FINISHED

    @property
    def failed(self) -> bool:
        return self.state in JOB_FAILED

    def slot_set(self) -> set[int]:
        return {s for start, end in self.slots for s in range(start, end + 1)}

    def describe(self) -> str:
        return (f"{'moving' if not self.finished else 'move of'} slots {format_ranges(self.slots)} from "
                f"{self.source[:8]} to {self.target[:8]} ({self.state}{': ' + self.message if self.message else ''})")


def parse_slot_jobs(reply: Any) -> list[SlotJob]:
    """The jobs of a ``CLUSTER GETSLOTMIGRATIONS`` reply: a list of flat field/value lists (RESP2) or of
    maps (RESP3)."""
    jobs = []
    for item in reply or ():
        if isinstance(item, dict):
            fields = {_text(k): v for k, v in item.items()}
        else:
            flat = list(item)
            fields = {_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
        slot_ranges = []
        for part in _text(fields.get("slot_ranges", "")).replace(" ", ",").split(","):
            if part:
                start, _, end = part.partition("-")
                slot_ranges.append((int(start), int(end or start)))
        jobs.append(SlotJob(
            name=_text(fields.get("name", "")),
            operation=_text(fields.get("operation", "")).upper(),
            slots=tuple(slot_ranges),
            source=_text(fields.get("source_node", "")),
            target=_text(fields.get("target_node", "")),
            state=_text(fields.get("state", "")).lower(),
            message=_text(fields.get("message", "")),
            created=int(_text(fields.get("create_time", 0)) or 0),
            updated=int(_text(fields.get("last_update_time", 0)) or 0),
        ))
    return jobs


def unfinished_exports(jobs: Iterable[SlotJob]) -> list[SlotJob]:
    return [j for j in jobs if j.operation == "EXPORT" and not j.finished]


class MigrationWaiting(MigrationError):
    """A move that must wait (a back-off after failures, a job of the engine running elsewhere): no
    failure of the pass; the next comes back after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class AtomicStats:
    slots: int = 0  # slots the target owns now
    keys: int = 0  # the keys they held on the source when the job started (not known for a followed job)
    seconds: float = 0.0
    job: str = ""
    target: str = ""  # the node id the job moves slots to
    followed: bool = False  # a job found running (an earlier pass, or another operator process, started it)
    running: bool = False  # still running at the deadline: the next pass follows it


class AtomicMover:
    """Moves slots with the engine's atomic slot migration: ``CLUSTER MIGRATESLOTS`` on the source, then
    ``CLUSTER GETSLOTMIGRATIONS`` polled until the job ends.

    The engine does the whole move: it sends the slots' keys to the target (a snapshot, then the writes
    that follow), pauses writes on the source for the last bytes, and the target takes the slots with a
    new config epoch. A job that fails or is cancelled leaves every slot on the source with all its keys,
    and the target deletes what it had received. So there is no half-moved state to finish: a job is
    started again from the beginning. The engine keeps a record of its jobs, so an operator restarted
    mid-job finds the job and follows it instead of starting another, and a failed job is retried after a
    back-off counted from its end on the source's clock, not at every pass (each attempt forks the
    source for its snapshot).

    The engine never gives up a job waiting for the source's writes to drain before its pause
    (``waiting-to-pause``: a steady write load can keep it there); such a job is cancelled after
    ``drain_limit`` seconds, which is safe in that state (the target has claimed nothing). A job is never
    cancelled once the pause began: the target may already own the slots.
    """

    CANCELLABLE = frozenset({"waiting-to-pause"})
    # Cancels the node's exports only if every unfinished one waits for its pause (CANCELSLOTMIGRATIONS
    # ends them all): one script, so that no job moves on between the look and the cancel. 1: cancelled.
    CANCEL_IF_WAITING = """
    local jobs = redis.call('CLUSTER', 'GETSLOTMIGRATIONS')
    for _, job in ipairs(jobs) do
      local fields = {}
      for i = 1, #job, 2 do fields[job[i]] = job[i + 1] end
      local state = fields['state']
      if fields['operation'] == 'EXPORT' and state ~= 'success' and state ~= 'failed' and state ~= 'cancelled'
          and state ~= 'waiting-to-pause' then
        return 0
      end
    end
    local done = redis.pcall('CLUSTER', 'CANCELSLOTMIGRATIONS')
    if type(done) == 'table' and done.err then return 0 end
    return 1
    """

    def __init__(self, raw: RawConnections, *, poll: float = 0.05, hook: Hook | None = None,
                 retry_after: tuple[float, float] = (5.0, 300.0), drain_limit: float = 120.0) -> None:
        self.raw = raw
        self.poll = poll
        self.hook = hook
        self.retry_after = retry_after  # (first, longest): doubled with each recent failure
        self.drain_limit = drain_limit

    def jobs(self, address: Address) -> tuple[list[SlotJob], int]:
        """Every job the node at ``address`` lists, and its clock (unix seconds)."""
        try:
            pipe = self.raw.get(address).pipeline(transaction=False)
            pipe.execute_command("CLUSTER", "GETSLOTMIGRATIONS")  # type: ignore[no-untyped-call]
            pipe.execute_command("TIME")  # type: ignore[no-untyped-call]
            reply, clock = pipe.execute(raise_on_error=True)
        except (RedisError, OSError) as exc:
            raise MigrationError(f"slot migrations not listed on {address[0]}:{address[1]}: {_describe(exc)}") from exc
        return parse_slot_jobs(reply), int(clock[0])

    def running(self, address: Address) -> list[SlotJob]:
        """The unfinished jobs the node at ``address`` runs as their source."""
        return unfinished_exports(self.jobs(address)[0])

    def importing(self, address: Address) -> list[SlotJob]:
        """The unfinished jobs the node at ``address`` takes slots in from another."""
        return [j for j in self.jobs(address)[0] if j.operation == "IMPORT" and not j.finished]

    def move(self, source: Endpoint, target: Endpoint, slots: Sequence[int], *, deadline: float) -> AtomicStats:
        """Move ``slots`` from ``source`` to ``target`` in one job, or follow the jobs ``source`` already
        runs (and start nothing: the plan was made before they end). Waits until the job ends or
        ``deadline`` (time.monotonic()) passes; a job that fails raises :class:`MigrationError` with the
        engine's reason."""
        started = time.monotonic()
        jobs, clock = self.jobs(source.address)
        running = unfinished_exports(jobs)
        if running:
            stats = self._wait(source, running, deadline)
            stats.followed = True
            stats.seconds = time.monotonic() - started
            return stats
        self._back_off(target, slots, jobs, clock)
        wanted = ranges(slots)
        keys = count_keys(self.raw, source.address, sorted(slots))
        args: list[Any] = ["CLUSTER", "MIGRATESLOTS", "SLOTSRANGE"]
        for start, end in wanted:
            args += [start, end]
        try:
            _cmd(self.raw.get(source.address), *args, "NODE", target.id)
        except (RedisError, OSError) as exc:
            raise MigrationError(f"slots {format_ranges(wanted)} not handed to the engine's migration: "
                                 f"{_describe(exc)}") from exc
        self._stage("started", slots)
        known = {j.name for j in jobs}
        mine = [j for j in self.jobs(source.address)[0] if j.name not in known and j.operation == "EXPORT"
                and j.target == target.id and j.slot_set() == set(slots)]
        if not mine:
            raise MigrationError(f"the migration of slots {format_ranges(wanted)} was accepted, but the source "
                                 "does not list it")
        stats = self._wait(source, mine[:1], deadline)
        stats.keys = sum(keys.values()) if keys else 0
        stats.seconds = time.monotonic() - started
        return stats

    def _stage(self, name: str, slots: Sequence[int]) -> None:
        if self.hook is not None:
            self.hook(name, slots)

    def _back_off(self, target: Endpoint, slots: Sequence[int], jobs: Sequence[SlotJob], clock: int) -> None:
        """Refuse to start again while the last failed attempts of these slots are too recent: the
        failures to this target since its last success with any of them, within the last hour, count."""
        wanted = set(slots)
        mine = sorted((j for j in jobs if j.operation == "EXPORT" and j.finished and j.target == target.id
                       and j.slot_set() & wanted and j.updated > clock - 3600), key=lambda j: j.updated)
        since = max((i for i, j in enumerate(mine) if not j.failed), default=-1)
        failed = mine[since + 1:]
        if not failed:
            return
        first, longest = self.retry_after
        wait = min(first * 2 ** (len(failed) - 1), longest)
        left = failed[-1].updated + wait - clock
        if left > 0:
            raise MigrationWaiting(
                f"the engine's migration of these slots failed {len(failed)} time(s) in a row, last: "
                f"{failed[-1].message or failed[-1].state}; the next attempt in {left:.0f}s", retry_after=left)

    def _wait(self, source: Endpoint, jobs: Sequence[SlotJob], deadline: float) -> AtomicStats:
        names = {j.name for j in jobs}
        while True:
            listed, clock = self.jobs(source.address)
            now = {j.name: j for j in listed if j.name in names}
            gone = names - now.keys()
            if gone:  # trimmed from the engine's bounded record already: the next pass observes
                raise MigrationError(f"migration {sorted(gone)[0][:8]} no longer listed on the source")
            stuck = [j for j in now.values() if j.state in self.CANCELLABLE and clock - j.updated > self.drain_limit]
            if stuck and self.cancel_if_waiting(source.address):
                raise MigrationError(
                    f"{stuck[0].describe()} for over {self.drain_limit:g}s: the source's writes to these slots "
                    "never drained to the target before the pause, so the migration was cancelled (nothing "
                    "moved; it is retried after a back-off). Under a steady write load, raise the engine's "
                    "slot-migration-max-failover-repl-bytes, or move slots key by key "
                    "(cluster.slotMigration: KeyByKey)")
            if all(j.finished for j in now.values()):
                failed = [j for j in now.values() if j.failed]
                if failed:
                    raise MigrationError("; ".join(j.describe() for j in failed) + "; every slot stays on the "
                                         "source, and the move starts again")
                moved = sorted(s for j in now.values() for s in j.slot_set())
                self._stage("assigned", moved)
                return AtomicStats(slots=len(moved), job=",".join(sorted(names)), target=jobs[0].target)
            if time.monotonic() > deadline:
                return AtomicStats(job=",".join(sorted(names)), target=jobs[0].target, running=True)
            time.sleep(self.poll)

    def cancel_if_waiting(self, address: Address) -> bool:
        """``CLUSTER CANCELSLOTMIGRATIONS`` on the node at ``address`` (every unfinished job it runs as
        the source ends, its slots staying there), only if every such job still waits for its pause,
        checked and done in one script: a job past its pause may have handed its slots over already.
        False: not cancelled (a job moved on meanwhile)."""
        try:
            return bool(_cmd(self.raw.get(address), "EVAL", self.CANCEL_IF_WAITING, 0))
        except (RedisError, OSError) as exc:
            raise MigrationError(f"a stuck migration not cancelled on {address[0]}:{address[1]}: "
                                 f"{_describe(exc)}") from exc

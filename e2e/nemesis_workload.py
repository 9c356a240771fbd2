"""The nemesis harness's client: writes, stream entries and a consumer group, recording what Redis
acknowledged (e2e/nemesis.py starts it inside a client pod's network namespace).

It counts a write only when a replica has it: each batch is one pipeline on one connection,
``SET``s and ``XADD``s then ``WAIT 1 <ms>``, and a command of the batch is acknowledged when it
succeeded and ``WAIT`` answered at least 1 (``WAIT`` covers every earlier write of its connection).
A write that failed, or whose ``WAIT`` answered 0 or failed, is not counted: it may or may not
survive. Each acknowledgement is a JSON line of ``--out``, flushed at once.

Where it writes:

- sentinel mode: to the master a Sentinel names (the first that answers, as Sentinel clients do),
  after checking that it says it is a master; on any error it asks again;
- cluster mode: to the master that owns each key's slot (its own map from ``CLUSTER SLOTS``, a batch
  split by owner, ``WAIT`` on each owner's connection), following ``MOVED`` (the map is read again)
  and ``ASK`` (``ASKING`` on the target).

A consumer group (declared in the resource, created by the operator) is read at least once:
``XREADGROUP`` of its own pending entries, then of new ones, ``XAUTOCLAIM`` of entries idle on other
consumers, each delivered entry recorded before it is acknowledged (``XACK``). After an error it
goes on as a new consumer (``c<epoch>``), as a restarted consumer pod would, and claims the old one's
entries once they are idle. On SIGTERM it stops writing and drains: every acknowledged entry
delivered, nothing pending anywhere, the consumers of former epochs deleted once they hold nothing;
then it writes a final ``end`` line and exits (bounded by ``--drain-seconds``).

Names are resolved with the namespace's hosts file (``--hosts``; re-read when it changes), as the
pods resolve them. Every loop is bounded in count and time.

Lines of ``--out``: ``{"t": time, "w": [n, ...]}`` writes acknowledged (key ``<prefix>:<n>``, value
``n``), ``{"t", "x": [[id, n], ...]}`` entries acknowledged, ``{"t", "d": [id, ...]}`` entries
delivered, ``{"t", "g": [id, ...]}`` pending entries whose data is gone from the stream, ``{"t", "e": text}``
errors (each at most once a second), ``{"t", "m": host}`` the master changed (sentinel mode),
``{"t", "end": {...}}`` the drain's outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

WAIT_MS = 1000
CLAIM_IDLE_MS = 2000
TIMEOUT = 1.5  # socket timeout of every connection


class Hosts:
    """Names to IPs from a hosts file, read again when it changed (the local cluster rewrites it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._names: dict[str, str] = {}

    def resolve(self, name: str) -> str:
        try:
            socket.inet_aton(name)
            return name
        except OSError:
            pass
        try:
            st = self.path.stat()
            if (st.st_mtime_ns, st.st_ino) != self._stamp:
                names = {}
                for line in self.path.read_text().splitlines():
                    parts = line.split("#", 1)[0].split()
                    for alias in parts[1:]:
                        names[alias] = parts[0]
                self._names, self._stamp = names, (st.st_mtime_ns, st.st_ino)
        except OSError:
            pass
        found = self._names.get(name)
        if found is None:
            raise LookupError(f"{name} is not in {self.path}")
        return found


class Recorder:
    def __init__(self, path: Path) -> None:
        self.out = path.open("a", buffering=1)
        self._errors: dict[str, float] = {}

    def line(self, **fields: Any) -> None:
        self.out.write(json.dumps({"t": round(time.time(), 3), **fields}) + "\n")

    def error(self, where: str, exc: BaseException) -> None:
        text = f"{where}: {type(exc).__name__}: {exc}"[:300]
        key = text[:60]
        now = time.monotonic()
        if now - self._errors.get(key, 0.0) >= 1.0:  # the same error at most once a second
            self._errors[key] = now
            self.line(e=text)


def client(host: str, port: int, password: str | None) -> Redis:
    # No retries: a command is sent once, and what failed is simply not counted.
    return Redis(host=host, port=port, password=password, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                 decode_responses=True, retry=Retry(NoBackoff(), 0))


# --------------------------------------------------------------------------------------------------
# Where to write


class SentinelTarget:
    """The master the Sentinels name, asked again after any error."""

    def __init__(self, hosts: Hosts, sentinels: list[str], master_name: str, password: str | None,
                 rec: Recorder) -> None:
        self.hosts, self.sentinels, self.master_name, self.password, self.rec = (
            hosts, sentinels, master_name, password, rec)
        self.master: Redis | None = None
        self.master_host = ""
        self._next = 0

    def get(self) -> Redis | None:
        if self.master is not None:
            return self.master
        for i in range(len(self.sentinels)):
            s = self.sentinels[(self._next + i) % len(self.sentinels)]
            try:
                sentinel = client(self.hosts.resolve(s), 26379, self.password)
                try:
                    addr = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                finally:
                    sentinel.close()
                if not addr:
                    continue
                master = client(self.hosts.resolve(addr[0]), int(addr[1]), self.password)
                role = master.execute_command("ROLE")
                if role[0] != "master":
                    master.close()
                    continue
            except (RedisError, OSError, LookupError) as exc:
                self.rec.error(f"sentinel {s}", exc)
                continue
            self._next = (self._next + i) % len(self.sentinels)
            self.master = master
            if addr[0] != self.master_host:
                self.master_host = addr[0]
                self.rec.line(m=addr[0])
            return master
        return None

    def forget(self) -> None:
        if self.master is not None:
            self.master.close()
        self.master = None
        self._next += 1  # ask another Sentinel first next time


class ClusterMap:
    """Which master serves each slot, from ``CLUSTER SLOTS`` of any node that answers."""

    def __init__(self, hosts: Hosts, seeds: list[str], password: str | None, rec: Recorder) -> None:
        self.hosts, self.seeds, self.password, self.rec = hosts, seeds, password, rec
        self.slots: list[str | None] = [None] * 16384
        self.nodes: dict[str, Redis] = {}
        self._read_at = 0.0

    def node(self, address: str) -> Redis:
        found = self.nodes.get(address)
        if found is None:
            host, port = address.rsplit(":", 1)
            found = self.nodes[address] = client(self.hosts.resolve(host), int(port), self.password)
        return found

    def drop(self, address: str) -> None:
        found = self.nodes.pop(address, None)
        if found is not None:
            found.close()

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._read_at < 0.2:
            return
        self._read_at = time.monotonic()
        known = list(dict.fromkeys([*(a for a in self.slots if a), *(f"{s}:6379" for s in self.seeds)]))
        for address in known:
            try:
                reply = self.node(address).execute_command("CLUSTER", "SLOTS")
            except (RedisError, OSError, LookupError) as exc:
                self.rec.error(f"cluster slots from {address}", exc)
                self.drop(address)
                continue
            slots: list[str | None] = [None] * 16384
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                host = master[0] if master[0] and master[0] != "?" else (master[3] or {}).get("ip", "")
                for slot in range(start, end + 1):
                    slots[slot] = f"{host}:{master[1]}"
            self.slots = slots
            return

    def owner(self, key: str) -> str | None:
        return self.slots[key_slot(key.encode())]


# --------------------------------------------------------------------------------------------------
# The workload


class Workload:
    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args = args
        self.rec = rec
        password = os.environ.get("RMSG_NEMESIS_PASSWORD") or None
        hosts = Hosts(Path(args.hosts))
        self.sentinel = (SentinelTarget(hosts, args.sentinels.split(","), args.master_name, password, rec)
                         if args.mode == "sentinel" else None)
        self.cluster = ClusterMap(hosts, args.seeds.split(","), password, rec) if args.mode == "cluster" else None
        self.n = 0  # the last write number used
        self.m = 0  # the last entry number used
        self.acked_entries: set[str] = set()
        self.delivered: set[str] = set()
        self.epoch = 0
        self.consumers_used: list[str] = [self.consumer]
        self.last_claim = 0.0
        self.claim_cursor = "0-0"
        self.stopping = False
        self.asked = 0  # writes and entries acknowledged on the target of a slot being moved (ASK)

    @property
    def consumer(self) -> str:
        return f"c{self.epoch}"

    def key(self, n: int) -> str:
        return f"{self.args.prefix}:{n}"

    # ---- writing ---------------------------------------------------------------------------------

    def write_batch(self) -> None:
        keys = list(range(self.n + 1, self.n + 1 + self.args.batch))
        entries = list(range(self.m + 1, self.m + 1 + self.args.entries))
        self.n += len(keys)
        self.m += len(entries)
        if self.sentinel is not None:
            master = self.sentinel.get()
            if master is None:
                return
            if not self._pipeline(master, keys, entries, asking=False):
                self.sentinel.forget()
            return
        assert self.cluster is not None
        if not any(self.cluster.slots):
            self.cluster.refresh(force=True)
        by_node: dict[str, tuple[list[int], list[int]]] = {}
        for n in keys:
            owner = self.cluster.owner(self.key(n))
            if owner:
                by_node.setdefault(owner, ([], []))[0].append(n)
        stream_owner = self.cluster.owner(self.args.stream)
        if stream_owner and entries:
            by_node.setdefault(stream_owner, ([], []))[1].extend(entries)
        for address, (ks, es) in by_node.items():
            try:
                node = self.cluster.node(address)
            except LookupError as exc:
                self.rec.error(f"node {address}", exc)
                self.cluster.refresh()
                continue
            if not self._pipeline(node, ks, es, asking=False, address=address):
                self.cluster.drop(address)
                self.cluster.refresh()

    def _pipeline(self, conn: Redis, keys: list[int], entries: list[int], *, asking: bool,
                  address: str = "") -> bool:
        """One pipeline: the writes, then WAIT 1; what a replica acknowledged is recorded. False when
        the connection failed or the node no longer serves as master."""
        pipe = conn.pipeline(transaction=False)
        for n in keys:
            if asking:
                pipe.execute_command("ASKING")
            pipe.set(self.key(n), str(n))
        for m in entries:
            if asking:
                pipe.execute_command("ASKING")
            pipe.xadd(self.args.stream, {"n": str(m)})
        pipe.execute_command("WAIT", 1, WAIT_MS)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self.rec.error(f"write {address or 'master'}", exc)
            return False
        if asking:  # drop the ASKING replies
            replies = [r for i, r in enumerate(replies[:-1]) if i % 2 == 1] + [replies[-1]]
        waited = replies[-1]
        ok_keys: list[int] = []
        ok_entries: list[list[Any]] = []
        redirects: list[tuple[str, str, int]] = []  # (ASK|MOVED, target, n or -m)
        healthy = True
        for i, reply in enumerate(replies[:-1]):
            number = keys[i] if i < len(keys) else -entries[i - len(keys)]
            if isinstance(reply, MovedError | AskError) and self.cluster is not None:
                redirects.append(("ASK" if isinstance(reply, AskError) else "MOVED", f"{reply.host}:{reply.port}",
                                  number))
                continue
            if isinstance(reply, Exception):
                self.rec.error(f"write {address or 'master'}", reply)
                # Not a master any more, not serving, or not accepting writes: ask again where to write.
                if (not isinstance(reply, ResponseError)
                        or isinstance(reply, ReadOnlyError | ClusterDownError | BusyLoadingError | TryAgainError)
                        or str(reply).startswith(("NOREPLICAS", "MASTERDOWN", "READONLY"))):
                    healthy = False
                continue
            if number > 0:
                ok_keys.append(number)
            else:
                ok_entries.append([reply, -number])
        if isinstance(waited, Exception):
            self.rec.error(f"wait {address or 'master'}", waited)
            return False
        if int(waited) >= 1:
            if asking:
                self.asked += len(ok_keys) + len(ok_entries)
            if ok_keys:
                self.rec.line(w=ok_keys)
            if ok_entries:
                self.rec.line(x=ok_entries)
                self.acked_entries.update(e[0] for e in ok_entries)
        if redirects and self.cluster is not None:
            self._redirected(redirects)
        return healthy

    def _redirected(self, redirects: list[tuple[str, str, int]]) -> None:
        """MOVED: read the map again (the writes come back in later batches under new numbers);
        ASK: the same writes on the target, with ASKING, once."""
        assert self.cluster is not None
        asks: dict[str, tuple[list[int], list[int]]] = {}
        for kind, target, number in redirects:
            if kind == "MOVED":
                self.cluster.refresh()
                continue
            group = asks.setdefault(target, ([], []))
            (group[0] if number > 0 else group[1]).append(abs(number))
        for target, (ks, es) in asks.items():
            try:
                node = self.cluster.node(target)
            except LookupError as exc:
                self.rec.error(f"ask {target}", exc)
                continue
            if not self._pipeline(node, ks, es, asking=True, address=target):
                self.cluster.drop(target)

    # ---- consuming -------------------------------------------------------------------------------

    def _stream_node(self) -> tuple[Redis | None, str]:
        if self.sentinel is not None:
            return self.sentinel.get(), "master"
        assert self.cluster is not None
        owner = self.cluster.owner(self.args.stream)
        if owner is None:
            self.cluster.refresh()
            return None, ""
        try:
            return self.cluster.node(owner), owner
        except LookupError as exc:
            self.rec.error(f"node {owner}", exc)
            return None, owner

    def _failed(self, where: str, exc: BaseException) -> None:
        self.rec.error(where, exc)
        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
            return  # not created yet (the operator creates it): same consumer, later
        if isinstance(exc, MovedError) and self.cluster is not None:
            self.cluster.refresh()  # the stream's slot moved: the same consumer, on its new master
            return
        if self.sentinel is not None:
            self.sentinel.forget()
        elif self.cluster is not None:
            self.cluster.refresh()
        if self.epoch < 50:  # a new consumer, as a restarted consumer pod is
            self.epoch += 1
            self.consumers_used.append(self.consumer)

    def consume(self, *, claim_idle_ms: int = CLAIM_IDLE_MS) -> int:
        """One round; the number of entries delivered."""
        conn, where = self._stream_node()
        if conn is None:
            return 0
        stream, group = self.args.stream, self.args.group
        delivered: list[tuple[str, Any]] = []
        try:
            own: Any = conn.xreadgroup(group, self.consumer, {stream: "0"}, count=200)
            delivered += [e for _, entries in own for e in entries]
            if time.monotonic() - self.last_claim > 1.0 or claim_idle_ms == 0:
                self.last_claim = time.monotonic()
                claimed: Any = conn.xautoclaim(stream, group, self.consumer, claim_idle_ms, self.claim_cursor,
                                               count=200)
                self.claim_cursor = str(claimed[0])
                delivered += list(claimed[1])
            new: Any = conn.xreadgroup(group, self.consumer, {stream: ">"}, count=200)
            delivered += [e for _, entries in new for e in entries]
        except (RedisError, OSError) as exc:
            self._failed(f"consume {where}", exc)
            return 0
        ids = list(dict.fromkeys(entry_id for entry_id, fields in delivered if fields))
        # Pending entries whose data is gone from the stream: acknowledged so that they do not stay
        # pending for ever, but not delivered (the checker finds them missing from the stream).
        gone = list(dict.fromkeys(entry_id for entry_id, fields in delivered if not fields))
        if not ids and not gone:
            return 0
        if ids:
            self.rec.line(d=ids)  # processed (recorded) before it is acknowledged: at least once
            self.delivered.update(ids)
        if gone:
            self.rec.line(g=gone)
        try:
            conn.xack(stream, group, *ids, *gone)
        except (RedisError, OSError) as exc:
            self._failed(f"ack {where}", exc)
        return len(ids) + len(gone)

    def others_pending(self) -> dict[str, int] | None:
        conn, where = self._stream_node()
        if conn is None:
            return None
        try:
            consumers = conn.xinfo_consumers(self.args.stream, self.args.group)
        except (RedisError, OSError) as exc:
            self._failed(f"xinfo {where}", exc)
            return None
        return {c["name"]: int(c["pending"]) for c in consumers}

    def drain(self, deadline: float) -> dict[str, Any]:
        """Until every acknowledged entry was delivered and nothing is pending anywhere; then the
        consumers of former epochs (holding nothing) are deleted."""
        rounds = 0
        while time.monotonic() < deadline and rounds < 100_000:
            rounds += 1
            got = self.consume(claim_idle_ms=0)
            missing = self.acked_entries - self.delivered
            pending = self.others_pending()
            if not got and not missing and pending is not None and not any(pending.values()):
                conn, where = self._stream_node()
                try:
                    for name in pending:
                        if name != self.consumer and conn is not None:
                            conn.xgroup_delconsumer(self.args.stream, self.args.group, name)
                except (RedisError, OSError) as exc:
                    self._failed(f"delconsumer {where}", exc)
                    continue
                return {"drained": True, "missing": 0, "pending": {}}
            if not got:
                time.sleep(0.1)
        pending = self.others_pending() or {}
        return {"drained": False, "missing": len(self.acked_entries - self.delivered),
                "pending": {k: v for k, v in pending.items() if v}}

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        deadline = started + self.args.max_seconds
        rounds = 0
        while not self.stopping and time.monotonic() < deadline and self.n < self.args.max_writes:
            rounds += 1
            began = time.monotonic()
            self.write_batch()
            self.consume()
            time.sleep(max(0.0, self.args.interval - (time.monotonic() - began)))
        end = self.drain(time.monotonic() + self.args.drain_seconds)
        self.rec.line(end={**end, "consumer": self.consumer, "consumers": self.consumers_used,
                           "writes_tried": self.n, "entries_tried": self.m, "asked": self.asked, "rounds": rounds,
                           "seconds": round(time.monotonic() - started, 1)})
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("sentinel", "cluster"), required=True)
    parser.add_argument("--hosts", required=True, help="the namespace's hosts file")
    parser.add_argument("--out", required=True, help="where acknowledgements are recorded (JSON lines)")
    parser.add_argument("--sentinels", default="", help="sentinel mode: the Sentinels' host names, comma-separated")
    parser.add_argument("--master-name", default="", help="sentinel mode: the name Sentinel monitors")
    parser.add_argument("--seeds", default="", help="cluster mode: host names of nodes, comma-separated")
    parser.add_argument("--prefix", default="nemesis")
    parser.add_argument("--stream", default="nemesis")
    parser.add_argument("--group", default="nemesis")
    parser.add_argument("--batch", type=int, default=10, help="writes per batch")
    parser.add_argument("--entries", type=int, default=2, help="stream entries per batch")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between batches (at least)")
    parser.add_argument("--max-seconds", type=float, default=1200.0)
    parser.add_argument("--max-writes", type=int, default=2_000_000)
    parser.add_argument("--drain-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    rec = Recorder(Path(args.out))
    workload = Workload(args, rec)

    def stop(*_: Any) -> None:
        workload.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rec.line(start={"pid": os.getpid(), "mode": args.mode})
    return workload.run()


if __name__ == "__main__":
    sys.exit(main())


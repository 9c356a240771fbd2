"""The nemesis: faults drawn from a seed against a resource under load, on the local cluster, and a
proof at the end that nothing acknowledged was lost.

One run (:func:`run_seed`) of a mode (sentinel or cluster) and a seed:

1. a fresh resource in its own namespace (streams declared: the operator creates the consumer group),
   and a client pod; Ready;
2. the workload (e2e/nemesis_workload.py) inside the client pod's network namespace: writes counted
   only once ``WAIT 1`` says a replica has them, stream entries likewise, a consumer group read at
   least once. It runs in a pod of its own, because one fault cuts the operator off some pods: a
   workload sharing the operator's network would be cut with it;
3. the faults of the seed's :class:`Plan` (``random.Random(seed)``), one after the other, each held
   for its drawn time, then healed, then waited for: Ready again, the topology settled (one master
   that every replica follows and that the labels and ``status.master`` name; or every node agreeing
   on a cluster that covers every slot, with no open slot and each master's replicas linked), and the
   workload acknowledged again;
4. the workload stops writing and drains its consumer group; the checker then reads every Redis:
   each acknowledged write and entry on the master(s) and on every replica once in sync, every
   acknowledged entry delivered at least once, nothing pending on a consumer that no longer exists,
   the topology as above, and in cluster mode ``redis-cli --cluster check`` clean.

The faults (``FAULTS``; which kind comes first rotates with the seed, ``seed % len(menu)``, and a few
runs draw more):

- ``kill-redis``, ``stop-redis``: SIGKILL (the pod runner restarts it, as the kubelet does) or
  SIGSTOP..SIGCONT of a redis-server, the master or a replica;
- ``kill-sentinel``, ``stop-sentinel`` (sentinel mode): the same for a Sentinel, sometimes with the
  master killed meanwhile;
- ``kill-operator``, ``stop-operator``: the operator SIGKILLed (started again after the hold) or
  SIGSTOPped, sometimes with the master killed meanwhile;
- ``delete-pod``: a pod deleted (its pre-stop hook runs, the StatefulSet re-creates it);
- ``partition-pod``: a pod's veth taken off the bridge (nothing in or out, no reset), then put back;
- ``partition-operator``: the operator (its pod's network namespace) cut off a subset of the pods, both ways
  and silently (routes to a port-less bridge and strict reverse-path filtering; the pods still reach
  each other), sometimes with the master killed meanwhile;
- ``empty-volume``: a redis-server killed and kept down while its PersistentVolume's directory is
  emptied (AOF, RDB and in cluster mode nodes.conf gone), then restarted by the pod runner;
- ``rolling-update``: the image tag or a ``redis.config`` value changed (every pod rolls), and the
  master killed or deleted once some pods have been replaced;
- ``reshard`` (cluster mode): ``cluster.shards`` 3 -> 4 or 4 -> 3, and the source or target master
  of a slot being moved killed or deleted while the slot is open.

An upgrade run (``upgrade_plan``; ``bench/nemesis.py --upgrade IMAGE``) is not drawn from a seed: its
only fault, ``upgrade``, changes ``spec.image`` from ``redis:7.2`` to another engine or major version
(``valkey/valkey:9.1``, ``redis:8.0``: the pod runner plays each with the binaries of that engine) and
waits for ``status.engine`` to name only the new engine; the checker then runs as after any fault.

What this cluster cannot do is listed in ``NOT_EXPRESSED`` rather than faked.

A failed run says what was lost, when each lost write was acknowledged, the fault timeline, and the
command that replays the seed; with an output directory it keeps the operator's log, the
containers' logs, the events, the objects and the workload's record there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.retry import Retry

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = Path(__file__).resolve().parent / "nemesis_workload.py"
GROUP, VERSION, PLURAL = "redis-messaging.dev", "v1alpha1", "redismessagings"
LABEL_ROLE = f"{GROUP}/role"
CONFIG_HASH = f"{GROUP}/config-hash"
NAME = "nemesis"
STREAM = CONSUMER_GROUP = "nemesis"
CLIENT_POD = "nemesis-client"
IMAGE = "redis:7.2"
ROLLED_IMAGE = "redis:7.2.4"  # the pod runner plays every redis tag with the machine's redis-server
PORT = 6379
MODES = ("sentinel", "cluster")

SENTINEL_FAULTS = ("kill-redis", "stop-redis", "kill-sentinel", "stop-sentinel", "kill-operator", "stop-operator",
                   "delete-pod", "partition-pod", "partition-operator", "empty-volume", "rolling-update")
CLUSTER_FAULTS = ("kill-redis", "stop-redis", "kill-operator", "stop-operator", "delete-pod", "partition-pod",
                  "partition-operator", "empty-volume", "rolling-update", "reshard")
FAULTS = {"sentinel": SENTINEL_FAULTS, "cluster": CLUSTER_FAULTS}
SLOW = ("rolling-update", "reshard", "upgrade")  # never drawn as a run's second or third fault
UPGRADE = "upgrade"  # not drawn from a seed: upgrade_plan

NOT_EXPRESSED = {
    "node failure": "kwok keeps its nodes Ready and the node lifecycle controller does not run: no node dies "
                    "and no pod is evicted",
    "disk full, slow or failing disk": "volumes are directories of the host's file system: no quota, no "
                                       "latency and no I/O error to inject",
    "packet loss, latency, reordering": "this kernel has no netem queueing discipline and no tc actions: "
                                        "links are either up or cut",
    "clock skew": "every process shares the host's clock",
    "machine crash (unsynced writes lost)": "a killed process keeps what it wrote in the page cache; the "
                                            "host itself never crashes under the pods",
}


@dataclass(frozen=True)
class Timeouts:
    """How long each wait may take (seconds); every wait of the harness is bounded by one of these."""

    ready: float = 240.0  # a new resource becomes Ready
    recover: float = 240.0  # after a fault is healed: Ready, settled, writes acknowledged again
    roll: float = 480.0  # a rolling update or a reshard with a failover in the middle
    drain: float = 60.0  # the workload's consumer catches up at the end
    in_sync: float = 60.0  # a replica reaches its master's offset for the final check
    trigger: float = 180.0  # a rolling update or reshard reaches the point where the master fails


# --------------------------------------------------------------------------------------------------
# The plan: what a seed does


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str = ""  # master | replica | sentinel; reshard: source | target
    pick: float = 0.0  # which of the candidates, in [0, 1)
    hold: float = 0.0  # seconds the fault lasts before it is healed
    during: str = ""  # "fail-master": the master also fails while the fault is held
    how: str = "kill"  # how a master fails: kill (SIGKILL) | delete (the pod)
    change: str = ""  # rolling-update: image | config; reshard: out | in
    after: int = 0  # rolling-update: pods replaced before the master fails
    subset: tuple[float, ...] = ()  # partition-operator: masters, replicas, sentinels cut (fractions)

    def describe(self) -> str:
        parts = [self.kind]
        if self.target:
            parts.append(self.target)
        if self.change:
            parts.append(self.change)
        if self.hold:
            parts.append(f"{self.hold:.1f}s")
        if self.kind == "rolling-update":
            parts.append(f"{self.how} master after {self.after} pod(s)")
        if self.kind == "reshard":
            parts.append(f"{self.how}")
        if self.subset:
            cut = zip(("masters", "replicas", "sentinels"), self.subset, strict=False)
            parts.append("cut " + ",".join(f"{int(x * 100)}% {what}" for what, x in cut if x))
        if self.during == "poke":
            parts.append("+poke")
        elif self.during:
            parts.append(f"+{self.during} ({self.how})")
        return " ".join(parts)


@dataclass(frozen=True)
class Plan:
    mode: str
    seed: int
    shards: int  # cluster mode: shards at creation
    faults: tuple[Fault, ...]

    def describe(self) -> str:
        return "; ".join(f.describe() for f in self.faults)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.kind for f in self.faults))


def _fault(kind: str, mode: str, rng: random.Random) -> Fault:
    def role() -> str:
        return "master" if rng.random() < 0.6 else "replica"

    def during() -> str:
        return "fail-master" if rng.random() < 0.5 else ""

    def how() -> str:
        return "kill" if rng.random() < 0.6 else "delete"

    pods = 6  # redis + sentinel pods, or 3 shards of 2
    if kind in ("kill-redis",):
        return Fault(kind, target=role(), pick=rng.random())
    if kind == "stop-redis":
        return Fault(kind, target=role(), pick=rng.random(), hold=round(rng.uniform(1.0, 8.0), 1))
    if kind == "kill-sentinel":
        return Fault(kind, target="sentinel", pick=rng.random(), during=during(), how=how())
    if kind == "stop-sentinel":
        return Fault(kind, target="sentinel", pick=rng.random(), hold=round(rng.uniform(2.0, 10.0), 1),
                     during=during(), how=how())
    if kind in ("kill-operator", "stop-operator"):
        return Fault(kind, hold=round(rng.uniform(1.0, 15.0), 1), during=during(), pick=rng.random(), how=how())
    if kind == "delete-pod":
        draw = rng.random()
        target = ("master" if draw < 0.5 else "replica" if draw < 0.8 or mode == "cluster" else "sentinel")
        return Fault(kind, target=target, pick=rng.random())
    if kind == "partition-pod":
        draw = rng.random()
        target = ("master" if draw < 0.5 else "replica" if draw < 0.8 or mode == "cluster" else "sentinel")
        return Fault(kind, target=target, pick=rng.random(), hold=round(rng.uniform(2.0, 12.0), 1))
    if kind == "partition-operator":
        # Fractions of the masters, replicas and Sentinels cut (at least one pod, never all of them).
        subset = (rng.choice((0.0, 1.0, 1.0)), rng.choice((0.0, 0.5, 1.0)),
                  rng.choice((0.0, 0.34, 0.67, 1.0)) if mode == "sentinel" else 0.0)
        if not any(subset):
            subset = (1.0, subset[1], subset[2])
        if all(x == 1.0 for x in subset[: 3 if mode == "sentinel" else 2]):
            subset = (subset[0], 0.5, subset[2])
        # Something for the operator to do while it is cut off: a failover, or a pass of its own
        # (an annotation changed); otherwise it may not even notice before its next periodic pass.
        return Fault(kind, subset=subset, pick=rng.random(), hold=round(rng.uniform(3.0, 15.0), 1),
                     during=rng.choice(("fail-master", "poke")), how=how())
    if kind == "empty-volume":
        return Fault(kind, target=role(), pick=rng.random(), hold=round(rng.uniform(0.5, 8.0), 1))
    if kind == "rolling-update":
        return Fault(kind, target="master", change=rng.choice(("image", "config")), after=rng.randrange(pods),
                     how=how(), pick=rng.random())
    if kind == "reshard":
        return Fault(kind, change=rng.choice(("out", "in")), target=rng.choice(("source", "target")),
                     how=how(), pick=rng.random())
    raise ValueError(f"unknown fault {kind}")


def make_plan(mode: str, seed: int) -> Plan:
    """What ``seed`` does in ``mode``: the first fault's kind rotates with the seed, a few runs get a
    second or third (quick) one, every parameter is drawn from ``random.Random(seed)``."""
    if mode not in MODES:
        raise ValueError(f"mode {mode}: one of {MODES}")
    menu = FAULTS[mode]
    rng = random.Random(seed)
    kinds = [menu[seed % len(menu)]]
    for chance in (0.3, 0.1):
        if rng.random() < chance:
            kinds.append(rng.choice([k for k in menu if k not in SLOW]))
    faults = tuple(_fault(kind, mode, rng) for kind in kinds)
    shards = 4 if any(f.kind == "reshard" and f.change == "in" for f in faults) else 3
    return Plan(mode, seed, shards, faults)


def upgrade_plan(mode: str, image: str, seed: int = 0) -> Plan:
    """A run whose only fault is an upgrade of ``spec.image`` from IMAGE to ``image``, under the same
    load and checks as every run (``seed`` names the run)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode}: one of {MODES}")
    return Plan(mode, seed, 3, (Fault(UPGRADE, change=image),))


def expected_engine(image: str) -> str:
    """What ``status.engine`` starts with once every process runs ``image``: "valkey 9.", "redis 8."."""
    repository = image.split("@", 1)[0].rsplit("/", 1)[-1]
    name, _, tag = repository.partition(":")
    major = tag.split(".", 1)[0].lstrip("v")
    return f"{name} {major}." if major.isdigit() else f"{name} "


def seed_for(mode: str, kind: str, start: int = 0, *, single: bool = True) -> int:
    """The first seed from ``start`` whose plan begins with ``kind`` (and has only it, with ``single``)."""
    for seed in range(start, start + 10_000):
        plan = make_plan(mode, seed)
        if plan.faults[0].kind == kind and (not single or len(plan.faults) == 1):
            return seed
    raise LookupError(f"no seed for {mode} {kind}")


def replay_command(mode: str, seed: int, extra: str = "") -> str:
    return f"cd {ROOT} && .venv/bin/python bench/nemesis.py --mode {mode} --seed {seed} --runs 1{extra}"


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class FaultResult:
    kind: str
    planned: str
    what: str = ""
    injected_at: float = 0.0  # wall clock
    healed_at: float = 0.0
    recover_seconds: float | None = None  # healed -> Ready, settled and acknowledging again
    writes_resumed: float | None = None  # healed -> the first write acknowledged after
    notes: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # why it was not recovered yet, as it changed


@dataclass
class RunResult:
    mode: str
    seed: int
    plan: str
    faults: list[FaultResult] = field(default_factory=list)
    acked_writes: int = 0
    acked_entries: int = 0
    delivered: int = 0
    lost_writes: int = 0
    lost_entries: int = 0
    undelivered: int = 0
    orphaned_pending: int = 0
    problems: list[str] = field(default_factory=list)
    harness_error: str = ""  # the harness itself failed (not a finding about the operator)
    seconds: float = 0.0
    replay: str = ""
    artifacts: str = ""

    @property
    def lost(self) -> int:
        return self.lost_writes + self.lost_entries + self.undelivered + self.orphaned_pending

    @property
    def ok(self) -> bool:
        return not self.problems and not self.harness_error

    def summary(self) -> str:
        recover = ", ".join(f"{f.kind} {f.recover_seconds:.1f}s" if f.recover_seconds is not None
                            else f"{f.kind} not recovered" for f in self.faults)
        text = (f"{self.mode} seed {self.seed}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.0f}s; "
                f"{self.plan}; {self.acked_writes} writes and {self.acked_entries} entries acknowledged, "
                f"{self.lost} lost; recovered: {recover or '-'}")
        if not self.ok:
            text += "".join(f"\n  fault: {f.what or f.planned}, injected {clock(f.injected_at)}, healed "
                            f"{clock(f.healed_at)}" + "".join(f"\n    {line}" for line in [*f.notes, *f.trace])
                            for f in self.faults if f.injected_at)
            text += "".join(f"\n  problem: {p}" for p in self.problems)
            if self.harness_error:
                text += f"\n  harness error: {self.harness_error}"
            text += f"\n  replay: {self.replay}"
            if self.artifacts:
                text += f"\n  logs: {self.artifacts}"
        return text


def clock(wall: float) -> str:
    """A wall-clock time as the pods' logs show it (to the millisecond)."""
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


class NotRecovered(AssertionError):
    pass


class HarnessError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Small helpers


def wait_until(check: Callable[[], str | None], *, timeout: float, interval: float = 0.5, what: str,
               trace: list[str] | None = None) -> float:
    """Call ``check`` (None: done, else why not yet) until it is done; the seconds it took. Raises
    NotRecovered with the last reason at the deadline. ``trace`` gets each new reason with the
    seconds at which it was first given."""
    began = time.monotonic()
    reason: str | None = "not checked"
    last = ""
    while True:
        try:
            reason = check()
        except (RedisError, OSError, KeyError, IndexError, ValueError, TypeError, LookupError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if trace is not None and reason and reason[:40] != last:
            last = reason[:40]
            trace.append(f"{time.monotonic() - began:5.1f}s {reason[:200]}")
        if reason is None:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise NotRecovered(f"{what} not reached within {timeout:g}s: {reason}")
        time.sleep(interval)


def info_dict(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.replace("\r", "").splitlines() if ":" in line
                and not line.startswith("#"))


@dataclass(frozen=True)
class ClusterNode:
    id: str
    pod: str
    flags: frozenset[str]
    master_id: str
    link: str
    slots: tuple[str, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def open_slots(self) -> tuple[str, ...]:
        return tuple(s for s in self.slots if s.startswith("["))


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1]
        host = address.split(",", 1)[1] if "," in address else address.split(":", 1)[0]
        nodes.append(ClusterNode(parts[0], host.split(".", 1)[0], frozenset(parts[2].split(",")) - {"myself"},
                                 parts[3], parts[7], tuple(parts[8:])))
    return nodes


def slot_ranges(slots: tuple[str, ...]) -> list[tuple[int, int]]:
    out = []
    for s in slots:
        if s.startswith("["):
            continue
        a, _, b = s.partition("-")
        out.append((int(a), int(b or a)))
    return out


# --------------------------------------------------------------------------------------------------
# One run


class Nemesis:
    """The harness of one run: the resource, the workload, the faults and the checks."""

    def __init__(self, cluster: Any, local: Any, namespace: str, plan: Plan, *, timeouts: Timeouts,
                 say: Callable[[str], None], operator_env: dict[str, str] | None = None,
                 work: Path) -> None:
        self.cluster = cluster  # e2e_support.LocalBackend
        self.local = local  # e2e/local/localcluster.py's LocalCluster
        self.api = local.api
        self.runner = local.runner
        self.ns = namespace
        self.plan = plan
        self.mode = plan.mode
        self.timeouts = timeouts
        self.say = say
        self.operator_env = operator_env
        self.work = work
        self.rng = random.Random(f"{plan.seed}-targets")
        self.password = ""
        self.workload: subprocess.Popen[bytes] | None = None
        self.acks_path = work / "workload.jsonl"
        self._acks_offset = 0
        self.last_ack = 0.0  # wall clock of the newest acknowledged write seen
        self.frozen: set[tuple[str, str]] = set()  # (pod, kind) frozen
        self.partitioned: set[str] = set()
        self.cut = False
        self.held: set[str] = set()
        self.operator_stopped = False
        self._clients: dict[tuple[str, str], Redis] = {}

    # ---- the API ---------------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        found = self.api.get(f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}/{NAME}")
        if found is None:
            raise LookupError(f"{NAME} not found")
        return dict(found)

    def pods(self, component: str | None = None) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={NAME}"
        if component:
            selector += f",app.kubernetes.io/component={component}"
        listing = self.api.request("GET", f"/api/v1/namespaces/{self.ns}/pods", query={"labelSelector": selector})
        return sorted((p for p in listing["items"] if not p["metadata"].get("deletionTimestamp")),
                      key=lambda p: p["metadata"]["name"])

    @property
    def redis_component(self) -> str:
        return "redis" if self.mode == "sentinel" else "shard"

    def redis_pods(self) -> list[dict[str, Any]]:
        return self.pods(self.redis_component)

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.api.patch(f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}/{NAME}", {"spec": spec},
                       kind="merge-patch")

    # ---- Redis from the host ---------------------------------------------------------------------

    def client(self, ip: str, port: int = PORT) -> Redis:
        key = (ip, str(port))
        found = self._clients.get(key)
        if found is None:
            found = self._clients[key] = Redis(host=ip, port=port, password=self.password or None, socket_timeout=3,
                                               socket_connect_timeout=2, decode_responses=True,
                                               retry=Retry(NoBackoff(), 0))
            for command in ("INFO", "CLUSTER INFO", "CLUSTER NODES"):  # their text, as redis-cli shows it
                found.set_response_callback(command, lambda response, **_: response)
        return found

    def close_clients(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def redis_of(self, pod: dict[str, Any], port: int = PORT) -> Redis:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            raise LookupError(f"{pod['metadata']['name']} has no IP")
        return self.client(ip, port)

    def exec_info(self, pod: str) -> dict[str, str]:
        """INFO replication through the pod runner (inside the pod: works while the host is cut off)."""
        out = self.cluster.redis_cli(self.ns, pod, "INFO", "replication")
        return info_dict(out)

    # ---- setup -----------------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "image": IMAGE,
            "persistence": {"mode": "aof", "storage": {"size": "1Gi"}},
            "streams": [{"name": STREAM, "groups": [{"name": CONSUMER_GROUP, "startId": "0"}]}],
        }
        if self.mode == "sentinel":
            return {**common, "mode": "sentinel", "redis": {"replicas": 3},
                    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 3000,
                                 "failoverTimeout": 10000}}
        return {**common, "mode": "cluster",
                "cluster": {"shards": self.plan.shards, "replicasPerShard": 1, "nodeTimeout": 3000}}

    def setup(self) -> None:
        self.cluster.apply(self.ns, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": CLIENT_POD, "labels": {"app": CLIENT_POD}},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "client", "image": IMAGE, "command": ["sleep", "infinity"]}]}})
        self.cluster.apply(self.ns, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RedisMessaging",
                                     "metadata": {"name": NAME}, "spec": self.spec()})
        began = time.monotonic()
        trace: list[str] = []
        wait_until(self.ready_reason, timeout=self.timeouts.ready, what="Ready", trace=trace)
        secret = self.api.get(f"/api/v1/namespaces/{self.ns}/secrets/{NAME}-auth")
        self.password = base64.b64decode(secret["data"]["password"]).decode() if secret else ""
        wait_until(self.settled_reason, timeout=self.timeouts.ready, what="settled after creation", trace=trace)
        took = time.monotonic() - began
        self.say(f"{NAME} Ready and settled {took:.1f}s after apply"
                 + ("".join(f"\n    waited for: {line}" for line in trace) if took > 30 else ""))

        def client_running() -> str | None:
            try:
                self.runner.sandbox_pid(self.ns, CLIENT_POD)
            except LookupError as exc:
                return str(exc)
            return None

        wait_until(client_running, timeout=60, what="the client pod running")
        self.start_workload()
        wait_until(lambda: None if self.acked_since(0) else "no write acknowledged yet", timeout=60,
                   what="the workload's first acknowledged write")

    def start_workload(self) -> None:
        pid = self.runner.sandbox_pid(self.ns, CLIENT_POD)
        hosts = self.local.hosts.dir_for(self.ns) / "hosts"
        domain = f"{self.ns}.svc.cluster.local"
        args = ["--mode", self.mode, "--hosts", str(hosts), "--out", str(self.acks_path),
                "--stream", STREAM, "--group", CONSUMER_GROUP, "--prefix", "w",
                "--drain-seconds", str(self.timeouts.drain), "--max-seconds", "3600"]
        if self.mode == "sentinel":
            args += ["--sentinels", ",".join(f"{NAME}-sentinel-{i}.{NAME}-sentinel-headless.{domain}"
                                             for i in range(3)), "--master-name", NAME]
        else:
            args += ["--seeds", ",".join(f"{p['metadata']['name']}.{NAME}-redis-headless.{domain}"
                                         for p in self.redis_pods())]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "RMSG_NEMESIS_PASSWORD": self.password}
        with (self.work / "workload.log").open("ab") as log:
            self.workload = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net=/proc/{pid}/ns/net", "--",
                 sys.executable, str(WORKLOAD), *args],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_workload(self) -> None:
        """Stop writing, let the consumer drain (bounded), and wait for the workload to exit."""
        proc = self.workload
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.timeouts.drain + 30)
            except subprocess.TimeoutExpired:
                self.say("the workload did not exit after its drain; killed")
        self.kill_workload()

    def kill_workload(self) -> None:
        proc = self.workload
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def acked_since(self, since: float) -> bool:
        """Whether the workload acknowledged a write after ``since`` (wall clock)."""
        try:
            with self.acks_path.open() as f:
                f.seek(self._acks_offset)
                for line in f:
                    if not line.endswith("\n"):
                        break
                    self._acks_offset += len(line.encode())
                    record = json.loads(line)
                    if "w" in record:
                        self.last_ack = max(self.last_ack, record["t"])
        except FileNotFoundError:
            return False
        if self.workload is not None and self.workload.poll() is not None:
            raise HarnessError(f"the workload exited with {self.workload.returncode}; see "
                               f"{self.work / 'workload.log'}")
        return self.last_ack > since

    # ---- what is the state -----------------------------------------------------------------------

    def ready_reason(self) -> str | None:
        body = self.body()
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"].get("generation"):
            return f"observedGeneration {status.get('observedGeneration')} != {body['metadata'].get('generation')}"
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        if not ready:
            return "no Ready condition yet"
        if ready["status"] != "True":
            return f"Ready={ready['status']}: {ready.get('reason')}: {ready.get('message')}"
        return None

    def outdated_reason(self) -> str | None:
        """A pod that does not run its StatefulSet's template (a roll is not finished)."""
        listing = self.api.request("GET", f"/apis/apps/v1/namespaces/{self.ns}/statefulsets",
                                   query={"labelSelector": f"app.kubernetes.io/instance={NAME}"})
        pods = self.pods()
        for sts in listing["items"]:
            template = sts["spec"]["template"]
            want_hash = (template["metadata"].get("annotations") or {}).get(CONFIG_HASH)
            images = {c["name"]: c.get("image") for c in template["spec"]["containers"]}
            match = sts["spec"]["selector"]["matchLabels"]
            mine = [p for p in pods if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in match.items())]
            if len(mine) != sts["spec"].get("replicas", 1):
                return f"{sts['metadata']['name']}: {len(mine)} pods of {sts['spec'].get('replicas')}"
            for p in mine:
                have = (p["metadata"].get("annotations") or {}).get(CONFIG_HASH)
                if want_hash and have != want_hash:
                    return f"{p['metadata']['name']}: config hash {have} != {want_hash}"
                for c in p["spec"]["containers"]:
                    if images.get(c["name"]) not in (None, c.get("image")):
                        return f"{p['metadata']['name']}: image {c.get('image')} != {images[c['name']]}"
        return None

    def settled_reason(self) -> str | None:
        reason = self.ready_reason()
        if reason:
            return reason
        reason = self.sentinel_topology() if self.mode == "sentinel" else self.cluster_topology()
        return reason or self.outdated_reason()

    def sentinel_topology(self) -> str | None:
        """One master, followed by every other Redis (link up), the only one labelled master, named by
        status.master and by every Sentinel."""
        pods = self.redis_pods()
        if len(pods) != 3:
            return f"{len(pods)} redis pods"
        infos = {p["metadata"]["name"]: info_dict(self.redis_of(p).execute_command("INFO", "replication"))
                 for p in pods}
        masters = [name for name, i in infos.items() if i.get("role") == "master"]
        if len(masters) != 1:
            return f"masters by INFO: {masters}"
        master = masters[0]
        for name, i in infos.items():
            if name != master:
                if not i.get("master_host", "").startswith(f"{master}."):
                    return f"{name} follows {i.get('master_host')}, not {master}"
                if i.get("master_link_status") != "up":
                    return f"{name}: link {i.get('master_link_status')}"
        labelled = [p["metadata"]["name"] for p in pods
                    if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == "master"]
        if labelled != [master]:
            return f"role=master labels on {labelled}, master is {master}"
        named = (self.body().get("status") or {}).get("master")
        if named != master:
            return f"status.master {named}, master is {master}"
        for s in self.pods("sentinel"):
            said = self.redis_of(s, 26379).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME)
            if not said or not str(said[0]).startswith(f"{master}."):
                return f"{s['metadata']['name']} names {said and said[0]}, master is {master}"
        return None

    def cluster_nodes(self, pod: dict[str, Any]) -> list[ClusterNode]:
        return parse_cluster_nodes(str(self.redis_of(pod).execute_command("CLUSTER", "NODES")))

    def cluster_topology(self) -> str | None:
        """Every node agrees on the nodes, roles and slots; every slot served; as many masters as
        shards, each with its replicas linked; no open slot, no failing or unknown node."""
        spec = self.body()["spec"]["cluster"]
        shards, per_shard = int(spec.get("shards", 3)), int(spec.get("replicasPerShard", 1))
        pods = self.redis_pods()
        if len(pods) != shards * (1 + per_shard):
            return f"{len(pods)} shard pods, want {shards * (1 + per_shard)}"
        views = {}
        for p in pods:
            state = info_dict(self.redis_of(p).execute_command("CLUSTER", "INFO")).get("cluster_state")
            if state != "ok":
                return f"{p['metadata']['name']}: cluster_state {state}"
            nodes = self.cluster_nodes(p)
            for n in nodes:
                bad = n.flags & {"fail", "fail?", "handshake", "noaddr", "nofailover"}
                if bad or n.link != "connected":
                    return f"{p['metadata']['name']} sees {n.pod} {','.join(sorted(n.flags))} {n.link}"
                if n.open_slots:
                    return f"{n.pod} has open slots {n.open_slots[:3]}"
            views[p["metadata"]["name"]] = sorted((n.id, n.pod, n.is_master, n.master_id, n.slots) for n in nodes)
        first = next(iter(views.values()))
        for name, view in views.items():
            if view != first:
                return f"{name} does not see the cluster as {pods[0]['metadata']['name']} does"
        names = {p["metadata"]["name"] for p in pods}
        nodes = self.cluster_nodes(pods[0])
        if {n.pod for n in nodes} != names or len(nodes) != len(names):
            return f"nodes {sorted(n.pod for n in nodes)} are not the pods {sorted(names)}"
        masters = [n for n in nodes if n.is_master]
        if len(masters) != shards:
            return f"{len(masters)} masters, want {shards}"
        served = [sum(b - a + 1 for a, b in slot_ranges(m.slots)) for m in masters]
        if sum(served) != 16384 or not all(served):
            return f"{sum(served)} slots served by {len(masters)} masters"
        if max(served) - min(served) > 16384 // shards // 20:  # a reshard left it uneven
            return f"slots served unevenly: {sorted(served)}"
        for m in masters:
            replicas = [n for n in nodes if n.master_id == m.id]
            if len(replicas) != per_shard:
                return f"{m.pod} has {len(replicas)} replicas"
            for r in replicas:
                i = info_dict(self.redis_of(next(p for p in pods if p["metadata"]["name"] == r.pod))
                              .execute_command("INFO", "replication"))
                if i.get("master_link_status") != "up":
                    return f"{r.pod}: link {i.get('master_link_status')}"
        shard_status = (self.body().get("status") or {}).get("shards") or []
        if len(shard_status) != shards or any(not s.get("master") or not s.get("slots") for s in shard_status):
            return f"status.shards {[(s.get('name'), s.get('master'), s.get('slots')) for s in shard_status]}"
        return None

    # ---- choosing whom to hit --------------------------------------------------------------------

    def masters_now(self) -> list[str]:
        """Redis pods that say they are masters (asked inside the pods; cluster mode: serving slots)."""
        out = []
        for p in self.redis_pods():
            name = p["metadata"]["name"]
            try:
                info = self.exec_info(name)
            except subprocess.CalledProcessError:
                continue
            if info.get("role") != "master":
                continue
            if self.mode == "cluster":
                nodes = parse_cluster_nodes(self.cluster.redis_cli(self.ns, name, "CLUSTER", "NODES"))
                me = next((n for n in nodes if n.pod == name), None)
                if me is None or not slot_ranges(me.slots):
                    continue
            out.append(name)
        return out

    def pick(self, target: str, pick: float) -> str:
        """A pod of the role: master, replica, sentinel (the ``pick`` fraction chooses among several)."""
        names: list[str]
        if target == "sentinel":
            names = [p["metadata"]["name"] for p in self.pods("sentinel")]
        else:
            masters = self.masters_now()
            if target == "master":
                names = masters
                if not names and self.mode == "sentinel":
                    named = (self.body().get("status") or {}).get("master")
                    names = [named] if named else []
            else:
                names = [p["metadata"]["name"] for p in self.redis_pods() if p["metadata"]["name"] not in masters]
        if not names:
            raise HarnessError(f"no {target} to hit")
        return sorted(names)[min(int(pick * len(names)), len(names) - 1)]

    # ---- the faults ------------------------------------------------------------------------------

    def inject(self, fault: Fault, result: FaultResult) -> None:
        result.injected_at = time.time()
        handler = getattr(self, "_" + fault.kind.replace("-", "_"))
        result.what = handler(fault, result.notes)
        result.healed_at = time.time()
        timeout = self.timeouts.roll if fault.kind in SLOW else self.timeouts.recover
        try:
            result.recover_seconds = wait_until(
                lambda: self.settled_reason() or (None if self.acked_since(result.healed_at)
                                                  else "no write acknowledged since"),
                timeout=timeout, what=f"recovery after {fault.kind}", trace=result.trace)
        finally:
            result.writes_resumed = self.first_ack_after(result.healed_at)

    def first_ack_after(self, since: float) -> float | None:
        with contextlib.suppress(FileNotFoundError), self.acks_path.open() as f:
            for line in f:
                if line.endswith("\n") and '"w"' in line:
                    t = json.loads(line)["t"]
                    if t > since:
                        return float(t - since)
        return None

    def fail_master(self, how: str, pick: float, notes: list[str]) -> str:
        master = self.pick("master", pick)
        if how == "delete":
            self.cluster.kubectl("delete", "pod", master, "-n", self.ns, "--wait=false")
            return f"deleted master {master}"
        self.runner.worker(self.ns, master).kill_container("redis", signal.SIGKILL)
        return f"SIGKILLed master {master}"

    def _kill_redis(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick(f.target, f.pick)
        self.runner.worker(self.ns, pod).kill_container("redis", signal.SIGKILL)
        return f"SIGKILL redis-server of {pod} ({f.target})"

    def _stop_redis(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick(f.target, f.pick)
        self.freeze(pod)
        try:
            time.sleep(f.hold)
        finally:
            self.thaw(pod)
        return f"SIGSTOP {pod} ({f.target}) for {f.hold:.1f}s"

    def freeze(self, pod: str) -> None:
        self.runner.freeze(self.ns, pod)
        self.frozen.add((pod, "pod"))

    def thaw(self, pod: str) -> None:
        with contextlib.suppress(LookupError):
            self.runner.thaw(self.ns, pod)
        self.frozen.discard((pod, "pod"))

    def _kill_sentinel(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick("sentinel", f.pick)
        self.runner.worker(self.ns, pod).kill_container("sentinel", signal.SIGKILL)
        what = f"SIGKILL redis-sentinel of {pod}"
        if f.during:
            what += "; " + self.fail_master(f.how, self.rng.random(), notes)
        return what

    def _stop_sentinel(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick("sentinel", f.pick)
        self.freeze(pod)
        what = f"SIGSTOP {pod} for {f.hold:.1f}s"
        try:
            if f.during:
                time.sleep(min(1.0, f.hold))
                what += "; " + self.fail_master(f.how, self.rng.random(), notes)
                time.sleep(max(0.0, f.hold - 1.0))
            else:
                time.sleep(f.hold)
        finally:
            self.thaw(pod)
        return what

    def _kill_operator(self, f: Fault, notes: list[str]) -> str:
        self.local.kill_operator()
        what = f"SIGKILL the operator, down {f.hold:.1f}s"
        try:
            what += self._operator_down_for(f, notes)
        finally:
            self.ensure_operator()
        return what

    def _stop_operator(self, f: Fault, notes: list[str]) -> str:
        self.local.operator.signal(signal.SIGSTOP)
        self.operator_stopped = True
        what = f"SIGSTOP the operator for {f.hold:.1f}s"
        try:
            what += self._operator_down_for(f, notes)
        finally:
            self.ensure_operator()
        return what

    def _operator_down_for(self, f: Fault, notes: list[str]) -> str:
        """Wait out the operator's outage; with ``f.during``, the master fails half a second into it.
        What was done besides, to add to the fault's description."""
        if not f.during:
            time.sleep(f.hold)
            return ""
        time.sleep(min(0.5, f.hold))
        failed = "; " + self.fail_master(f.how, f.pick, notes)
        time.sleep(max(0.0, f.hold - 0.5))
        return failed

    def ensure_operator(self) -> None:
        """The operator runs (again), not stopped."""
        operator = self.local.operator
        if operator is not None and operator.alive():
            if self.operator_stopped:
                operator.signal(signal.SIGCONT)
        else:
            self.local.start_operator(self.operator_env)
        self.operator_stopped = False

    def _delete_pod(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick(f.target, f.pick)
        self.cluster.kubectl("delete", "pod", pod, "-n", self.ns, "--wait=false")
        return f"deleted {pod} ({f.target})"

    def _partition_pod(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick(f.target, f.pick)
        self.runner.partition(self.ns, pod)
        self.partitioned.add(pod)
        try:
            time.sleep(f.hold)
        finally:
            self.heal(pod)
        return f"partitioned {pod} ({f.target}) for {f.hold:.1f}s"

    def heal(self, pod: str) -> None:
        with contextlib.suppress(LookupError, AssertionError, RuntimeError):  # a pod gone meanwhile
            self.runner.heal(self.ns, pod)
        self.partitioned.discard(pod)

    def _partition_operator(self, f: Fault, notes: list[str]) -> str:
        masters = sorted(self.masters_now())
        replicas = sorted(p["metadata"]["name"] for p in self.redis_pods() if p["metadata"]["name"] not in masters)
        sentinels = sorted(p["metadata"]["name"] for p in self.pods("sentinel")) if self.mode == "sentinel" else []
        chosen: list[str] = []
        for names, fraction in zip((masters, replicas, sentinels), f.subset, strict=False):
            count = round(fraction * len(names))
            chosen += self.rng.sample(names, count) if count else []
        if not chosen:
            chosen = masters[:1]
        ips, both_ways = self.local.cut_operator_off(self.ns, chosen)
        self.cut = True
        for ip in ips:  # the cut holds: the operator reaches none of them (and is not told so)
            outcome = self.local.operator_connect(ip, PORT, timeout=0.3)
            if outcome != "timeout":
                raise HarnessError(f"the operator is not cut off {ip} silently: {outcome}")
        what = f"operator cut off {', '.join(sorted(chosen))} for {f.hold:.1f}s"
        notes.append(f"cut IPs {', '.join(ips)}"
                     + ("" if both_ways else " one way only (net.ipv4.conf.all.rp_filter=2 lets in what they send)"))
        try:
            time.sleep(min(1.0, f.hold))
            if f.during == "poke":
                self.api.patch(f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}/{NAME}",
                               {"metadata": {"annotations": {"nemesis.redis-messaging.dev/poke": str(time.time())}}},
                               kind="merge-patch")
                what += "; a pass asked for (annotation changed)"
            elif f.during:
                what += "; " + self.fail_master(f.how, f.pick, notes)
            time.sleep(max(0.0, f.hold - 1.0))
        finally:
            self.local.mend_operator()
            self.cut = False
        return what

    def pv_path(self, pod: str) -> Path:
        pvc = self.api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/data-{pod}")
        if pvc is None:
            raise HarnessError(f"no claim data-{pod}")
        pv = self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        return Path(pv["spec"]["hostPath"]["path"])

    def _empty_volume(self, f: Fault, notes: list[str]) -> str:
        pod = self.pick(f.target, f.pick)
        path = self.pv_path(pod)
        worker = self.runner.worker(self.ns, pod)
        worker.hold("redis")
        self.held.add(pod)
        try:
            worker.kill_container("redis", signal.SIGKILL)

            def dead() -> str | None:
                return "still running" if worker.container("redis").alive() else None

            wait_until(dead, timeout=15, interval=0.05, what=f"{pod}'s redis-server gone")
            removed = sorted(p.name for p in path.iterdir())
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            notes.append(f"removed {', '.join(removed) or 'nothing'} from {path.name}")
            time.sleep(f.hold)
        finally:
            with contextlib.suppress(LookupError):
                worker.release("redis")
            self.held.discard(pod)
        return f"emptied the volume of {pod} ({f.target}), down {f.hold:.1f}s"

    def _rolling_update(self, f: Fault, notes: list[str]) -> str:
        if f.change == "image":
            rolling = self.pods()
            self.patch_spec({"image": ROLLED_IMAGE})
            change = f"image {IMAGE} -> {ROLLED_IMAGE}"
        else:
            rolling = self.redis_pods()  # the Sentinels' configuration does not change
            self.patch_spec({"redis": {"config": {"hz": "11"}}})
            change = "redis.config hz 10 -> 11"
        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in rolling}
        after = min(f.after, len(before) - 1)  # the master fails before the last pod rolls

        def replaced() -> str | None:
            now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.pods()}
            done = sum(1 for name, uid in before.items() if now.get(name) not in (None, uid))
            return None if done >= after else f"{done} of {after} pods replaced"

        try:
            wait_until(replaced, timeout=self.timeouts.trigger, interval=0.2, what="the roll's progress")
        except NotRecovered as exc:
            notes.append(f"the master failed anyway: {exc}")
        what = f"rolling update ({change}); after {after} of {len(before)} pod(s) replaced: "
        return what + self.fail_master(f.how, f.pick, notes)

    def _upgrade(self, f: Fault, notes: list[str]) -> str:
        """Every pod rolls onto another engine (or major version): done once status.engine names only
        the new one, which the operator reads from each process (INFO server)."""
        self.patch_spec({"image": f.change})
        wanted = expected_engine(f.change)

        def engine_moved() -> str | None:
            engine = str((self.body().get("status") or {}).get("engine") or "")
            return None if engine.startswith(wanted) and "," not in engine else f"status.engine {engine!r}"

        took = wait_until(engine_moved, timeout=self.timeouts.roll, interval=0.5, what="the engine's upgrade")
        engine = (self.body().get("status") or {}).get("engine")
        notes.append(f"status.engine {engine} after {took:.1f}s")
        return f"upgrade: image {IMAGE} -> {f.change}"

    def _reshard(self, f: Fault, notes: list[str]) -> str:
        shards = self.plan.shards
        to = shards + 1 if f.change == "out" else shards - 1
        self.patch_spec({"cluster": {"shards": to}})
        seen: dict[str, str] = {}

        def open_slot() -> str | None:
            for p in self.redis_pods():
                with contextlib.suppress(RedisError, OSError, LookupError):
                    me = next((n for n in self.cluster_nodes(p) if n.pod == p["metadata"]["name"]), None)
                    if me is None:
                        continue
                    for s in me.open_slots:
                        kind = "source" if "->-" in s else "target"
                        seen.setdefault(kind, me.pod)
                        seen.setdefault(f"{kind}-slot", s)
            return None if f.target in seen else "no open slot yet"

        try:
            wait_until(open_slot, timeout=self.timeouts.trigger, interval=0.1, what="a slot being moved")
            victim = seen[f.target]
            notes.append(f"open slot {seen.get(f.target + '-slot')} on {victim}")
        except NotRecovered as exc:
            notes.append(f"no open slot seen ({exc}); a master failed anyway")
            victim = self.pick("master", f.pick)
        if f.how == "delete":
            self.cluster.kubectl("delete", "pod", victim, "-n", self.ns, "--wait=false")
            failed = f"deleted {f.target} master {victim}"
        else:
            self.runner.worker(self.ns, victim).kill_container("redis", signal.SIGKILL)
            failed = f"SIGKILLed {f.target} master {victim}"
        return f"reshard {shards} -> {to}; {failed}"

    def undo_everything(self) -> None:
        """Whatever a fault left undone (a harness error in the middle of one)."""
        for pod, _ in list(self.frozen):
            self.thaw(pod)
        for pod in list(self.partitioned):
            self.heal(pod)
        if self.cut:
            self.local.mend_operator()
            self.cut = False
        for pod in list(self.held):
            with contextlib.suppress(LookupError):
                self.runner.worker(self.ns, pod).release("redis")
            self.held.discard(pod)
        self.ensure_operator()

    # ---- the checker -----------------------------------------------------------------------------

    def records(self) -> dict[str, Any]:
        writes: dict[int, float] = {}
        entries: dict[str, tuple[int, float]] = {}
        delivered: set[str] = set()
        end: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError), self.acks_path.open() as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                r = json.loads(line)
                for n in r.get("w", ()):
                    writes[n] = r["t"]
                for entry_id, n in r.get("x", ()):
                    entries[entry_id] = (n, r["t"])
                delivered.update(r.get("d", ()))
                end = r.get("end", end)
        return {"writes": writes, "entries": entries, "delivered": delivered, "end": end}

    def check(self, result: RunResult) -> None:
        """The final proof (see the module's docstring); problems go to ``result.problems``."""
        rec = self.records()
        writes, entries, delivered, end = rec["writes"], rec["entries"], rec["delivered"], rec["end"]
        result.acked_writes, result.acked_entries = len(writes), len(entries)
        result.delivered = len(delivered & set(entries))
        try:
            wait_until(self.settled_reason, timeout=self.timeouts.recover, what="settled at the end")
        except NotRecovered as exc:
            result.problems.append(str(exc))
        pods = {p["metadata"]["name"]: p for p in self.redis_pods()}
        groups = (self.sentinel_groups if self.mode == "sentinel" else self.cluster_groups)(pods, result)
        lost_writes: set[int] = set()
        lost_entries: set[str] = set()
        for master, replicas, slots in groups:
            keys = [n for n in writes if slots is None or key_slot(f"w:{n}".encode()) in slots]
            stream_here = slots is None or key_slot(STREAM.encode()) in slots
            for name in [master, *replicas]:
                pod = pods[name]
                missing = self.missing_keys(pod, keys, replica=name != master)
                if missing:
                    lost_writes |= set(missing)
                    first = sorted(missing)[:5]
                    result.problems.append(
                        f"{name}{' (replica)' if name != master else ' (master)'} lacks {len(missing)} acknowledged "
                        f"writes, e.g. {', '.join(f'w:{n} (acknowledged {clock(writes[n])})' for n in first)}")
                if stream_here and entries:
                    gone = self.missing_entries(pod, entries, replica=name != master)
                    if gone:
                        lost_entries |= gone
                        first_ids = sorted(gone)[:5]
                        result.problems.append(
                            f"{name} lacks {len(gone)} acknowledged entries, e.g. "
                            f"{', '.join(f'{i} (acknowledged {clock(entries[i][1])})' for i in first_ids)}")
            if stream_here:
                self.check_group(pods[master], end, result)
        result.lost_writes, result.lost_entries = len(lost_writes), len(lost_entries)
        undelivered = set(entries) - delivered
        result.undelivered = len(undelivered)
        if undelivered:
            result.problems.append(f"{len(undelivered)} acknowledged entries never delivered to the group, e.g. "
                                   f"{', '.join(sorted(undelivered)[:5])}")
        if end and not end.get("drained"):
            result.problems.append(f"the workload's consumer did not drain: {end}")
        if not end:
            result.problems.append("the workload recorded no end (killed before its drain finished?)")
        if self.mode == "cluster":
            self.cluster_check(result)

    def sentinel_groups(self, pods: dict[str, Any], result: RunResult
                        ) -> list[tuple[str, list[str], set[int] | None]]:
        infos = {name: info_dict(self.redis_of(p).execute_command("INFO", "replication")) for name, p in pods.items()}
        masters = [name for name, i in infos.items() if i.get("role") == "master"]
        if len(masters) != 1:
            result.problems.append(f"masters at the end: {masters}")
            return [(m, [], None) for m in masters]
        master = masters[0]
        replicas = [name for name in pods if name != master]
        self.wait_in_sync(pods, master, replicas, result)
        return [(master, replicas, None)]

    def wait_in_sync(self, pods: dict[str, Any], master: str, replicas: list[str], result: RunResult) -> None:
        target = int(info_dict(self.redis_of(pods[master]).execute_command("INFO", "replication"))
                     ["master_repl_offset"])

        def caught_up() -> str | None:
            for name in replicas:
                i = info_dict(self.redis_of(pods[name]).execute_command("INFO", "replication"))
                if i.get("master_link_status") != "up" or int(i.get("slave_repl_offset", -1)) < target:
                    return f"{name}: link {i.get('master_link_status')}, offset {i.get('slave_repl_offset')} < {target}"
            return None

        try:
            wait_until(caught_up, timeout=self.timeouts.in_sync, what=f"the replicas of {master} in sync")
        except NotRecovered as exc:
            result.problems.append(str(exc))

    def cluster_groups(self, pods: dict[str, Any], result: RunResult
                       ) -> list[tuple[str, list[str], set[int] | None]]:
        nodes = self.cluster_nodes(next(iter(pods.values())))
        groups: list[tuple[str, list[str], set[int] | None]] = []
        covered: set[int] = set()
        for m in (n for n in nodes if n.is_master and slot_ranges(n.slots)):
            slots = {s for a, b in slot_ranges(m.slots) for s in range(a, b + 1)}
            covered |= slots
            replicas = [n.pod for n in nodes if n.master_id == m.id and n.pod in pods]
            if m.pod not in pods:
                result.problems.append(f"master {m.pod} is no pod of the resource")
                continue
            self.wait_in_sync(pods, m.pod, replicas, result)
            groups.append((m.pod, replicas, slots))
        if len(covered) != 16384:
            result.problems.append(f"only {len(covered)} slots served at the end: keys of the others are not checked")
        return groups

    def missing_keys(self, pod: dict[str, Any], keys: list[int], *, replica: bool) -> list[int]:
        conn = self.redis_of(pod)
        missing: list[int] = []
        for start in range(0, len(keys), 2000):
            chunk = keys[start:start + 2000]
            pipe = conn.pipeline(transaction=False)
            if replica and self.mode == "cluster":
                pipe.execute_command("READONLY")
            for n in chunk:
                pipe.get(f"w:{n}")
            replies = pipe.execute(raise_on_error=False)
            if replica and self.mode == "cluster":
                replies = replies[1:]
            missing += [n for n, value in zip(chunk, replies, strict=True) if value != str(n)]
        return missing

    def missing_entries(self, pod: dict[str, Any], entries: dict[str, tuple[int, float]], *,
                        replica: bool) -> set[str]:
        conn = self.redis_of(pod)
        found: dict[str, str] = {}
        start = "-"
        for _ in range(10_000):
            pipe = conn.pipeline(transaction=False)  # one connection: READONLY applies to the read
            if replica and self.mode == "cluster":
                pipe.execute_command("READONLY")
            pipe.xrange(STREAM, min=start, count=5000)
            batch = pipe.execute()[-1]
            if not batch:
                break
            found.update((i, f.get("n", "")) for i, f in batch)
            last = batch[-1][0]
            ms, _, seq = last.partition("-")
            start = f"{ms}-{int(seq) + 1}"
            if len(batch) < 5000:
                break
        return {i for i, (n, _) in entries.items() if found.get(i) != str(n)}

    def check_group(self, master: dict[str, Any], end: dict[str, Any], result: RunResult) -> None:
        live = end.get("consumer")
        try:
            consumers = self.redis_of(master).xinfo_consumers(STREAM, CONSUMER_GROUP)
        except RedisError as exc:
            result.problems.append(f"the group {CONSUMER_GROUP} on {master['metadata']['name']}: {exc}")
            return
        orphans = {c["name"]: c["pending"] for c in consumers if c["pending"] and c["name"] != live}
        if orphans:
            result.orphaned_pending = sum(orphans.values())
            result.problems.append(f"entries pending on consumers that no longer exist: {orphans}")

    def cluster_check(self, result: RunResult) -> None:
        pod = next((p["metadata"]["name"] for p in self.redis_pods()), None)
        if pod is None:
            result.problems.append("no pod to run redis-cli --cluster check in")
            return
        try:
            out = self.cluster.redis_cli(self.ns, pod, "--cluster", "check", f"127.0.0.1:{PORT}")
        except subprocess.CalledProcessError as exc:
            out = f"exit {exc.returncode}: {exc.stdout}{exc.stderr}"
        if ("[OK] All 16384 slots covered." not in out or "[ERR]" in out or "[WARNING]" in out
                or "[OK] All nodes agree about slots configuration." not in out):
            bad = [line for line in out.splitlines() if "[ERR]" in line or "[WARNING]" in line or "slots" in line]
            result.problems.append("redis-cli --cluster check: " + " | ".join(bad[:6] or out.splitlines()[-6:]))

    # ---- what a failed run keeps -----------------------------------------------------------------

    def keep(self, directory: Path, operator_log_from: int, result: RunResult) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "result.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        with contextlib.suppress(OSError), self.local.operator_log_path.open("rb") as f:
            f.seek(operator_log_from)
            (directory / "operator.log").write_bytes(f.read())
        (directory / "events.txt").write_text(self.cluster.events(self.ns))
        (directory / "objects.yaml").write_text(self.cluster.kubectl(
            "get", "rmsg,statefulsets,pods,pvc", "-n", self.ns, "-o", "yaml", check=False))
        containers = directory / "containers"
        containers.mkdir(exist_ok=True)
        for path in sorted(Path(self.local.work).glob(f"pods/{self.ns}_*/*.log")):
            shutil.copyfile(path, containers / f"{path.parent.name}.{path.name}")
        for name in ("workload.jsonl", "workload.log"):
            if (self.work / name).exists():
                shutil.copyfile(self.work / name, directory / name)

    def teardown(self) -> None:
        """The resource and its pods gone at once (no grace, no hooks), and their processes ended: the
        next run starts clean. The StatefulSets go first (their pods orphaned, then deleted), so that
        none is re-created meanwhile; a pod whose processes still run holds its IP, which the next
        run's pods may be given."""
        self.kill_workload()
        self.close_clients()
        kubectl = self.cluster.kubectl
        try:
            kubectl("delete", "rmsg", NAME, "-n", self.ns, "--wait=true", "--timeout=30s", check=False)
            kubectl("delete", "statefulsets", "--all", "-n", self.ns, "--cascade=orphan", "--wait=true",
                    "--timeout=30s", check=False)
            kubectl("delete", "pods", "--all", "-n", self.ns, "--grace-period=0", "--force", "--wait=false",
                    check=False)

            def gone() -> str | None:
                listing = self.api.request("GET", f"/api/v1/namespaces/{self.ns}/pods")
                left = sorted({*(p["metadata"]["name"] for p in listing["items"]), *self.runner.running(self.ns)})
                return f"pods left: {left}" if left else None

            wait_until(gone, timeout=60, what="the run's pods gone")
        except Exception as exc:
            self.say(f"cleaning up {self.ns} failed: {type(exc).__name__}: {exc}")


def run_seed(cluster: Any, local: Any, namespace: str, mode: str, seed: int, *,
             timeouts: Timeouts | None = None, say: Callable[[str], None] = print,
             keep_dir: Path | None = None, operator_env: dict[str, str] | None = None,
             replay_extra: str = "", verbose: bool = False, keep_all: bool = False,
             plan: Plan | None = None) -> RunResult:
    """One run of ``seed`` in ``mode`` (or of ``plan``: an upgrade), in ``namespace`` (which exists and
    holds nothing yet)."""
    plan = plan or make_plan(mode, seed)
    upgrade = next((f.change for f in plan.faults if f.kind == UPGRADE), None)
    replay = replay_command(mode, seed, replay_extra + (f" --upgrade {upgrade}" if upgrade else ""))
    result = RunResult(mode, seed, plan.describe(), replay=replay)
    began = time.monotonic()
    work = Path(local.work) / "nemesis" / f"{mode}-{seed}-{namespace}"
    work.mkdir(parents=True, exist_ok=True)
    log_from = local.operator_log_path.stat().st_size if local.operator_log_path.exists() else 0
    nemesis = Nemesis(cluster, local, namespace, plan, timeouts=timeouts or Timeouts(), say=say,
                      operator_env=operator_env, work=work)
    say(f"{mode} seed {seed}: {plan.describe()}")
    try:
        nemesis.setup()
        for fault in plan.faults:
            fr = FaultResult(fault.kind, fault.describe())
            result.faults.append(fr)
            try:
                nemesis.inject(fault, fr)
            except NotRecovered as exc:
                result.problems.append(f"{fault.kind}: {exc}")
                say(f"  {fault.kind}: {fr.what}: {exc}")
                say("    waited for: " + "\n    waited for: ".join(fr.trace))
                break
            finally:
                nemesis.undo_everything()
            resumed = f"{fr.writes_resumed:.1f}s" if fr.writes_resumed is not None else "-"
            say(f"  {fr.what}; writes acknowledged again after {resumed}, recovered after "
                f"{fr.recover_seconds:.1f}s" + (f" ({'; '.join(fr.notes)})" if fr.notes else ""))
            if verbose or (fr.recover_seconds or 0) > 30:
                say("    waited for: " + "\n    waited for: ".join(fr.trace))
        time.sleep(1.0)
        nemesis.stop_workload()
        nemesis.check(result)
    except NotRecovered as exc:
        result.problems.append(str(exc))
    except Exception as exc:  # the harness failed: kept apart from findings about the operator
        result.harness_error = f"{type(exc).__name__}: {exc}"
        say(traceback.format_exc())
    finally:
        with contextlib.suppress(Exception):
            nemesis.undo_everything()
        nemesis.kill_workload()
        result.seconds = time.monotonic() - began
        if (keep_all or not result.ok) and keep_dir is not None:
            target = keep_dir / f"{mode}-seed-{seed}"
            with contextlib.suppress(Exception):
                nemesis.keep(target, log_from, result)
                result.artifacts = str(target)
        nemesis.teardown()
    say(result.summary())
    return result


def ci_seeds(mode: str, count: int = 2) -> list[int]:
    """The seeds CI runs: ``RMSG_NEMESIS_SEEDS`` ("3,7" for both modes, or "sentinel:3,7;cluster:5"),
    else ``count`` consecutive seeds that move on with every commit (the number of commits of HEAD),
    so that the fault kinds of the menu rotate from one commit to the next; the same commit runs the
    same seeds again."""
    given = os.environ.get("RMSG_NEMESIS_SEEDS", "").strip()
    if given:
        for part in given.split(";"):
            where, _, seeds = part.rpartition(":")
            if where in ("", mode):
                return [int(s) for s in seeds.split(",") if s.strip()]
        return []
    try:
        base = int(subprocess.run(["git", "-C", str(ROOT), "rev-list", "--count", "HEAD"], capture_output=True,
                                  text=True, timeout=30, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        base = int(time.time() // 86400)
    return [base * count + i for i in range(count)]


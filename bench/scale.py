"""One operator for N RedisMessaging resources: its memory, CPU and API requests, and how fast it still reacts.

What runs: the local cluster of e2e/local (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok nodes, the volume provisioner, the pod runner) and the operator as a process of this machine
(`redis-messaging run --standalone` with the chart's ServiceAccount and RBAC, the local cluster's
`operator_in="process"`), so its resident memory and CPU time are read from /proc/<pid>, and nothing
else (the local cluster's relay to the API server, which a pod's requests pass through, runs in this
harness). A fresh cluster for each N.

For each N, N Sentinel-mode resources (3 Redis + 3 Sentinel pods each, the defaults otherwise: AOF on a
claim, the exporter sidecar, a generated password) are created at once:

* ``--real`` of them (spread among the others) use the image redis:7.2: their pods run on the local
  cluster's three nodes, where the pod runner starts the machine's redis-server and redis-sentinel;
* the others use an image no process plays, on extra kwok-only nodes (tainted, so only they go there;
  a kwok of their own starts their pods 16 at a time, and kube-controller-manager's client may send 200
  requests/s instead of 20, so the cluster, not the operator, is never what N = 1000 waits for):
  kwok gives their pods a phase and an IP and nothing runs, they never become ready, and their names
  resolve nowhere (the hosts files name only the real resources' namespace), so every Redis and
  Sentinel connection of the operator to them fails: the worst case for a pass and a failover watch.

Then, for each N, it prints, each figure next to its target (the targets of N = 1000 on 2 cores):

* the operator's RSS and CPU while the N resources are being created (from the first create until every
  resource has a status of its generation, every real one is Ready, every pod Running), and at idle
  (after a settle time, over an idle window of at least one safety-net period);
* API requests per resource per minute at idle, from the API server's audit log, every request of the
  operator's identity received in the idle window (the long-running watches that feed its indices are
  not, unless one is re-established in the window: then that request counts);
* spec change -> StatefulSet updated: a merge patch of spec.redis.config of one resource, to the
  generation of its Redis StatefulSet changed as a watch on the host sees it; sequential, spread over
  the resources (real ones among them: those then roll their pods);
* +switch-master -> role labels moved, for the real resources: the master's redis-server is SIGKILLed
  through the pod runner; the bench subscribes to +switch-master on every Sentinel of the resource and
  takes the time the message reached it from the Sentinel the operator's failover watch listens to
  (found with CLIENT LIST), and the time a pod watch on the host sees the new master labelled master
  and the old one not.

Run::

    .venv/bin/python bench/scale.py [--counts 10,100,1000] [--real 20] [--smoke]

``--smoke`` is a run of about a minute and a half: N = 3 with one real resource, a 5 s safety-net period
(REDIS_MESSAGING_RESYNC_SECONDS), short phases. Needs what the local cluster needs (Linux, root,
`bash .ci/setup.sh`); CI runs it (e2e/local/test_bench_scale.py).

The exit code is 1 when a run did not reach what it was asked for (the creation did not settle, a
figure could not be taken, a failover or a spec change timed out, the operator exited): the figures taken
are printed all the same, each such miss on a line starting ``INCOMPLETE``.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _project

ROOT = _project.use(__file__, "e2e/local")

from kubeapi import KubeApi, Obj, Reflector, quote  # noqa: E402 - e2e/local, after the path is set
from localcluster import LocalCluster, missing_requirements  # noqa: E402
from podrunner import PodNotFound  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from redis_messaging.api import models  # noqa: E402
from redis_messaging.builders import names  # noqa: E402

log = logging.getLogger("scale")

REAL_NS = "scale-real"
KWOK_NS = "scale-kwok"
REAL_IMAGE = "redis:7.2"
UNPLAYED_IMAGE = "rmsg.local/unplayed-redis:7.2"  # no image profile of the pod runner: nothing runs
KWOK_ONLY = "rmsg.local/kwok-only"  # label and taint of the extra nodes
KWOK_ONLY_SUBNET = ipaddress.IPv4Network("127.254.0.0/16")  # their pods' IPs (no process has them)
PODS_PER_KWOK_NODE = 100  # of the 110 kwok's nodes allow
KWOK_ONLY_PARALLELISM = 16  # pods their own kwok starts at once (the cluster's own kwok: one at a time)
# kube-controller-manager's client: its default 20 requests/s (burst 30) creates 6,000 pods and their
# Events in ten minutes; a cluster that hosts 1,000 such resources raises it like this.
CONTROLLER_MANAGER_ARGS = ("--kube-api-qps=200", "--kube-api-burst=400")
PODS_PER_RESOURCE = 6
RM_PATH = f"/apis/{models.GROUP}/{models.VERSION}"
SERVICE_RANGE = "10.0.0.0/16"  # ClusterIPs are only allocated: no kube-proxy, nothing connects to them
SENTINEL_PORT = 26379

# The targets (DESIGN.md, "Numbers to aim at"), for N = 1000 on 2 cores.
RSS_TARGET_MIB = 1024.0
IDLE_CPU_TARGET = 0.5
SPEC_P99_TARGET = 2.0
FAILOVER_P99_TARGET = 0.5


# --------------------------------------------------------------------------------------------------
# processes: CPU and memory from /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def kib(value: str) -> float:
    return float(value.split()[0]) if value else 0.0


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Sample:
    at: float
    cpu: float
    rss_mib: float
    threads: int


class Sampler:
    """Samples the operator process every ``interval`` seconds in a thread of its own."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> Sample:
        status = proc_status(self.pid)
        s = Sample(time.time(), cpu_seconds(self.pid), kib(status.get("VmRSS", "")) / 1024,
                   int(status.get("Threads", "0")))
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.sample()

    def window(self, since: float, until: float) -> tuple[float, float, float]:
        """(mean CPU in cores, peak RSS MiB, last RSS MiB) between two times (epoch seconds)."""
        inside = [s for s in self.samples if since <= s.at <= until]
        if len(inside) < 2:
            return math.nan, math.nan, math.nan
        first, last = inside[0], inside[-1]
        return ((last.cpu - first.cpu) / (last.at - first.at), max(s.rss_mib for s in inside), last.rss_mib)


def component_pids(cluster: LocalCluster) -> dict[str, int]:
    """The processes of the cluster whose CPU is reported next to the operator's."""
    assert cluster.control_plane is not None
    found: dict[str, int] = {"harness (this process: pod runner, hosts, provisioner)": os.getpid()}
    marker = str(cluster.control_plane.workdir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker in a for a in argv):
            found[Path(argv[0].decode()).name] = int(entry.name)
    for name, process in (("kube-scheduler", cluster.scheduler), ("kwok", cluster.kwok)):
        if process is not None:
            found[name] = process.pid
    for i, extra in enumerate(cluster.more_kwok):
        found[f"kwok of the kwok-only nodes {i or ''}".strip()] = extra.pid
    return found


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            out[name] = cpu_seconds(pid)
    return out


def operator_pid(cluster: LocalCluster, timeout: float = 60.0) -> int:
    """The operator's Python process (the local cluster's start chain execs into it)."""
    assert cluster.operator is not None
    pid = cluster.operator.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if b"redis_messaging.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        if not cluster.operator.alive():
            raise RuntimeError(f"the operator exited:\n{cluster.operator_log()}")
        time.sleep(0.2)
    raise RuntimeError(f"process {pid} did not become the operator within {timeout:g}s")


# --------------------------------------------------------------------------------------------------
# --diagnose: a sitecustomize module on the operator's PYTHONPATH (no change to the operator's code)

DIAG_HOOK = r'''"""Written by bench/scale.py --diagnose. SIGUSR2: every thread's name and CPU time; SIGUSR1: that, a
summary of the stacks, the operator's indices by kind (deep size) and objects by type. Each answer is one
block on stderr (the operator's log: the process's own files are in its copy-on-write root)."""
import collections, gc, itertools, logging, os, signal, sys, threading, traceback

logging.getLogger("redis_messaging.runtime").setLevel(logging.DEBUG)  # "pass N done in X s; next in"
_SEQ = itertools.count(1)


def _threads():
    out = []
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out.append(f"thread\t{t.native_id}\t{t.name}\t{int(fields[11]) + int(fields[12])}")
        except (OSError, TypeError):
            pass
    return out


def _deep(obj, seen):
    size, stack = 0, [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        size += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
    return size


def _full():
    out = _threads()
    tops = collections.Counter()
    for frame in sys._current_frames().values():
        stack = traceback.extract_stack(frame)
        ours = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in stack
                if "redis_messaging" in f.filename or "/kopf/" in f.filename]
        last = stack[-1]
        tops[" <- ".join(reversed(ours[-2:])) + f" | {os.path.basename(last.filename)}:{last.lineno} {last.name}"] += 1
    out += [f"stack\t{n}\t{where}" for where, n in tops.most_common(12)]
    from redis_messaging.runtime import operator as runtime
    op = runtime.current()
    if op is not None:
        out.append(f"controllers\t{len(op.controllers)}")
        seen = set()
        for kind, index in op.indices._by_kind.items():
            entries = [o for key in list(index.keys()) for o in list(index.get(key) or [])]
            size = sum(_deep(o, seen) for o in entries)
            out.append(f"index\t{kind}\t{len(entries)}\t{size}")
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    out += [f"type\t{name}\t{n}" for name, n in types.most_common(10)]
    return out


def _answer(seq, what):
    try:
        lines = what()
    except Exception as exc:
        lines = [f"error\t{exc!r}"]
    block = "".join(f"RMSG-DIAG {seq}\t{line}\n" for line in [*lines, "end"])
    os.write(2, block.encode())  # one write: not interleaved with the log's lines


def _on(what):
    return lambda *_: threading.Thread(target=_answer, args=(next(_SEQ), what), daemon=True).start()


signal.signal(signal.SIGUSR2, _on(_threads))
signal.signal(signal.SIGUSR1, _on(_full))
'''


class Diagnosis:
    """Asks the operator (through the hook) for its threads' CPU time, stacks and index sizes; the answers
    are read from its log, and kept in ``directory``."""

    def __init__(self, directory: Path, pid: int, log_path: Path) -> None:
        self.dir = directory
        self.pid = pid
        self.log_path = log_path
        self.count = 0

    @staticmethod
    def install(directory: Path) -> dict[str, str]:
        """The hook's module in ``directory``; the operator's environment that loads it."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sitecustomize.py").write_text(DIAG_HOOK)
        return {"PYTHONPATH": f"{ROOT / 'operator'}:{directory}"}

    def ask(self, full: bool, name: str) -> list[list[str]]:
        self.count += 1
        prefix = f"RMSG-DIAG {self.count}\t"
        offset = self.log_path.stat().st_size
        os.kill(self.pid, signal.SIGUSR1 if full else signal.SIGUSR2)

        def answer() -> list[str] | None:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            lines = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
            return lines if lines and lines[-1] == "end" else None

        try:
            lines = eventually(answer, timeout=120, interval=0.2, what=f"the operator's answer {self.count}")
        except TimeoutError:
            return []
        (self.dir / f"{self.count:02d}-{name}.tsv").write_text("\n".join(lines) + "\n")
        return [line.split("\t") for line in lines[:-1]]


def thread_group(name: str) -> str:
    """`failover-watch ns/name` -> `failover-watch`, `pass_3` -> `pass`, `ThreadPoolExecutor-0_5` -> ..."""
    return re.sub(r"[_-]\d+$", "", name.split(" ", 1)[0])


def thread_cpu(before: list[list[str]], after: list[list[str]], seconds: float) -> list[tuple[str, int, float]]:
    """(group, threads, cores) between two answers, busiest first."""
    was = {row[1]: int(row[3]) for row in before if row[0] == "thread"}
    groups: dict[str, list[float]] = {}
    for row in after:
        if row[0] == "thread":
            used = (int(row[3]) - was.get(row[1], 0)) / CLK_TCK / seconds
            groups.setdefault(thread_group(row[2]), []).append(used)
    return sorted(((g, len(v), sum(v)) for g, v in groups.items()), key=lambda x: -x[2])


LOG_PASS = re.compile(r"^(\S+ \S+) DEBUG redis_messaging\.runtime\.controller: \S+: pass \d+ done in ([0-9.]+)s")


def pass_durations(log_path: Path, since: float, until: float) -> list[float]:
    """Pass durations the operator logged (DEBUG, with --diagnose) between two times."""
    out = []
    with log_path.open(errors="replace") as f:
        for line in f:
            m = LOG_PASS.match(line)
            if m:
                at = time.mktime(time.strptime(m.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S"))
                if since <= at <= until:
                    out.append(float(m.group(2)))
    return out


# --------------------------------------------------------------------------------------------------
# the audit log


def stamp(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


class AuditLog:
    """Reads the API server's audit log from where it was last read, keeping the events of one user."""

    def __init__(self, path: Path, user: str) -> None:
        self.path = path
        self.user = user
        self.needle = json.dumps(user).encode()
        self.offset = 0

    def skip(self) -> None:
        """Forget what is in the file now."""
        with contextlib.suppress(FileNotFoundError):
            self.offset = self.path.stat().st_size

    def read(self) -> Iterator[Obj]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            while True:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break  # a line being written: read again next time
                self.offset += len(line)
                if self.needle not in line:
                    continue
                event = json.loads(line)
                if (event.get("user") or {}).get("username") == self.user:
                    yield event

    def requests(self, since: float, until: float) -> list[Obj]:
        """One event per request of the user received between ``since`` and ``until`` (epoch seconds)."""
        seen: dict[str, Obj] = {}
        for event in self.read():
            received = stamp(event["requestReceivedTimestamp"])
            if since <= received <= until:
                seen.setdefault(event["auditID"], event)
        return list(seen.values())


def describe(event: Obj) -> str:
    ref = event.get("objectRef") or {}
    what = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return f"{event.get('verb')} {what or event.get('requestURI')}"


# --------------------------------------------------------------------------------------------------
# the cluster's side: kwok-only nodes, resources, watches


def add_kwok_nodes(api: KubeApi, count: int, timeout: float = 120.0) -> None:
    """``count`` nodes kwok keeps Ready and the pod runner does not know (its nodes are fixed at start),
    tainted so that only pods that tolerate it go there."""
    taint = {"key": KWOK_ONLY, "value": "true", "effect": "NoSchedule"}
    blocks = KWOK_ONLY_SUBNET.subnets(new_prefix=25)
    names_ = [f"kwok-only-{i}" for i in range(count)]
    for i, name in enumerate(names_):
        cidr = str(next(blocks))
        api.create("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                KWOK_ONLY: "true", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": f"zone-{i % 3}", "type": "kwok"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": [taint]},
        })
    deadline = time.monotonic() + timeout
    pending = set(names_)
    while pending:
        listing = api.request("GET", "/api/v1/nodes", query={"labelSelector": f"{KWOK_ONLY}=true"})
        for node in listing["items"]:
            name = node["metadata"]["name"]
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (node.get("status") or {}).get("conditions") or [])
            if name in pending and ready:
                # no node lifecycle controller runs: the not-ready taint of admission goes, ours stays
                api.patch(f"/api/v1/nodes/{quote(name)}", {"spec": {"taints": [taint]}}, kind="merge-patch")
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} kwok-only nodes not Ready within {timeout:g}s")
        time.sleep(0.5)


def resource(name: str, real: bool, volumes: bool = True) -> Obj:
    spec: Obj = {"mode": "sentinel", "image": REAL_IMAGE if real else UNPLAYED_IMAGE,
                 "redis": {"replicas": 3}, "sentinel": {"replicas": 3, "quorum": 2},
                 "persistence": {"mode": "aof", "storage": {"size": "1Gi"}} if volumes else {"mode": "none"}}
    if real:
        spec["sentinel"]["downAfterMilliseconds"] = 2000  # a shorter wait for each failover of the bench
    else:
        spec["pod"] = {"nodeSelector": {KWOK_ONLY: "true"},
                       "tolerations": [{"key": KWOK_ONLY, "operator": "Exists", "effect": "NoSchedule"}]}
    return {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class Res:
    namespace: str
    name: str
    real: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        return f"{RM_PATH}/namespaces/{self.namespace}/{models.PLURAL}/{self.name}"


def plan(count: int, real: int) -> list[Res]:
    """``count`` resources in creation order, the ``real`` ones spread evenly among them."""
    real = min(real, count)
    real_at = {i * count // real for i in range(real)} if real else set()
    out, r, k = [], 0, 0
    for i in range(count):
        if i in real_at:
            out.append(Res(REAL_NS, f"real-{r:02d}", True))
            r += 1
        else:
            out.append(Res(KWOK_NS, f"kwok-{k:04d}", False))
            k += 1
    return out


def condition(obj: Obj | None, type_: str) -> str | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def settled(rm: Obj | None) -> bool:
    """The operator has written a status for the resource's generation."""
    if rm is None:
        return False
    return bool((rm.get("status") or {}).get("observedGeneration") == rm["metadata"].get("generation"))


class Watches:
    """Watches on the host: the resources, their StatefulSets, and the real resources' pods (role label
    changes, with the time each was seen)."""

    def __init__(self, api: KubeApi) -> None:
        self.rms = Reflector(api, f"{RM_PATH}/{models.PLURAL}", self._noop, name="scale-rms")
        self.sts = Reflector(api, "/apis/apps/v1/statefulsets", self._sts, name="scale-sts")
        self.pods = Reflector(api, f"/api/v1/namespaces/{REAL_NS}/pods", self._pod, name="scale-real-pods")
        self.lock = threading.Lock()
        self.generations: dict[str, list[tuple[float, int]]] = {}  # ns/sts -> (seen at, generation)
        self.roles: list[tuple[float, str, str | None]] = []  # (seen at, pod, role label)

    def start(self) -> Watches:
        for r in (self.rms, self.sts, self.pods):
            r.start()
            r.wait_synced(30)
        return self

    def stop(self) -> None:
        for r in (self.rms, self.sts, self.pods):
            r.request_stop()

    def _noop(self, key: str, old: Obj | None, new: Obj | None) -> None:
        pass

    def _sts(self, key: str, old: Obj | None, new: Obj | None) -> None:
        if new is not None:
            now = time.time()
            generation = int(new["metadata"].get("generation") or 0)
            with self.lock:
                seen = self.generations.setdefault(key, [])
                if not seen or seen[-1][1] != generation:
                    seen.append((now, generation))

    def _pod(self, key: str, old: Obj | None, new: Obj | None) -> None:
        role = ((new or {}).get("metadata", {}).get("labels") or {}).get(names.LABEL_ROLE)
        was = ((old or {}).get("metadata", {}).get("labels") or {}).get(names.LABEL_ROLE)
        if role != was:
            with self.lock:
                self.roles.append((time.time(), key.split("/", 1)[1], role))

    def generation(self, key: str) -> int:
        with self.lock:
            seen = self.generations.get(key) or [(0.0, 0)]
            return seen[-1][1]

    def generation_after(self, key: str, generation: int) -> float | None:
        with self.lock:
            return next((t for t, g in self.generations.get(key, []) if g > generation), None)


def eventually(check: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --------------------------------------------------------------------------------------------------
# one run


@dataclass
class Options:
    count: int
    real: int
    resync: float
    settle: float
    idle: float
    changes: int
    failovers: int
    create_timeout: float
    kwok_volumes: bool = False
    operator_env: dict[str, str] = field(default_factory=dict)
    diagnose: Path | None = None
    progress_every: float = 15.0


@dataclass
class Figures:
    n: int
    real: int
    resync: float
    notes: list[str] = field(default_factory=list)
    create_seconds: float | None = None
    create_cpu: float = math.nan
    create_rss_peak: float = math.nan
    create_load: str = ""
    create_requests: int | None = None
    components: dict[str, float] = field(default_factory=dict)
    idle_seconds: float = 0.0
    idle_cpu: float = math.nan
    idle_rss: float = math.nan
    idle_threads: int = 0
    idle_load: str = ""
    idle_requests: int | None = None
    idle_breakdown: list[tuple[str, int]] = field(default_factory=list)
    idle_log_lines: float = math.nan  # operator log lines per minute at idle
    diag: list[str] = field(default_factory=list)
    spec: list[float] = field(default_factory=list)
    spec_slowest: list[tuple[float, str]] = field(default_factory=list)
    spec_load: str = ""
    failover: list[float] = field(default_factory=list)
    failover_first: list[float] = field(default_factory=list)
    failover_load: str = ""
    phases: dict[str, float] = field(default_factory=dict)


class Run:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.res = plan(opts.count, opts.real)
        self.real = [r for r in self.res if r.real]
        self.fig = Figures(opts.count, len(self.real), opts.resync)

    def say(self, text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def __call__(self) -> Figures:
        opts = self.opts
        kwok_pods = PODS_PER_RESOURCE * (opts.count - len(self.real))
        began = time.monotonic()
        # three ClusterIP Services a resource: more than the 254 addresses of the local cluster's /24
        ip_range = f"--service-cluster-ip-range={SERVICE_RANGE}"
        with LocalCluster(names_in=lambda ns: ns != KWOK_NS, apiserver_args=[ip_range],
                          controller_manager_args=CONTROLLER_MANAGER_ARGS, operator_in="process") as cluster:
            self.fig.phases["cluster up"] = time.monotonic() - began
            assert cluster.api is not None
            assert cluster.control_plane is not None
            self.cluster, self.api = cluster, cluster.api
            if kwok_pods:
                step = time.monotonic()
                cluster.add_kwok(f"{KWOK_ONLY}=true", KWOK_ONLY_PARALLELISM)
                add_kwok_nodes(cluster.api, math.ceil(kwok_pods / PODS_PER_KWOK_NODE))
                self.fig.phases["kwok-only nodes"] = time.monotonic() - step
            for ns in (REAL_NS, KWOK_NS):
                cluster.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": ns}})
            env = {"REDIS_MESSAGING_RESYNC_SECONDS": f"{opts.resync:g}"} if opts.resync != 30 else {}
            env.update(opts.operator_env)
            if opts.diagnose is not None:
                env.update(Diagnosis.install(opts.diagnose / f"n{opts.count}"))
            cluster.start_operator(env)
            pid = operator_pid(cluster)
            self.diagnosis = (Diagnosis(opts.diagnose / f"n{opts.count}", pid, cluster.operator_log_path)
                              if opts.diagnose else None)
            assert cluster.operator_user is not None
            self.audit = AuditLog(cluster.control_plane.audit_log_path, cluster.operator_user)
            self.watches = Watches(cluster.api).start()
            self.sampler = Sampler(pid).start()
            self.components = component_pids(cluster)
            self.components["operator"] = pid
            try:
                self.create()
                self.idle()
                if self.real and opts.failovers:
                    self.failovers()
                if opts.changes:
                    self.spec_changes()
            finally:
                self.sampler.stop()
                self.watches.stop()
                if cluster.operator is not None and not cluster.operator.alive():
                    self.fig.notes.append("the operator exited during the run; its log's end:\n"
                                          + cluster.operator_log(40))
                down = time.monotonic()
        self.fig.phases["cluster down"] = time.monotonic() - down
        return self.fig

    # ---- creating N at once ------------------------------------------------------------------------

    def state(self) -> dict[str, int]:
        rms = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in self.watches.rms.items()}
        assert self.cluster.runner is not None
        assert self.cluster.provisioner is not None
        pods = self.cluster.runner.reflector.items()
        claims = self.cluster.provisioner.claims.items()
        return {
            "resources": len(rms),
            "with status": sum(settled(rms.get(r.key)) for r in self.res),
            "real Ready": sum(condition(rms.get(r.key), "Ready") == "True" for r in self.real),
            "statefulsets": len(self.watches.sts.items()),
            "claims": len(claims),
            "claims bound": sum((c.get("status") or {}).get("phase") == "Bound" for c in claims),
            "pods": len(pods),
            "scheduled": sum(bool(p["spec"].get("nodeName")) for p in pods),
            "running": sum((p.get("status") or {}).get("phase") == "Running" for p in pods),
        }

    def done(self, state: dict[str, int]) -> bool:
        n = self.opts.count
        return (state["with status"] == n and state["real Ready"] == len(self.real)
                and state["running"] == PODS_PER_RESOURCE * n)

    def create(self) -> None:
        opts, fig = self.opts, self.fig
        self.say(f"creating {opts.count} resources at once ({len(self.real)} real)")
        self.audit.skip()
        cpu_before = cpu_of(self.components)
        start = time.time()

        def post(r: Res) -> None:
            body = resource(r.name, r.real, volumes=r.real or opts.kwok_volumes)
            self.api.request("POST", f"{RM_PATH}/namespaces/{r.namespace}/{models.PLURAL}", body)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(post, self.res))
        self.say(f"{opts.count} created in {time.time() - start:.1f}s")
        deadline = time.monotonic() + opts.create_timeout
        shown = time.monotonic()
        while True:
            state = self.state()
            if self.done(state):
                break
            self.alive()
            if time.monotonic() - shown >= opts.progress_every:
                shown = time.monotonic()
                s = self.sampler.samples[-1]
                self.say(", ".join(f"{k} {v}" for k, v in state.items())
                         + f"; operator {s.rss_mib:.0f} MiB, load {load()}")
            if time.monotonic() > deadline:
                # The idle and reaction figures are still taken: they measure the operator as it is with
                # what did not settle (pods not running, resources not Ready), which the note names.
                fig.notes.append(f"not settled within {opts.create_timeout:g}s of the creation (the figures "
                                 f"below were taken anyway): {state}")
                self.say(f"NOT settled within {opts.create_timeout:g}s: {state}; measuring anyway")
                self.creation_figures(start, cpu_before)
                return
            time.sleep(1)
        self.creation_figures(start, cpu_before)
        self.say(f"settled after {fig.create_seconds:.0f}s: {state}")

    def creation_figures(self, start: float, cpu_before: dict[str, float]) -> None:
        fig = self.fig
        end = time.time()
        self.sampler.sample()
        fig.create_seconds = end - start
        fig.create_cpu, fig.create_rss_peak, _ = self.sampler.window(start, end)
        fig.create_load = load()
        cpu_after = cpu_of(self.components)
        fig.components = {k: (cpu_after[k] - cpu_before[k]) / (end - start) for k in cpu_after if k in cpu_before}
        fig.create_requests = len(self.audit.requests(start, end))
        fig.phases["create"] = end - start
        if self.diagnosis is not None:
            durations = pass_durations(self.cluster.operator_log_path, start, end)
            if durations:
                fig.diag.append(f"passes while creating: {len(durations)}, p50 {percentile(durations, 50):.3f} s, "
                                f"p90 {percentile(durations, 90):.3f} s, max {max(durations):.3f} s")

    def alive(self) -> None:
        operator = self.cluster.operator
        if operator is None or not operator.alive():
            raise RuntimeError(f"the operator exited:\n{self.cluster.operator_log(60)}")

    # ---- idle ------------------------------------------------------------------------------------

    def idle(self) -> None:
        opts, fig = self.opts, self.fig
        self.say(f"settling {opts.settle:g}s (passes that wait on unreachable pods back off to the "
                 f"{opts.resync:g}s period), then idle for {opts.idle:g}s")
        time.sleep(opts.settle)
        self.alive()
        self.audit.skip()
        threads_before = self.diagnosis.ask(False, "idle-start") if self.diagnosis else []
        log_from = self.cluster.operator_log_path.stat().st_size
        start = time.time()
        self.sampler.sample()
        time.sleep(opts.idle)
        self.sampler.sample()
        end = time.time()
        fig.idle_log_lines = self.log_lines(log_from) / ((end - start) / 60)
        if self.diagnosis is not None:
            after = self.diagnosis.ask(True, "idle-end")
            fig.diag += [f"idle CPU by thread: {g} x{n}: {cores:.3f} core"
                         for g, n, cores in thread_cpu(threads_before, after, end - start)[:6]]
            fig.diag += [f"indices: {row[1]}: {row[2]} objects, {int(row[3]) / 2**20:.1f} MiB (deep size)"
                         for row in after if row[0] == "index"]
            fig.diag += [f"stacks: {row[1]} x {row[2]}" for row in after if row[0] == "stack"][:6]
            durations = pass_durations(self.cluster.operator_log_path, start, end)
            if durations:
                fig.diag.append(f"passes at idle: {len(durations)}, p50 {percentile(durations, 50):.3f} s, "
                                f"p90 {percentile(durations, 90):.3f} s, max {max(durations):.3f} s")
        time.sleep(2)  # the last requests' events reach the file
        events = self.audit.requests(start, end)
        fig.idle_seconds = end - start
        fig.idle_cpu, _, fig.idle_rss = self.sampler.window(start, end)
        fig.idle_threads = self.sampler.samples[-1].threads
        fig.idle_load = load()
        fig.idle_requests = len(events)
        fig.idle_breakdown = Counter(describe(e) for e in events).most_common(8)
        fig.phases["settle + idle"] = opts.settle + opts.idle + 2
        self.say(f"idle: {fig.idle_cpu:.3f} core, {fig.idle_rss:.0f} MiB, {len(events)} requests "
                 f"in {fig.idle_seconds:.0f}s ({', '.join(f'{k}: {v}' for k, v in fig.idle_breakdown)})")

    def log_lines(self, offset: int) -> int:
        """Lines the operator logged since ``offset``."""
        with self.cluster.operator_log_path.open("rb") as f:
            f.seek(offset)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    # ---- failovers -------------------------------------------------------------------------------

    def password(self, r: Res) -> str:
        secret = self.api.get(f"/api/v1/namespaces/{r.namespace}/secrets/{r.name}-auth")
        assert secret is not None
        return base64.b64decode(secret["data"]["password"]).decode()

    def sentinel(self, r: Res, i: int, password: str) -> Redis:
        assert self.cluster.runner is not None
        ip = self.cluster.runner.pod_ip(r.namespace, f"{r.name}-sentinel-{i}")
        return Redis(host=ip, port=SENTINEL_PORT, password=password, socket_timeout=2, decode_responses=True)

    def healthy(self, r: Res, password: str) -> str | None:
        """The master when the resource is Ready, labelled, and every Sentinel sees two good replicas."""
        rm = self.watches.rms.get(r.key)
        if condition(rm, "Ready") != "True":
            return None
        master = (rm or {}).get("status", {}).get("master")
        labelled = [p["metadata"]["name"] for p in self.watches.pods.items()
                    if (p["metadata"].get("labels") or {}).get(names.LABEL_INSTANCE) == r.name
                    and (p["metadata"].get("labels") or {}).get(names.LABEL_ROLE) == names.ROLE_MASTER]
        if labelled != [master]:
            return None
        for i in range(3):
            try:
                with self.sentinel(r, i, password) as s:
                    info = s.execute_command("SENTINEL MASTER", r.name, return_responses=True)
                    replicas = s.execute_command("SENTINEL SLAVES", r.name)
            except (RedisError, OSError):
                return None
            if info.get("flags") != "master" or len(replicas) != 2:
                return None
            if any(rep.get("flags") != "slave" or rep.get("master-link-status") != "ok" for rep in replicas):
                return None
        return str(master)

    def failovers(self) -> None:
        opts, fig = self.opts, self.fig
        self.say(f"{opts.failovers} failovers over {len(self.real)} real resources")
        began = time.monotonic()
        for k in range(opts.failovers):
            r = self.real[k % len(self.real)]
            try:
                share, first, listened = self.failover(r)
            except TimeoutError as exc:
                fig.notes.append(f"failover {k + 1} of {r.key}: {exc}")
                self.say(f"failover {k + 1} of {r.key}: {exc}")
                continue
            fig.failover.append(share)
            fig.failover_first.append(first)
            self.say(f"failover {k + 1}/{opts.failovers} of {r.key}: labels moved {share * 1000:.0f} ms after "
                     f"+switch-master reached {listened}'s subscribers ({first * 1000:.0f} ms after the first "
                     f"Sentinel's)")
        fig.failover_load = load()
        fig.phases["failovers"] = time.monotonic() - began

    def failover(self, r: Res) -> tuple[float, float, str]:
        assert self.cluster.runner is not None
        password = self.password(r)
        master = eventually(lambda: self.healthy(r, password), timeout=180, interval=1,
                            what=f"{r.key} healthy before the failover")
        arrived: dict[int, float] = {}
        switched: dict[int, str] = {}
        stop = threading.Event()
        subscribers = [self.sentinel(r, i, password) for i in range(3)]
        pubsubs = []
        mine: set[int] = set()
        for i, s in enumerate(subscribers):
            p = s.pubsub(ignore_subscribe_messages=True)
            p.subscribe("+switch-master")
            sock = p.connection._sock if p.connection is not None else None
            if sock is not None:
                mine.add(sock.getsockname()[1])
            pubsubs.append((i, p))

        def listen(i: int, p: Any) -> None:
            while not stop.is_set():
                try:
                    message = p.get_message(timeout=0.05)
                except (RedisError, OSError):
                    return
                if message and message.get("type") == "message":
                    arrived.setdefault(i, time.time())
                    switched.setdefault(i, str(message["data"]))

        threads = [threading.Thread(target=listen, args=(i, p), daemon=True) for i, p in pubsubs]
        for t in threads:
            t.start()
        try:
            # the Sentinel the operator's watch listens to: a pub/sub client that is not ours
            listened: int | None = None
            for i, s in enumerate(subscribers):
                with contextlib.suppress(RedisError, OSError):
                    for client in s.client_list(_type="pubsub"):
                        if int(str(client.get("addr", ":0")).rsplit(":", 1)[1]) not in mine:
                            listened = i
            old_roles = len(self.watches.roles)
            worker = self.cluster.runner.worker(r.namespace, master)
            worker.hold("redis")  # down until the failover is over (restarted at once, it would be back in 0.5 s)
            worker.kill_container("redis", signal.SIGKILL)
            eventually(lambda: (listened in arrived) if listened is not None else arrived, timeout=60, interval=0.02,
                       what=f"+switch-master of {r.key} after {master} was killed")
            words = next(iter(switched.values())).split()
            new = words[3].split(".", 1)[0]
            if not new.startswith(f"{r.name}-redis-"):  # an IP: find its pod
                new = next(f"{r.name}-redis-{i}" for i in range(3)
                           if self.cluster.runner.pod_ip(r.namespace, f"{r.name}-redis-{i}") == words[3])

            def moved() -> float | None:
                with self.watches.lock:
                    changes = self.watches.roles[old_roles:]
                t_new = next((t for t, pod, role in changes if pod == new and role == names.ROLE_MASTER), None)
                t_old = next((t for t, pod, role in changes if pod == master and role != names.ROLE_MASTER), None)
                return max(t_new, t_old) if t_new is not None and t_old is not None else None

            labels = eventually(moved, timeout=30, interval=0.02, what=f"role labels of {r.key} moved to {new}")
            time.sleep(0.5)  # the other Sentinels' messages, for the first one's time
        finally:
            with contextlib.suppress(PodNotFound):
                self.cluster.runner.worker(r.namespace, master).release("redis")
            stop.set()
            for t in threads:
                t.join(1)
            for _, p in pubsubs:
                with contextlib.suppress(RedisError, OSError):
                    p.close()
            for s in subscribers:
                s.close()
        reference = arrived[listened] if listened is not None else min(arrived.values())
        where = f"sentinel-{listened}" if listened is not None else "the first Sentinel (the operator's unknown)"
        return labels - reference, labels - min(arrived.values()), where

    # ---- spec changes ----------------------------------------------------------------------------

    def spec_changes(self) -> None:
        opts, fig = self.opts, self.fig
        chosen = [self.res[(k * len(self.res)) // opts.changes % len(self.res)] for k in range(opts.changes)]
        self.say(f"{opts.changes} spec changes over {len(set(chosen))} resources, one at a time")
        began = time.monotonic()
        for k, r in enumerate(chosen):
            sts = f"{r.namespace}/{r.name}-redis"
            before = self.watches.generation(sts)
            sent = time.time()
            self.api.patch(r.path, {"spec": {"redis": {"config": {"maxmemory-samples": str(5 + k % 5 + 1)}}}},
                           kind="merge-patch")
            try:
                seen = eventually(lambda sts=sts, before=before: self.watches.generation_after(sts, before),
                                  timeout=60, interval=0.02, what=f"StatefulSet {sts} updated")
            except TimeoutError as exc:
                fig.notes.append(f"spec change {k + 1} of {r.key}: {exc}")
                continue
            fig.spec.append(seen - sent)
            fig.spec_slowest = sorted([*fig.spec_slowest, (seen - sent, r.key)], reverse=True)[:3]
            time.sleep(random.uniform(0.2, 1.0))
        fig.spec_load = load()
        fig.phases["spec changes"] = time.monotonic() - began
        if fig.spec:
            self.say(f"spec change -> StatefulSet: p50 {percentile(fig.spec, 50) * 1000:.0f} ms, "
                     f"p99 {percentile(fig.spec, 99) * 1000:.0f} ms over {len(fig.spec)}")


# --------------------------------------------------------------------------------------------------
# the report


def missing(fig: Figures, opts: Options) -> list[str]:
    """What the run did not reach that ``opts`` asked for: the creation settled, and every figure."""
    out = []
    if fig.create_seconds is None:
        out.append("no creation figures")
    out += [n.split(":", 1)[0] for n in fig.notes if n.startswith("not settled within")]
    if fig.idle_requests is None:
        out.append("no idle figures")
    if opts.failovers and fig.real and len(fig.failover) < opts.failovers:
        out.append(f"{opts.failovers - len(fig.failover)} of {opts.failovers} failovers not measured")
    if opts.changes and len(fig.spec) < opts.changes:
        out.append(f"{opts.changes - len(fig.spec)} of {opts.changes} spec changes not measured")
    out += [n.split("\n", 1)[0].rstrip(":") for n in fig.notes if n.startswith("the operator exited")]
    return out


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def report(fig: Figures) -> list[str]:
    per_minute = 60.0 / fig.resync  # one request per resource per period, per minute
    lines = [f"N = {fig.n} ({fig.real} with real Redis, {fig.n - fig.real} kwok-only); safety-net period "
             f"{fig.resync:g} s" + ("" if fig.resync == 30 else " (REDIS_MESSAGING_RESYNC_SECONDS, shortened)")]
    rows: list[tuple[str, str, str, str, str]] = []

    def row(what: str, value: str, target: str, ok: bool | None, at: str) -> None:
        rows.append((what, value, target, verdict(ok) if target else "", at))

    nan = math.isnan
    if fig.create_seconds is not None:
        row(f"RSS while creating (peak, {fig.create_seconds:.0f} s)", f"{fig.create_rss_peak:.0f} MiB",
            f"< {RSS_TARGET_MIB:.0f} MiB", None if nan(fig.create_rss_peak) else fig.create_rss_peak < RSS_TARGET_MIB,
            fig.create_load)
        row("CPU while creating (mean)", f"{fig.create_cpu:.2f} core", "", None, fig.create_load)
        if fig.create_requests is not None:
            row("API requests while creating", f"{fig.create_requests / fig.n:.1f} / resource", "", None,
                fig.create_load)
    if fig.idle_requests is not None:
        row(f"RSS at idle ({fig.idle_threads} threads)", f"{fig.idle_rss:.0f} MiB", f"< {RSS_TARGET_MIB:.0f} MiB",
            fig.idle_rss < RSS_TARGET_MIB, fig.idle_load)
        row(f"CPU at idle (over {fig.idle_seconds:.0f} s)", f"{fig.idle_cpu:.3f} core", f"< {IDLE_CPU_TARGET} core",
            fig.idle_cpu < IDLE_CPU_TARGET, fig.idle_load)
        rate = fig.idle_requests / fig.n / (fig.idle_seconds / 60)
        row("API requests at idle", f"{rate:.3f} / resource / min ({fig.idle_requests} in {fig.idle_seconds:.0f} s)",
            f"<= {per_minute:.2f} (1 per period)", rate <= per_minute, fig.idle_load)
    if fig.spec:
        p50, p99 = percentile(fig.spec, 50), percentile(fig.spec, 99)
        row(f"spec change -> StatefulSet ({len(fig.spec)})", f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
            f"p99 < {SPEC_P99_TARGET:g} s", p99 < SPEC_P99_TARGET, fig.spec_load)
    if fig.failover:
        p50, p99 = percentile(fig.failover, 50), percentile(fig.failover, 99)
        row(f"+switch-master -> labels ({len(fig.failover)})", f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
            f"p99 < {FAILOVER_P99_TARGET * 1000:.0f} ms", p99 < FAILOVER_P99_TARGET, fig.failover_load)
        f50, f99 = percentile(fig.failover_first, 50), percentile(fig.failover_first, 99)
        row("  (from the first Sentinel's message)", f"p50 {f50 * 1000:.0f} ms, p99 {f99 * 1000:.0f} ms", "", None,
            fig.failover_load)
    head = ("figure", "value", "target", "", "load 1/5/15 min")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if fig.idle_breakdown:
        lines.append("  requests at idle: " + ", ".join(f"{k} x{v}" for k, v in fig.idle_breakdown))
    if not math.isnan(fig.idle_log_lines):
        lines.append(f"  operator log at idle: {fig.idle_log_lines:.0f} lines/min")
    if fig.spec_slowest:
        lines.append("  slowest spec changes: " + ", ".join(f"{k} {t * 1000:.0f} ms" for t, k in fig.spec_slowest))
    if fig.components:
        lines.append("  CPU while creating, cores: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(fig.components.items(), key=lambda kv: -kv[1])))
    lines.append("  phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in fig.phases.items()))
    lines += [f"  diagnosis: {d}" for d in fig.diag]
    lines += [f"  note: {n}" for n in fig.notes]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10,100,1000", help="numbers of resources, one run each")
    parser.add_argument("--real", type=int, default=20, help="resources with real Redis processes in each run")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds: N = 3, one real, short phases")
    parser.add_argument("--resync", type=float, default=None,
                        help="the operator's safety-net period (REDIS_MESSAGING_RESYNC_SECONDS; default its own, 30)")
    parser.add_argument("--settle", type=float, default=None, help="seconds between settled and the idle window "
                        "(default two periods)")
    parser.add_argument("--idle", type=float, default=None, help="seconds of the idle window (default two periods)")
    parser.add_argument("--changes", type=int, default=30, help="spec changes per run")
    parser.add_argument("--failovers", type=int, default=20, help="failovers per run")
    parser.add_argument("--kwok-volumes", action="store_true",
                        help="kwok-only resources with persistent volumes too (default: persistence none; their "
                        "claims are bound by the local cluster's provisioner and kube-controller-manager's binder "
                        "at a few per second)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the operator, e.g. REDIS_MESSAGING_MAX_CONCURRENT_PASSES=32")
    parser.add_argument("--create-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long the creation may take to settle before the figures are taken anyway "
                        "(default 300 s + 1.5 s per resource)")
    parser.add_argument("--diagnose", type=Path, default=None, metavar="DIR",
                        help="load a hook into the operator (sitecustomize in DIR; DEBUG log of its runtime) and "
                        "report its threads' CPU at idle, its index sizes and pass durations")
    args = parser.parse_args()
    if args.smoke:
        args.counts, args.real, args.changes, args.failovers = "3", 1, 3, 1
        args.resync = args.resync or 5.0
        args.settle = 5.0 if args.settle is None else args.settle
        args.idle = 10.0 if args.idle is None else args.idle
    resync = args.resync or 30.0
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    reason = missing_requirements()
    if reason:
        sys.exit(f"the local cluster cannot run here: {reason}")
    if not 0 <= args.real <= 25:
        sys.exit("--real: at most 25 (the local cluster's three nodes hold about 180 pods with an IP each)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kubeapi").setLevel(logging.ERROR)  # a watch re-listing (e.g. while the CRD settles)
    began = time.monotonic()
    reports = []
    for n in counts:
        opts = Options(count=n, real=min(args.real, n), resync=resync,
                       settle=2 * resync if args.settle is None else args.settle,
                       idle=max(60.0, 2 * resync) if args.idle is None else args.idle,
                       changes=args.changes, failovers=args.failovers,
                       create_timeout=args.create_timeout if args.create_timeout is not None else 300 + 1.5 * n,
                       kwok_volumes=args.kwok_volumes,
                       operator_env=dict(e.split("=", 1) for e in args.operator_env), diagnose=args.diagnose)
        print(f"== N = {n}  (load {load()})", flush=True)
        step = time.monotonic()
        fig = Run(opts)()
        fig.phases["total"] = time.monotonic() - step
        lines = report(fig)
        lines += [f"  INCOMPLETE: {m}" for m in missing(fig, opts)]
        print("\n".join(lines), flush=True)
        reports.append(lines)
    print(f"\n== all runs ({time.monotonic() - began:.0f} s; targets are those of N = 1000 on 2 cores)")
    for lines in reports:
        print("\n".join(lines))
    return 1 if any("  INCOMPLETE: " in line for lines in reports for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One trace of bench/autoscale_sim.py replayed live on the local cluster, next to what the simulator
says of the same arrivals: does the simulator's verdict against KEDA rest on a model that holds?

What runs: the local cluster of e2e/local (a real API server, controller manager and scheduler, the
operator installed by its chart and running as its pod), a RedisMessaging with one Redis and one
Sentinel (the autoscaler reads only the master) declaring the stream and the group with the autoscale
spec the simulator calls **ours** (README's: ``backlogPerReplica`` 100, ``scaleDownStabilizationSeconds``
120, ``idleSecondsBeforeZero`` 300, 0..20 replicas), and examples/streams-autoscaling.yaml's consumer
Deployment: real ``redis_messaging.consumer`` processes, one per pod, each message taking
``HANDLER_SLEEP_MS`` (``--work-ms``), ``CONSUMER_BATCH`` entries per read (``--prefetch``).

The bench XADDs the trace's messages at their arrival times (the simulator's Poisson draws for the
seed, shortened ``--shrink`` times), then waits ``--tail`` seconds, and measures from outside:

* each message's wait from its XADD until the group delivered it (``XINFO GROUPS`` last-delivered-id,
  read every 0.1 s, so a wait is known to about 0.1 s): a consumer took it;
* the largest backlog (lag + pending), replica-seconds (every pod of the Deployment that exists,
  starting or terminating included, counted every 0.25 s), scale events and the most replicas asked
  for (the Deployment's ``spec.replicas``), and the entries not acknowledged at the end (the
  simulator's figure: not processed);
* each new pod's start-up: from the scale-up that asked for it (``spec.replicas``, read every 0.25 s) to
  its consumer's first read (``XINFO CONSUMERS``), and from the pod's first sighting.

Then the simulator replays the same arrivals (the XADD times as sent) with the real ``decide()``, its
consumers given the start-up measured here, the same work per message (constant: the live handler only
sleeps) and the same prefetch, ten times, each with its 2 s ticks at another moment of the trace (when
the live operator's ticks fell is one draw nobody chose, and a scale-down comes a stabilization window
after the highest recommendation: a tick earlier or later moves it). Each figure is printed live, the
simulator's median and its range over the ten, and agrees when the live figure lies within that range
widened by a bound: a wait by 1 s or 25 % (whichever is larger), the largest backlog by 25 %,
replica-seconds by 15 %, scale events by 4, the most replicas by 2, the unprocessed entries by none.
Where they do not agree, it says so: a finding about the model, never hidden.

Known differences, in the model's disfavour or favour: a live pod's start-up varies (several pods
starting at once share two cores), the simulator's is the median; a live consumer told to stop
finishes every entry it holds, the simulator's only the one in flight (the rest stays pending until
the reclaim); the operator had seen the group for a few seconds before the trace began (its
stabilization window is not empty at t = 0 as the simulator's is).

Run: ``.venv/bin/python bench/autoscale_live.py [--trace step] [--shrink 4] [--tail 150] [--seed 1]``
(about 10 minutes with the cluster's start). ``--smoke`` replays the trace 40 times shorter with a 10 s
tail: the same code path in about a minute; CI runs it on the e2e session's local cluster
(e2e/local/test_bench_autoscale_live.py).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import copy
import math
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import _project

ROOT = _project.use(__file__, "e2e", "e2e/local", "tests/support")

import autoscale_sim as simulator  # noqa: E402 - bench/autoscale_sim.py, after the path is set
import localcluster  # noqa: E402
import yaml  # noqa: E402
from e2e_support import GROUP, PLURAL, VERSION  # noqa: E402
from redis.client import Redis  # noqa: E402

NAME = "orders"
STREAM, CONSUMER_GROUP = "orders", "billing"
WORKER = "billing-worker"
PORT = 6379
NAMESPACE = "bench-autoscale-live"
GROUP_POLL_SECONDS = 0.1
POD_POLL_SECONDS = 0.25
READY_TIMEOUT = 300.0

# How close the simulator must come to the live run to agree, per figure.
WAIT_WITHIN_SECONDS, WAIT_WITHIN_SHARE = 1.0, 0.25
BACKLOG_WITHIN_SHARE = 0.25
REPLICA_SECONDS_WITHIN_SHARE = 0.15
REPLICAS_WITHIN = 2
SCALE_EVENTS_WITHIN = 4
PHASES = 10  # the simulator's runs, each with its ticks at another moment of the trace


def say(text: str) -> None:
    print(text, flush=True)


# =============================================================================================
# The resource and its consumers


def resource_spec() -> dict[str, Any]:
    autoscale = simulator.OURS_SPEC.model_dump(by_alias=True, exclude_none=True, mode="json")
    autoscale["target"] = {"kind": "Deployment", "name": WORKER}
    return {"mode": "sentinel", "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1},
            "streams": [{"name": STREAM, "groups": [{"name": CONSUMER_GROUP, "startId": "0",
                                                     "autoscale": autoscale}]}]}


def worker_deployment(replicas: int, work_ms: float, prefetch: int) -> dict[str, Any]:
    """examples/streams-autoscaling.yaml's consumer Deployment, with the bench's work and prefetch."""
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / "streams-autoscaling.yaml").read_text()) if d]
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    assert deployment["metadata"]["name"] == WORKER, "examples/streams-autoscaling.yaml renamed its worker"
    deployment["spec"]["replicas"] = replicas
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = [e for e in container["env"] if e["name"] not in ("HANDLER_SLEEP_MS", "CONSUMER_BATCH")]
    container["env"] = [*env, {"name": "HANDLER_SLEEP_MS", "value": f"{work_ms:g}"},
                        {"name": "CONSUMER_BATCH", "value": str(prefetch)}]
    return deployment


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def pairs(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    items = list(reply)
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# =============================================================================================
# The live run


@dataclass
class Live:
    """What the live run measured."""

    added_at: list[float] = field(default_factory=list)  # seconds since the trace began, per message
    ids: list[tuple[int, int]] = field(default_factory=list)
    delivered_at: list[float] = field(default_factory=list)
    max_backlog: int = 0
    replica_seconds: float = 0.0
    scale_events: int = 0
    max_replicas: int = 0
    unacknowledged: int = 0
    startups: list[float] = field(default_factory=list)  # from the scale-up that asked for the pod
    startups_from_pod: list[float] = field(default_factory=list)  # from the pod's first sighting
    timeline: list[tuple[float, int]] = field(default_factory=list)
    group_polls: int = 0
    pod_polls: int = 0

    def waits(self, end: float) -> list[float]:
        return [(d if d >= 0 else end) - a for a, d in zip(self.added_at, self.delivered_at, strict=True)]


class LiveRun:
    def __init__(self, local: Any, namespace: str, trace: simulator.Trace, times: list[float], *,
                 work_ms: float, prefetch: int, tail: float) -> None:
        self.local = local
        self.api = local.api
        self.ns = namespace
        self.trace, self.times = trace, times
        self.work_ms, self.prefetch, self.tail = work_ms, prefetch, tail
        self.live = Live()
        self.client: Redis | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.t0 = 0.0

    # -- setting up ---------------------------------------------------------------------------------
    def path(self, kind: str, name: str = "") -> str:
        base = {"rmsg": f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}",
                "deployment": f"/apis/apps/v1/namespaces/{self.ns}/deployments",
                "pod": f"/api/v1/namespaces/{self.ns}/pods",
                "secret": f"/api/v1/namespaces/{self.ns}/secrets"}[kind]
        return f"{base}/{name}" if name else base

    def wait(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                found = check()
            except Exception as exc:  # not there yet: the API or Redis answers later
                found, last = None, exc
            if found:
                return found
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {timeout:g}s" + (f" (last error: {last})" if last else ""))
            time.sleep(interval)

    def ready(self) -> bool:
        body = self.api.get(self.path("rmsg", NAME)) or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def setup(self) -> None:
        self.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": self.ns}})
        self.api.create(self.path("rmsg"), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RedisMessaging",
                                            "metadata": {"name": NAME}, "spec": resource_spec()})
        began = time.monotonic()
        self.wait(f"{self.ns}/{NAME} Ready", self.ready, READY_TIMEOUT, interval=1.0)
        secret = self.api.get(self.path("secret", f"{NAME}-auth")) or {}
        password = base64.b64decode(secret["data"]["password"]).decode() if secret.get("data") else None
        pod = self.api.get(self.path("pod", f"{NAME}-redis-0")) or {}
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            raise RuntimeError(f"{NAME}-redis-0 has no pod IP")
        self.client = Redis(host=ip, port=PORT, password=password, socket_timeout=5, decode_responses=True)
        self.wait("the group created by the operator", lambda: any(
            pairs(g).get("name") == CONSUMER_GROUP for g in self.client_().xinfo_groups(STREAM)), 60)
        say(f"  {self.ns}/{NAME} Ready and its group created {time.monotonic() - began:.0f} s after apply")
        self.api.create(self.path("deployment"), worker_deployment(self.trace.initial_replicas, self.work_ms,
                                                                   self.prefetch))
        if self.trace.initial_replicas:
            self.wait(f"{self.trace.initial_replicas} consumers reading", lambda: len(self.consumers())
                      >= self.trace.initial_replicas, 120)
        say(f"  {WORKER}: {self.trace.initial_replicas} consumer(s) reading; the trace begins")

    def client_(self) -> Redis:
        assert self.client is not None
        return self.client

    def consumers(self) -> set[str]:
        return {str(pairs(c)["name"]) for c in self.client_().xinfo_consumers(STREAM, CONSUMER_GROUP)}

    def teardown(self) -> None:
        """Delete the namespace and wait (up to a minute) until it is gone: on a shared cluster its
        consumers must not go on running into the next test."""
        if self.client is not None:
            self.client.close()
        with contextlib.suppress(Exception):
            self.api.delete(f"/api/v1/namespaces/{self.ns}")
            self.wait(f"namespace {self.ns} deleted", lambda: self.api.get(f"/api/v1/namespaces/{self.ns}") is None,
                      60, interval=1.0)

    # -- the run --------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def produce(self) -> None:
        """XADD every message at its arrival time (those due together in one pipeline)."""
        client, times, i = self.client_(), self.times, 0
        while i < len(times) and not self._stop.is_set():
            wait = times[i] - self.now()
            if wait > 0:
                time.sleep(min(wait, 0.05))
                continue
            due = bisect.bisect_right(times, self.now(), lo=i)
            pipe = client.pipeline(transaction=False)
            for n in range(i, due):
                pipe.xadd(STREAM, {"n": str(n)})
            sent = self.now()
            ids = pipe.execute()
            with self._lock:
                for entry in ids:
                    self.live.ids.append(stream_id(entry))
                    self.live.added_at.append(sent)
                    self.live.delivered_at.append(-1.0)
            i = due

    def watch_group(self) -> None:
        client, live, next_undelivered = self.client_(), self.live, 0
        while not self._stop.is_set():
            at = self.now()
            try:
                group = next(pairs(g) for g in client.xinfo_groups(STREAM) if pairs(g).get("name") == CONSUMER_GROUP)
                named = self.consumers()
            except Exception as exc:  # a slow answer: the next poll
                say(f"  (group not read at t={at:.1f}s: {exc})")
                time.sleep(GROUP_POLL_SECONDS)
                continue
            last = stream_id(str(group["last-delivered-id"]))
            with self._lock:
                while next_undelivered < len(live.ids) and live.ids[next_undelivered] <= last:
                    live.delivered_at[next_undelivered] = at
                    next_undelivered += 1
                for name in named - self.seen_consumers.keys():
                    self.seen_consumers[name] = at
            lag = group.get("lag")
            undelivered = int(lag) if lag is not None else len(live.ids) - next_undelivered
            backlog = int(group.get("pending") or 0) + undelivered
            live.max_backlog = max(live.max_backlog, backlog)
            live.unacknowledged = backlog
            live.group_polls += 1
            time.sleep(max(0.0, GROUP_POLL_SECONDS - (self.now() - at)))

    def watch_pods(self) -> None:
        live, last_at, replicas = self.live, self.now(), None
        while not self._stop.is_set():
            at = self.now()
            try:
                pods = self.api.request("GET", self.path("pod"), query={"labelSelector": f"app={WORKER}"})["items"]
                deployment = self.api.get(self.path("deployment", WORKER)) or {}
            except Exception as exc:  # the next poll
                say(f"  (pods not listed at t={at:.1f}s: {exc})")
                time.sleep(POD_POLL_SECONDS)
                continue
            live.replica_seconds += len(pods) * (at - last_at)
            self.pods_now = len(pods)
            last_at = at
            with self._lock:
                for pod in pods:
                    self.seen_pods.setdefault(pod["metadata"]["name"], at)
            asked = int((deployment.get("spec") or {}).get("replicas") or 0)
            if replicas is not None and asked != replicas:
                live.scale_events += 1
                live.timeline.append((at, asked))
            replicas = asked
            live.max_replicas = max(live.max_replicas, asked)
            live.pod_polls += 1
            time.sleep(max(0.0, POD_POLL_SECONDS - (self.now() - at)))

    def run(self) -> Live:
        self.seen_pods: dict[str, float] = {}
        self.seen_consumers: dict[str, float] = {}
        self.pods_now = self.trace.initial_replicas
        initial = self.consumers()
        self.t0 = time.monotonic()
        self.live.timeline.append((0.0, self.trace.initial_replicas))
        threads = [threading.Thread(target=f, name=f.__name__, daemon=True)
                   for f in (self.produce, self.watch_group, self.watch_pods)]
        for thread in threads:
            thread.start()
        end = self.trace.duration + self.tail
        try:
            while self.now() < end:
                time.sleep(min(5.0, end - self.now()))
                with self._lock:
                    added = len(self.live.ids)
                say(f"  t={self.now():5.0f}s: {added:,} added, backlog {self.live.unacknowledged:,}, "
                    f"{self.pods_now} consumer pods")
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(10)
        timeline = self.live.timeline
        ups = [t for (t, n), (_, before) in zip(timeline[1:], timeline[:-1], strict=True) if n > before]
        for name, read_at in self.seen_consumers.items():
            seen = self.seen_pods.get(name)
            asked = max((t for t in ups if t <= (seen if seen is not None else read_at)), default=None)
            if name in initial or seen is None or asked is None:
                continue
            self.live.startups.append(read_at - asked)
            self.live.startups_from_pod.append(read_at - seen)
        self.live.startups.sort()
        self.live.startups_from_pod.sort()
        return self.live


# =============================================================================================
# The simulator on the same arrivals, and the comparison


def simulate(trace: simulator.Trace, times: list[float], model: simulator.ConsumerModel, tail: float,
             seed: int, phase: int) -> tuple[simulator.Result, list[float]]:
    """The simulator on the live run's arrivals; ``phase`` draws when its ticks fall (the live
    operator's ticks fell at one moment of the trace nobody chose)."""
    works = [model.mean_work] * len(times)  # the live handler sleeps a constant time
    sim = simulator.Sim(trace, times, works, model, trace.duration + tail)
    ours = simulator.Ours(simulator.OURS, simulator.OURS_SPEC)
    ours.attach(sim, random.Random(f"{seed}-{trace.name}-phases-{phase}"))
    sim.run()
    end = trace.duration + tail
    waits = [(d if d >= 0 else end) - a for a, d in zip(times, sim.delivered_at, strict=True)]
    return sim.result(ours.name, ours.reasons), waits


@dataclass(frozen=True)
class Row:
    """One figure: the live run's, and the simulator's over its tick phases."""

    figure: str
    live: float
    sims: tuple[float, ...]
    bound: float  # how far outside the simulator's range the live figure may be and still agree
    unit: str = ""

    @property
    def agrees(self) -> bool:
        return min(self.sims) - self.bound <= self.live <= max(self.sims) + self.bound

    def fmt(self, v: float) -> str:
        return f"{v:,.2f}{self.unit}" if abs(v) < 100 else f"{v:,.0f}{self.unit}"

    def cells(self) -> tuple[str, ...]:
        sims = sorted(self.sims)
        return (self.figure, self.fmt(self.live), self.fmt(statistics.median(sims)),
                f"{self.fmt(sims[0])} .. {self.fmt(sims[-1])}", f"±{self.fmt(self.bound)}",
                "agree" if self.agrees else "DISAGREE")


def compare(live: Live, end: float, sims: list[tuple[simulator.Result, list[float]]]) -> list[Row]:
    waits = live.waits(end)

    def wait_bound(v: float) -> float:
        return max(WAIT_WITHIN_SECONDS, WAIT_WITHIN_SHARE * v)

    p50, p99 = percentile(waits, 0.5), percentile(waits, 0.99)
    return [
        Row("wait until delivered, p50", p50, tuple(percentile(w, 0.5) for _, w in sims), wait_bound(p50), " s"),
        Row("wait until delivered, p99", p99, tuple(percentile(w, 0.99) for _, w in sims), wait_bound(p99), " s"),
        Row("largest backlog", live.max_backlog, tuple(r.max_backlog for r, _ in sims),
            BACKLOG_WITHIN_SHARE * live.max_backlog),
        Row("replica-seconds", live.replica_seconds, tuple(r.replica_seconds for r, _ in sims),
            REPLICA_SECONDS_WITHIN_SHARE * live.replica_seconds),
        Row("scale events", live.scale_events, tuple(r.scale_events for r, _ in sims), SCALE_EVENTS_WITHIN),
        Row("most replicas asked for", live.max_replicas, tuple(r.max_replicas for r, _ in sims), REPLICAS_WITHIN),
        Row("unprocessed at the end", live.unacknowledged, tuple(r.unprocessed for r, _ in sims), 0),
    ]


def print_rows(rows: list[Row]) -> None:
    table = [("figure", "live", "simulator (median)", f"simulator ({PHASES} phases)", "agrees within", ""),
             *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        say("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                             enumerate(zip(line, widths, strict=True))))


def timeline(points: list[tuple[float, int]]) -> str:
    return " ".join(f"{n}@{t:.0f}s" for t, n in points)


# =============================================================================================


def run(local: Any, args: argparse.Namespace) -> int:
    traces = simulator.make_traces(args.seed, args.shrink)
    trace = traces[args.trace]
    planned, _ = simulator.arrivals(trace, args.seed, args.work_ms / 1000, 0.0)
    say(f"autoscale_live: trace {trace.name} ({trace.description}, {args.shrink:g} times shorter: "
        f"{trace.duration:.0f} s, {len(planned):,} messages) + {args.tail:g} s without traffic, seed {args.seed}")
    say(f"  consumers: redis_messaging.consumer, {args.work_ms:g} ms per message, {args.prefetch} per read; "
        f"the group's autoscale: README's ({simulator.OURS})")
    live_run = LiveRun(local, args.namespace, trace, planned, work_ms=args.work_ms, prefetch=args.prefetch,
                       tail=args.tail)
    try:
        live_run.setup()
        live = live_run.run()
    finally:
        live_run.teardown()
    end = trace.duration + args.tail
    if len(live.added_at) != len(planned):
        say(f"the live run added {len(live.added_at):,} of {len(planned):,} messages")
        return 1
    late = max((a - p for a, p in zip(live.added_at, planned, strict=True)), default=0.0)
    startup = statistics.median(live.startups) if live.startups else simulator.ConsumerModel.startup
    say(f"  live: {live.group_polls} group reads, {live.pod_polls} pod lists; XADDs at most {late * 1000:.0f} ms "
        f"behind the trace")
    if live.startups:
        say(f"  live start-up (scale-up -> the new consumer's first read), {len(live.startups)} pods: median "
            f"{startup:.2f} s, min {live.startups[0]:.2f} s, max {live.startups[-1]:.2f} s; from the pod's "
            f"first sighting: median {statistics.median(live.startups_from_pod):.2f} s (polled every "
            f"{POD_POLL_SECONDS:g} s)")
    else:
        say(f"  live start-up: no pod started during the run; the simulator's stays {startup:g} s")
    model = simulator.ConsumerModel(startup=startup, mean_work=args.work_ms / 1000, work_sigma=0.0,
                                    prefetch=args.prefetch)
    sims = [simulate(trace, live.added_at, model, args.tail, args.seed, phase) for phase in range(PHASES)]
    typical = sorted(sims, key=lambda s: s[0].replica_seconds)[PHASES // 2][0]
    say(f"  replicas asked for, live:      {timeline(live.timeline)}")
    say(f"  replicas asked for, simulator: {timeline(typical.replicas)} (its median run by replica-seconds)")
    rows = compare(live, end, sims)
    print_rows(rows)
    agreeing = sum(r.agrees for r in rows)
    say(f"the simulator agrees with the live run on {agreeing} of {len(rows)} figures"
        + ("" if agreeing == len(rows) else
           f" (not on: {', '.join(r.figure for r in rows if not r.agrees)})"))
    if args.smoke:
        say("  --smoke: the trace 40 times shorter; these figures mean nothing")
    return 0


def main(argv: Sequence[str] | None = None, *, local: Any = None) -> int:
    """The command line; ``local``: a running local cluster (with its operator) to use instead of
    bringing one up (the e2e tier's, in CI)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trace", choices=sorted(simulator.make_traces(1)), default="step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shrink", type=float, default=4.0, help="the trace this many times shorter")
    parser.add_argument("--tail", type=float, default=150.0, help="seconds without traffic after the trace")
    parser.add_argument("--work-ms", type=float, default=simulator.ConsumerModel.mean_work * 1000,
                        help="per-message work of the consumers (HANDLER_SLEEP_MS)")
    parser.add_argument("--prefetch", type=int, default=simulator.ConsumerModel.prefetch,
                        help="entries per read (CONSUMER_BATCH)")
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--smoke", action="store_true", help="the trace 40 times shorter, a 10 s tail")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shrink, args.tail = 40.0, 10.0
    if args.shrink < 1 or args.tail < 0:
        parser.error("--shrink must be at least 1 and --tail not negative")
    if local is not None:
        return run(local, args)
    reason = localcluster.missing_requirements()
    if reason:
        print(f"the local cluster cannot run here: {reason}", file=sys.stderr)
        return 2
    with localcluster.LocalCluster() as cluster:
        cluster.start_operator()
        return run(cluster, args)


if __name__ == "__main__":
    sys.exit(main())

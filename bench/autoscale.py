"""Autoscaler figures against a real redis-server on 127.0.0.1 (started and stopped here).

1. Per-tick collection of 1,000 groups (100 streams x 10 groups by default): one pipelined round
   trip for the node (``collect``) against one round trip per group (``XINFO GROUPS`` per group, the
   way a per-trigger scaler asks). Time per tick and round trips per tick, and the ratio.
2. The cost of null lags: the same with some groups whose lag Redis cannot tell.
3. From a backlog crossing the target to the decision: entries are added until one group's backlog
   crosses ``backlogPerReplica``, then collect + decide run. The operator's loop adds the wait for
   the next tick (2 s by default) and the kube layer adds the scale subresource patch: neither is
   measured here (bench/autoscale_e2e.py measures both through the running operator).

Run: ``.venv/bin/python bench/autoscale.py [--streams 100 --groups 10 --ticks 20] [--smoke]``.
``--smoke`` is the same run with 20 groups (5 streams x 4 groups) and 3 ticks, a few seconds; CI runs it
(tests/redis/test_bench_smoke_redis.py).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import _project

_project.use(__file__)

from redis.client import Redis  # noqa: E402
from redis.connection import Connection, ConnectionPool  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402

from redis_messaging.api.models import Autoscale, AutoscaleTarget, Stream  # noqa: E402
from redis_messaging.autoscale.decide import GroupState, Sample, decide  # noqa: E402
from redis_messaging.redis.streams import collect, ensure_groups  # noqa: E402

HOST = "127.0.0.1"


class _Counter:
    trips = 0


class _CountingConnection(Connection):
    """Counts socket writes: one per command, one per pipeline execute."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _Counter.trips += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: apt-get install -y redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        port = _free_port()
        proc = subprocess.Popen(
            [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            probe = Redis(host=HOST, port=port, socket_connect_timeout=0.5)
            deadline = time.monotonic() + 10
            while True:
                try:
                    probe.ping()
                    break
                except RedisConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        sys.exit("redis-server did not start")
                    time.sleep(0.05)
            probe.close()
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def populate(r: Redis, streams: int, groups: int, entries: int) -> list[Stream]:
    specs = [
        Stream.model_validate({
            "name": f"stream-{i:03d}",
            "groups": [{"name": f"group-{j:02d}", "startId": "0"} for j in range(groups)],
        })
        for i in range(streams)
    ]
    for spec in specs:
        pipe = r.pipeline(transaction=False)
        for n in range(entries):
            pipe.xadd(spec.name, {"n": str(n)})
        pipe.execute()
        ensure_groups(r, spec)
        # groups at different positions, some with pending entries
        for j, group in enumerate(spec.groups):
            if j % 3:
                r.xreadgroup(group.name, "pod-0", {spec.name: ">"}, count=j * 5)
    return specs


def timed(ticks: int, fn: Callable[[], object]) -> tuple[list[float], float]:
    """Seconds per tick and round trips per tick."""
    times: list[float] = []
    _Counter.trips = 0
    for _ in range(ticks):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, _Counter.trips / ticks


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values) * 1000:7.2f} ms, p95 {p95 * 1000:7.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="5 streams x 4 groups, 10 entries, 3 ticks: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.streams, args.groups, args.entries, args.ticks = 5, 4, 10, 3
    n_groups = args.streams * args.groups

    with redis_server() as port:
        plain = Redis(host=HOST, port=port)
        specs = populate(plain, args.streams, args.groups, args.entries)
        pool = ConnectionPool(connection_class=_CountingConnection, host=HOST, port=port)
        client = Redis(connection_pool=pool)
        collect(client, specs)  # warm up: connection, version check

        piped, piped_trips = timed(args.ticks, lambda: collect(client, specs))
        pairs = [(s.name, g.name) for s in specs for g in s.groups]

        def per_group() -> None:
            for stream, _group in pairs:
                client.xinfo_groups(stream)

        naive, naive_trips = timed(max(3, args.ticks // 4), per_group)
        print(f"collection of {n_groups} groups ({args.streams} streams x {args.groups} groups), one node:")
        print(f"  pipelined (collect):     {ms(piped)}, {piped_trips:.0f} round trip(s) per tick")
        print(f"  one round trip per group: {ms(naive)}, {naive_trips:.0f} round trips per tick")
        print(f"  ratio (median):          {statistics.median(naive) / statistics.median(piped):.1f}x faster")
        print("  (over loopback; every round trip saved also saves the network latency of a real cluster)")

        # Null lags: delete the newest entry of 10 % of the streams (after every group's position).
        for spec in specs[:: 10]:
            newest: Any = plain.xrevrange(spec.name, count=1)
            plain.xdel(spec.name, newest[0][0])
        nulls, null_trips = timed(args.ticks, lambda: collect(client, specs))
        estimated = sum(g.lag_estimated for m in collect(client, specs) for g in m.groups)
        print(f"  with {estimated} null lags estimated: {ms(nulls)}, {null_trips:.0f} round trips per tick")

        # From a backlog crossing the target to the decision.
        autoscale = Autoscale(target=AutoscaleTarget(name="worker"), max_replicas=10, backlog_per_replica=100)
        watched = specs[1]
        target_group = watched.groups[0].name
        state = GroupState()
        [before] = collect(client, [watched])
        g = before.group(target_group)
        assert g is not None
        state = decide(g, autoscale, 1, state).state
        crossing: list[float] = []
        decide_only: list[float] = []
        for _ in range(args.ticks):
            pipe = plain.pipeline(transaction=False)
            for n in range(101):
                pipe.xadd(watched.name, {"n": str(n)})
            pipe.execute()
            t0 = time.perf_counter()
            [m] = collect(client, [watched])
            sample = m.group(target_group)
            assert sample is not None
            t1 = time.perf_counter()
            d = decide(sample, autoscale, 1, state)
            t2 = time.perf_counter()
            assert d.desired > 1, d.reason
            crossing.append(t2 - t0)
            decide_only.append(t2 - t1)
        loops = 10_000
        t0 = time.perf_counter()
        for i in range(loops):
            decide(Sample(at=float(i), lag=1_000 + i, pending=5), autoscale, 3, state)
        per_decision = (time.perf_counter() - t0) / loops
        print("backlog crossing the target -> decision (one stream's collect + decide):")
        print(f"  collect + decide:        {ms(crossing)}")
        print(f"  decide alone:            {ms(decide_only)} ({per_decision * 1e6:.1f} us on average)")
        print("  not measured here: the wait for the next tick (at most the tick interval, 2 s by default)")
        print("  and the scale subresource patch, which belongs to the kube layer: see bench/autoscale_e2e.py.")
        print(f"  last reason: {d.reason}")
        client.close()
        plain.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

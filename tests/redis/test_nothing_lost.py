"""Nothing is lost when consumers are scaled by lag and killed mid-work.

Real worker processes (``python -m redis_messaging.consumer``) are started and stopped following
the decisions of :mod:`redis_messaging.autoscale.decide` on measurements of
:func:`redis_messaging.redis.streams.collect`, the way the operator drives a Deployment: replicas
0 -> 8 -> 0 -> 3 -> 0. Some workers are SIGKILLed while they hold entries (a replacement starts,
as a ReplicaSet would start one), and :func:`reclaim_orphans` runs every tick with the names of the
live workers. At the end every entry was processed and acknowledged (at least once), the pending
list is empty and no consumer of a dead process is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _server import RedisServer, start_redis
from redis.client import Redis

from redis_messaging.api.models import Autoscale, AutoscaleTarget, Stream
from redis_messaging.autoscale.decide import GroupState, decide
from redis_messaging.redis.streams import Target, collect, ensure_groups, pending_by_consumer, reclaim_orphans

pytestmark = pytest.mark.redis

OPERATOR_SRC = Path(__file__).resolve().parents[2] / "operator"
STREAM, GROUP = "orders", "workers"
FIRST, SECOND = 42_500, 7_500  # 50,000 entries in all
TICK = 0.2
AUTOSCALE = Autoscale(
    target=AutoscaleTarget(name="workers"),
    min_replicas=0,
    max_replicas=8,
    backlog_per_replica=2_500,  # 42,500 -> 17, capped at 8; 7,500 -> 3
    scale_down_stabilization_seconds=2,
    idle_seconds_before_zero=2,
)


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    record: Path
    stopping: bool = False
    killed: bool = False


@dataclass
class Fleet:
    """Worker processes played the way a Deployment's pods are: scaled, replaced, terminated."""

    server: RedisServer
    workdir: Path
    workers: dict[str, Worker] = field(default_factory=dict)
    exited: list[Worker] = field(default_factory=list)
    started: int = 0

    def _spawn(self) -> None:
        self.started += 1
        name = f"workers-{self.started:03d}"
        record = self.workdir / f"{name}.ids"
        env = {
            **os.environ,
            "PYTHONPATH": str(OPERATOR_SRC),
            "REDIS_URL": self.server.url,
            "STREAM": STREAM,
            "GROUP": GROUP,
            "POD_NAME": name,
            "CONSUMER_BATCH": "50",
            "CONSUMER_BLOCK_MS": "200",
            "CONSUMER_CLAIM_IDLE_MS": "0",  # no XAUTOCLAIM: orphans come back only through reclaim
            "CONSUMER_PENDING_EVERY": "0.3",
            "CONSUMER_MAX_SECONDS": "120",  # a leaked worker still ends
            "HANDLER_SLEEP_MS": "0.3",
            "RECORD_FILE": str(record),
        }
        with (self.workdir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "redis_messaging.consumer"], env=env, stdout=log, stderr=log
            )
        self.workers[name] = Worker(name, proc, record)

    @property
    def replicas(self) -> int:
        """Like a Deployment's replicas: terminating pods do not count."""
        return sum(1 for w in self.workers.values() if not w.stopping)

    def live_names(self) -> set[str]:
        """Pods that exist, terminating ones included."""
        return set(self.workers)

    def claimer(self) -> str | None:
        running = sorted(w.name for w in self.workers.values() if not w.stopping)
        return running[0] if running else None

    def holding(self, r: Redis) -> list[str]:
        """Running workers that have entries pending right now."""
        return [n for n, p in pending_by_consumer(r, STREAM, GROUP).items() if p > 0 and n in self.workers]

    def reap(self) -> None:
        for name, w in list(self.workers.items()):
            if w.process.poll() is not None:
                self.exited.append(self.workers.pop(name))

    def scale_to(self, desired: int) -> None:
        running = sorted((w for w in self.workers.values() if not w.stopping), key=lambda w: w.name)
        for w in running[desired:]:  # the newest go first
            w.process.send_signal(signal.SIGTERM)
            w.stopping = True
        for _ in range(desired - len(running)):
            self._spawn()

    def kill(self, names: list[str]) -> None:
        for name in names:
            w = self.workers[name]
            w.process.kill()
            w.killed = True
            w.process.wait(timeout=10)
        self.reap()

    def stop_all(self) -> None:
        """Workers already told to stop (SIGTERM) are given time to finish as they would in a pod's grace
        period (a hang still shows: killed then, they count as graceful and fail the exit-code check);
        the others are killed, and counted as killed."""
        deadline = time.monotonic() + 30
        for w in self.workers.values():
            if w.stopping:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for w in self.workers.values():
            if w.process.poll() is None:
                w.process.kill()
                w.killed = not w.stopping
                w.process.wait(timeout=10)
        self.reap()


@dataclass
class Operator:
    """One autoscaler tick: measure, decide, scale, reclaim; as the operator's loop does."""

    client: Redis
    fleet: Fleet
    state: GroupState = field(default_factory=GroupState)
    claimed: int = 0
    deleted: int = 0
    history: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def tick(self) -> int:
        self.fleet.reap()
        [measured] = collect(self.client, [Target(STREAM, (GROUP,))])
        group = measured.group(GROUP)
        assert group is not None
        assert group.error is None, group.error
        decision = decide(group, AUTOSCALE, self.fleet.replicas, self.state)
        self.state = decision.state
        if decision.changed:
            self.reasons.append(decision.reason)
        self.fleet.scale_to(decision.desired)
        self.history.append(decision.desired)
        result = reclaim_orphans(
            self.client, STREAM, GROUP, self.fleet.live_names(), self.fleet.claimer(), batch=200
        )
        self.claimed += result.claimed
        self.deleted += result.deleted
        return decision.desired

    def run_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if done():
                return
            time.sleep(TICK)
        pytest.fail(f"not {what} within {timeout}s; decisions: {self.reasons[-5:]}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with start_redis(tmp_path / "redis") as s:
        yield s


def add_entries(r: Redis, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(STREAM, {"n": str(i), "payload": "x" * 32})
        ids.extend(str(x) for x in pipe.execute())
    return ids


def recorded(workdir: Path) -> list[str]:
    """Every id written by a worker; an unterminated last line (SIGKILL mid-write) is ignored."""
    ids: list[str] = []
    for path in sorted(workdir.glob("*.ids")):
        ids.extend(path.read_text(encoding="utf-8").split("\n")[:-1])
    return ids


def test_no_entry_is_lost_when_consumers_scale_and_die(server: RedisServer, tmp_path: Path) -> None:
    r = server.client(decode_responses=True)
    workdir = tmp_path / "workers"
    workdir.mkdir()
    fleet = Fleet(server, workdir)
    op = Operator(r, fleet)
    ensure_groups(r, Stream.model_validate({"name": STREAM, "groups": [{"name": GROUP, "startId": "0"}]}))

    def pending() -> int:
        return int(r.xpending(STREAM, GROUP)["pending"])

    def drained_to_zero() -> bool:
        lag = r.xinfo_groups(STREAM)[0]["lag"]
        return lag == 0 and pending() == 0 and fleet.replicas == 0 and not fleet.workers

    killed: list[str] = []
    try:
        # Nothing to do: nothing runs.
        for _ in range(3):
            assert op.tick() == 0

        # 42,500 entries: up to 8 workers at once; kill 3 of them while they hold entries.
        ids = add_entries(r, FIRST)
        assert op.tick() == 8
        op.run_until(lambda: len(set(recorded(workdir))) > 8_000, 30, "processing")
        holding = fleet.holding(r)
        killed += holding[:3]
        assert len(killed) == 3, f"workers holding entries: {holding}"
        fleet.kill(killed)
        op.run_until(drained_to_zero, 45, "drained and scaled to zero")
        first_phase = list(op.history)
        assert max(first_phase) == 8
        assert op.claimed > 0

        # 7,500 more: 3 workers; kill one of them mid-work.
        ids += add_entries(r, SECOND)
        mark = len(op.history)
        assert op.tick() == 3
        done_before = len(set(recorded(workdir)))
        op.run_until(lambda: len(set(recorded(workdir))) > done_before + 1_500, 20, "processing again")
        holding = fleet.holding(r)
        assert holding, "no worker holds entries"
        killed.append(holding[0])
        fleet.kill(holding[:1])
        op.run_until(drained_to_zero, 30, "drained and scaled to zero again")
        assert max(op.history[mark:]) == 3
    finally:
        fleet.stop_all()

    processed = recorded(workdir)
    unique = set(processed)
    assert len(ids) == FIRST + SECOND
    assert unique >= set(ids), f"{len(set(ids) - unique)} entries were never processed"
    assert pending() == 0
    assert r.xinfo_consumers(STREAM, GROUP) == []  # no consumer of a dead process remains
    graceful = [w for w in fleet.exited if not w.killed]
    assert graceful
    assert all(w.process.returncode == 0 for w in graceful), [w.process.returncode for w in graceful]
    sys.stdout.write(
        f"\nnothing lost: {len(ids)} entries, {len(processed) - len(unique)} processed twice, "
        f"{op.claimed} claimed back from {len(killed)} killed workers, {op.deleted} dead consumers "
        f"deleted, {fleet.started} worker processes, replicas over time: "
        f"{_compress(op.history)}\n"
    )


def _compress(history: list[int]) -> str:
    out: list[int] = []
    for n in history:
        if not out or out[-1] != n:
            out.append(n)
    return " -> ".join(map(str, out))

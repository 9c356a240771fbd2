"""Slots moved by the engine itself (Valkey 9: ``CLUSTER MIGRATESLOTS``), with real processes: a loaded
cluster scaled out and in under traffic, the operator restarted while a job runs, and the source's
master killed while a job runs. Nothing is lost, no slot is ever left half-moved (no IMPORTING or
MIGRATING mark), and no job is started twice.

These tests run Valkey 9.1 whatever engine RMSG_ENGINE selects: .ci/setup.sh always builds it
(`bash .ci/build-engine.sh valkey-9.1`)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engines
import pytest
from cluster_env import (
    ClusterEnv,
    Traffic,
    actions_of,
    assert_balanced,
    check_data,
    heal_until,
    write_data,
)

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis import cluster as cl

pytestmark = pytest.mark.redis

ENGINE = "valkey-9.1"
PASSWORD = "atomic-Pa55word"
OWNER = Owner(name="events", namespace="shop", uid="uid-events")


class Killed(BaseException):
    """The operator process dies: nothing catches this, like SIGKILL."""


def spec_with(shards: int) -> models.RedisMessagingSpec:
    return models.parse_spec({
        "mode": "cluster",
        "auth": {"enabled": True},
        "cluster": {"shards": shards, "replicasPerShard": 1, "nodeTimeout": 2000},  # slotMigration: Auto
        "redis": {"config": {"repl-diskless-sync-delay": "0"}},
    })


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    where = engines.engine_dir(ENGINE)
    if not (where / "redis-server").exists():
        pytest.skip(f"{ENGINE} not built in {where}: bash .ci/build-engine.sh {ENGINE}")
    return where


@contextlib.contextmanager
def started(base: Path, bin_dir: Path) -> Iterator[ClusterEnv]:
    with ClusterEnv(spec_with(3), OWNER, base, password=PASSWORD, bin_dir=bin_dir) as env:
        env.start()
        heal_until(ClusterTopology(env.addresses(), timeout=1.0), spec_with(3), OWNER, PASSWORD, timeout=40, env=env)
        version = env.client(env.pod_names[0]).info("server")
        assert str(version.get("valkey_version", "")).startswith("9."), version
        yield env


def exports(env: ClusterEnv, *, skip: tuple[str, ...] = ()) -> list[cl.SlotJob]:
    """Every export job the masters of ``env`` list (finished ones included), but those of ``skip``."""
    jobs = []
    for pod in env.pod_names:
        if pod not in skip and env.is_running(pod) and env.myself(pod).is_master:
            reply = env.client(pod).execute_command("CLUSTER", "GETSLOTMIGRATIONS")
            jobs += [j for j in cl.parse_slot_jobs(reply) if j.operation == "EXPORT"]
    return jobs


def unmarked(env: ClusterEnv, done: Any = lambda report: report.healthy) -> Any:
    """``until`` of heal_until: after every pass, no node may hold a half-moved slot; then ``done``."""
    def until(report: Any) -> bool:
        marks = env.open_marks()
        assert marks == {}, f"a slot is half-moved: {marks}"
        return bool(done(report))
    return until


def master_of(env: ClusterEnv, slot: int) -> str:
    (pod,) = [p for p in env.pod_names if env.is_running(p) and slot in env.myself(p).slot_set()
              and env.myself(p).is_master]
    return pod


def wait_all(env: ClusterEnv) -> None:
    """Every master's writes are on its replica (WAIT): what follows tests the move, not replication lag."""
    for pod in env.pod_names:
        if env.myself(pod).is_master:
            assert env.client(pod).execute_command("WAIT", 1, 5000) == 1, pod


def test_scale_out_and_in_move_slots_with_the_engine_under_traffic(tmp_path: Path, bin_dir: Path) -> None:
    with started(tmp_path, bin_dir) as env:
        streams = write_data(env)
        env.add_shard(3)
        topology = ClusterTopology(env.addresses(), timeout=1.0)
        with Traffic(env) as traffic:
            reports = heal_until(topology, spec_with(4), OWNER, PASSWORD, timeout=90, env=env,
                                 until=unmarked(env))
        moved = [a.message for r in reports for a in r.actions if a.reason == "SlotsMigrated"]
        assert moved, "no slot moved"
        assert all("atomically" in m for m in moved), moved
        jobs = exports(env)
        assert [j.state for j in jobs] == ["success"] * len(moved), [j.describe() for j in jobs]
        assert_balanced(env, 4)
        check_data(env, streams)
        assert traffic.errors == [], traffic.errors[:5]
        assert traffic.written > 100

        with Traffic(env) as traffic:
            reports = heal_until(topology, spec_with(3), OWNER, PASSWORD, timeout=90, env=env,
                                 until=unmarked(env, lambda r: r.release))
        assert reports[-1].release == ["events-shard-3"]
        moved_to = {a.message.split(" to shard ")[1][0] for r in reports for a in r.actions
                    if a.reason == "SlotsMigrated"}
        assert moved_to == {"0", "1", "2"}, "the slots of the removed shard go to every remaining shard"
        env.remove_shard(3)
        heal_until(topology, spec_with(3), OWNER, PASSWORD, timeout=30, env=env)
        assert_balanced(env, 3)
        check_data(env, streams)
        assert traffic.errors == [], traffic.errors[:5]
        print(f"\nlive commands retried: {traffic.retried}")


def test_an_operator_restarted_while_the_engine_moves_slots_follows_the_job(tmp_path: Path, bin_dir: Path) -> None:
    with started(tmp_path, bin_dir) as env:
        streams = write_data(env, keys=50_000)
        env.add_shard(3)
        target = env.shard_pods(3)[0]
        paused = env.client(target)

        def hook(stage: str, slots: Any) -> None:
            if stage == "started":
                # the target takes no write (the job's stream included) but answers: the job cannot end
                # before the operator dies and comes back, and the restarted operator finds it running
                paused.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
                raise Killed("operator killed right after it started a migration")

        with pytest.raises(Killed):
            heal_until(ClusterTopology(env.addresses(), timeout=1.0, hook=hook), spec_with(4), OWNER, PASSWORD,
                       timeout=60, env=env)
        try:
            (running,) = [j for j in exports(env) if not j.finished]
            restarted = ClusterTopology(env.addresses(), timeout=1.0, reshard_budget=0.3)
            report = restarted.check_and_heal(spec_with(4), OWNER, [], PASSWORD)
            still = [j.name for j in exports(env) if not j.finished]
            assert still == [running.name], "the restarted operator started a second job"
            # it follows the job: no attempt at another (the engine would refuse it: a failed pass)
            assert report.reason == "Resharding", (report.reason, report.message)
            assert report.retry_after is not None
            # the engine runs the cancel script, and a job still copying is no job to cancel
            source = master_of(env, running.slots[0][0])
            mover = cl.AtomicMover(cl.RawConnections(PASSWORD, timeout=5.0))
            assert not mover.cancel_if_waiting(env.address(source))
            assert [j.name for j in exports(env) if not j.finished] == [running.name]
        finally:
            paused.execute_command("CLIENT", "UNPAUSE")
        reports = heal_until(restarted, spec_with(4), OWNER, PASSWORD, timeout=90, env=env,
                             until=unmarked(env))
        assert "SlotsMigrated" in actions_of(reports)
        jobs = exports(env)
        same = [j for j in jobs if j.slots == running.slots and j.source == running.source]
        assert [j.state for j in same] == ["success"], [j.describe() for j in jobs]
        assert all(j.state == "success" for j in jobs), [j.describe() for j in jobs]
        assert_balanced(env, 4)
        check_data(env, streams, keys=50_000)


def imports_of(env: ClusterEnv, pod: str) -> list[cl.SlotJob]:
    reply = env.client(pod).execute_command("CLUSTER", "GETSLOTMIGRATIONS")
    return [j for j in cl.parse_slot_jobs(reply) if j.operation == "IMPORT"]


def test_the_source_master_killed_while_the_engine_moves_slots_loses_nothing(tmp_path: Path, bin_dir: Path) -> None:
    keys = 100_000
    with started(tmp_path, bin_dir) as env:
        streams = write_data(env, keys=keys)
        wait_all(env)
        env.add_shard(3)
        killed: list[str] = []
        kill_time: list[float] = []
        target = env.shard_pods(3)[0]
        received: list[int] = []
        missed: list[int] = []  # jobs that got past their snapshot before the probe saw it

        def hook(stage: str, slots: Any) -> None:
            if stage != "started" or killed:
                return
            source = master_of(env, slots[0])
            # the kill comes while the target receives the job's snapshot and holds some of its keys;
            # a job that gets past that before it is seen is let go, and the next job is tried
            probe = env.client(target)
            first = list(slots)[:64]
            held = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pipe = probe.pipeline(transaction=False)
                for slot in first:
                    pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
                held = sum(int(n) for n in pipe.execute())
                states = [j.state for j in imports_of(env, target) if not j.finished]
                if held and states == ["receiving-snapshot"]:
                    break
                if held and states != ["receiving-snapshot"]:
                    missed.append(held)
                    return
                time.sleep(0.002)
            target_group = env.pod(target).process.pid  # type: ignore[union-attr]
            os.killpg(target_group, signal.SIGSTOP)  # the job cannot end between the look and the kill
            env.kill(source)
            os.killpg(target_group, signal.SIGCONT)
            received.append(held)
            killed.append(source)
            kill_time.append(time.monotonic())

        def back_later(report: Any) -> bool:
            """The killed pod starts again a few seconds later (its replica has taken over by then), as
            its pod would; run between two passes, like the kubelet does."""
            if kill_time and time.monotonic() - kill_time[0] > 6.0 and not env.is_running(killed[0]):
                env.start([killed[0]])
            return bool(report.healthy)

        topology = ClusterTopology(env.addresses(), timeout=1.0, hook=hook)
        started_at = time.monotonic()
        reports = heal_until(topology, spec_with(4), OWNER, PASSWORD, timeout=120, env=env,
                             until=unmarked(env, back_later))
        assert killed, "no migration was started"
        assert received[0] > 0, "the target held none of the job's keys at the kill"
        assert env.is_running(killed[0])
        # the target's import of the killed source failed (and dropped what it had received)
        states = [j.state for j in imports_of(env, target)]
        assert "failed" in states, [j.describe() for j in imports_of(env, target)]
        assert any("failed" in r.message for r in reports), "the killed source's job should have failed a pass"
        assert_balanced(env, 4)
        check_data(env, streams, keys=keys)
        # no key twice: what the target received of the failed job was dropped
        total = sum(int(env.client(p).dbsize()) for p in env.pod_names
                    if env.is_running(p) and env.myself(p).is_master)
        assert total == keys + len(streams)
        print(f"\nscale-out with the source killed mid-job ({received[0]} keys of its first 64 slots on the "
              f"target then; {len(missed)} job(s) let go first): {time.monotonic() - started_at:.1f}s")

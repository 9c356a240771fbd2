"""Ordered rolling update on real processes: the operator's plan (modes.sentinel.rolling) drives a roll of
every pod of a sentinel-mode resource (SentinelEnv.restart plays the StatefulSet re-creating a pod
that was deleted), while a writer appends with ``WAIT 1`` through Sentinel discovery.

Proven: Sentinels first, then replicas one at a time (each back in sync before the next), one
``SENTINEL FAILOVER``, then the old master; at most one failover; no acknowledged write lost; the roll
resumes with a fresh SentinelRoller (an operator restart) because its state is the pods'. Printed: the
total time writes were unavailable and the longest gap.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import engines
import pytest
from redis.exceptions import RedisError
from redis.sentinel import Sentinel
from sentinel_env import SentinelEnv, eventually

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.rollout import DeletePod, Done, PodState, Wait
from redis_messaging.modes.sentinel.rolling import Failover, SentinelRoller
from redis_messaging.redis.addresses import MapAddresses

pytestmark = pytest.mark.redis

PASSWORD = "rolling-Pa55word"
OWNER = Owner(name="orders", namespace="shop", uid="uid-rolling")
SPEC = models.parse_spec({
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
})
OLD, NEW = "config hash 1111 -> 2222", ("config hash 1111 -> 2222",)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SentinelEnv]:
    with SentinelEnv(SPEC, OWNER, tmp_path / "pods", password=PASSWORD) as pods:
        pods.start()
        pods.wait_replication(timeout=30)
        pods.sentinel_master(timeout=30)
        deadline = time.monotonic() + 30
        while not all_acquainted(pods):  # Sentinels know each other and both replicas
            assert time.monotonic() < deadline, pods.log_tail(*pods.sentinel_pods)
            time.sleep(0.2)
        yield pods


def all_acquainted(env: SentinelEnv) -> bool:
    for pod in env.sentinel_pods:
        try:
            client = env.client(pod)
            replicas = client.execute_command("SENTINEL", "REPLICAS", OWNER.master_name)
            sentinels = client.execute_command("SENTINEL", "SENTINELS", OWNER.master_name)
        except RedisError:
            return False
        if len(replicas) != 2 or len(sentinels) != 2:
            return False
    return True


class Writer(threading.Thread):
    """XADD then WAIT 1 on the master Sentinel names; an entry counts as acknowledged only when WAIT
    says a replica has it."""

    def __init__(self, env: SentinelEnv) -> None:
        super().__init__(daemon=True)
        self.sentinel = Sentinel([env.address(p) for p in env.sentinel_pods], socket_timeout=1,
                                 sentinel_kwargs={"password": PASSWORD, "socket_timeout": 1})
        self.acked: list[str] = []
        self.unacked = 0
        self.errors = 0
        self.kinds: Counter[str] = Counter()
        self.down_since: float | None = None
        self.unavailable = 0.0
        self.longest = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        master = self.sentinel.master_for(OWNER.master_name, password=PASSWORD, socket_timeout=1,
                                          socket_connect_timeout=1)
        while not self.stop.is_set():
            try:
                entry = master.xadd("rolling", {"n": str(len(self.acked))})
                replicas = master.execute_command("WAIT", 1, 1000)
            except (RedisError, OSError) as exc:
                self.errors += 1
                self.kinds[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                self._down()
                time.sleep(0.02)
                continue
            if int(replicas) >= 1:
                self.acked.append(entry.decode() if isinstance(entry, bytes) else str(entry))
                self._up()
            else:
                self.unacked += 1
                self._down()
            time.sleep(0.003)
        master.close()

    def _down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    def _up(self) -> None:
        if self.down_since is not None:
            gap = time.monotonic() - self.down_since
            self.unavailable += gap
            self.longest = max(self.longest, gap)
            self.down_since = None


def failovers(env: SentinelEnv) -> int:
    """Failovers since the start, as the Sentinels count them (each one is a new config epoch)."""
    epochs = set()
    for pod in env.sentinel_pods:
        reply = env.client(pod).execute_command("SENTINEL", "MASTER", OWNER.master_name)
        fields = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else reply
        epochs.add(int(fields["config-epoch"]))
    assert len(epochs) == 1, epochs
    return epochs.pop()


def states(env: SentinelEnv, updated: set[str]) -> dict[str, PodState]:
    out = {}
    for pod in env.pod_names:
        kind = "redis" if pod in env.redis_pods else "sentinel"
        ready = env.is_running(pod) and env.probe(pod) == 0
        out[pod] = PodState(pod, kind, ready, () if pod in updated else NEW)
    return out


def roller(env: SentinelEnv) -> SentinelRoller:
    """The operator's roll, reaching the env's pods (a new one: an operator restart, nothing remembered)."""
    return SentinelRoller(None, MapAddresses({p: env.address(p) for p in env.redis_pods},
                                             {p: env.address(p) for p in env.sentinel_pods}), timeout=1.0)


def roll_order(env: SentinelEnv, first_master: str) -> list[str]:
    """The moves of a whole roll: Sentinels, then replicas, each by ordinal from the last, one
    switch-over, then the old master."""
    replicas = sorted((p for p in env.redis_pods if p != first_master), reverse=True)
    return [*(f"restart {p}" for p in sorted(env.sentinel_pods, reverse=True)),
            *(f"restart {p}" for p in replicas), f"failover from {first_master}", f"restart {first_master}"]


def assert_nothing_lost(env: SentinelEnv, writer: Writer, master: str) -> None:
    found = {e[0] for e in env.client(master).xrange("rolling")}
    lost = [e for e in writer.acked if e not in found]
    assert lost == [], f"{len(lost)} acknowledged entries lost"
    assert len(writer.acked) > 100


def test_roll_replicas_first_one_failover_no_acknowledged_write_lost(env: SentinelEnv) -> None:
    step = roller(env)
    first_master = env.wait_replication()
    updated: set[str] = set()
    moves: list[str] = []
    events: list[tuple[str, str]] = []
    assert failovers(env) == 0
    writer = Writer(env)
    writer.start()
    started = time.monotonic()
    try:
        time.sleep(0.5)
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, f"roll not done: {moves}\n{env.log_tail()}"

            def recreate(pod: str) -> None:  # the StatefulSet controller re-creates it from the new template
                env.restart(pod)
                updated.add(pod)

            report = step.run_states(SPEC, OWNER, states(env, updated), PASSWORD, delete_pod=recreate)
            decision = report.step
            if isinstance(decision, Done):
                assert report.condition is not None
                assert report.condition.reason == "UpToDate"
                break
            events.extend(report.events)
            if isinstance(decision, DeletePod):
                moves.append(f"restart {decision.pod}")
                if len(moves) == 2:  # the operator restarts mid-roll: a fresh step, nothing remembered
                    step = roller(env)
            elif isinstance(decision, Failover):
                moves.append(f"failover from {decision.master}")
            else:
                assert isinstance(decision, Wait)
            time.sleep(0.2)  # the next pass
        rolled = time.monotonic() - started
        time.sleep(0.5)
    finally:
        writer.stop.set()
        writer.join(10)

    assert moves == roll_order(env, first_master)
    assert failovers(env) == 1
    moved = [m for _, m in events if "follows" in m]  # none when Sentinel converted it first
    assert len(moved) <= 1
    assert all(m.startswith(f"{first_master} follows ") for m in moved), moved
    steps = [(r, m) for r, m in events if "follows" not in m]
    assert [r for r, _ in steps] == ["RollingUpdate"] * 5 + ["RollingUpdateSwitchover", "RollingUpdate"]
    assert all("config hash 1111 -> 2222" in m for _, m in steps), steps
    new_master = env.wait_replication(timeout=30)
    assert new_master != first_master
    assert_nothing_lost(env, writer, new_master)
    if writer.unavailable > 5:
        print(env.log_tail(*env.sentinel_pods, lines=25))
    print(f"\nrolling update of 6 pods in {rolled:.1f}s: {len(writer.acked)} writes acknowledged, "
          f"{writer.unacked} not acknowledged by a replica, {writer.errors} errors; writes unavailable "
          f"{writer.unavailable:.2f}s in all, longest gap {writer.longest:.2f}s; failovers: 1; "
          f"errors: {dict(writer.kinds)}")


UPGRADE_ENGINE = "valkey-9.1"  # .ci/setup.sh always builds it


def test_an_upgrade_restarts_an_old_master_that_cannot_load_the_new_engines_snapshot(env: SentinelEnv) -> None:
    """The run's engine (Redis 7.0 by default) to Valkey 9.1, every pod recreated on the new engine. Right
    after the switch-over the old master's container restarts (still on the old engine): it follows the
    new master, which sends it a snapshot it cannot load, over and over. It is never ready, and a roll
    that waited for it would never end; it is restarted on the new engine instead, and nothing
    acknowledged is lost."""
    if engines.selected() == UPGRADE_ENGINE:
        pytest.skip(f"the run's engine is {UPGRADE_ENGINE} already: nothing older to upgrade from")
    bin_dir = engines.engine_dir(UPGRADE_ENGINE)
    if not (bin_dir / "redis-server").exists():
        pytest.skip(f"{UPGRADE_ENGINE} not built in {bin_dir}: bash .ci/build-engine.sh {UPGRADE_ENGINE}")
    step = roller(env)
    first_master = env.wait_replication()
    updated: set[str] = set()
    moves: list[str] = []
    events: list[tuple[str, str]] = []
    writer = Writer(env)
    writer.start()
    try:
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, f"roll not done: {moves}\n{env.log_tail()}"

            def recreate(pod: str) -> None:  # the new image: the new engine's binaries
                env.use_engine(pod, bin_dir)
                env.restart(pod)
                updated.add(pod)

            report = step.run_states(SPEC, OWNER, states(env, updated), PASSWORD, delete_pod=recreate)
            decision = report.step
            events.extend(report.events)
            if isinstance(decision, Done):
                break
            if isinstance(decision, DeletePod):
                moves.append(f"restart {decision.pod}")
            elif isinstance(decision, Failover):
                moves.append(f"failover from {decision.master}")
                # The old master's container restarts on its old image: it has no replication history
                # left, so the new master sends it a whole snapshot, in Valkey 9's format.
                eventually(lambda: env.info(first_master).get("role") == "slave", timeout=15,
                           what=f"{first_master} a replica")
                env.kill(first_master)
                env.restart(first_master)
                eventually(lambda: "Can't handle RDB format version" in env.log(first_master, since_start=True),
                           timeout=30, what=f"{first_master} refusing the new master's snapshot")
                assert env.probe(first_master) != 0
            time.sleep(0.2)
    finally:
        writer.stop.set()
        writer.join(10)

    assert moves == roll_order(env, first_master)
    last = [m for r, m in events if r == "RollingUpdate"][-1]
    assert last.startswith(f"Restarting replica {first_master} ("), last
    assert f"its link to {env.pod_at(env.sentinel_master())} down" in last, last
    new_master = env.wait_replication(timeout=30)
    assert env.info(first_master).get("master_link_status") == "up"
    assert all(env.info(p, "server").get("valkey_version") for p in env.redis_pods)
    assert_nothing_lost(env, writer, new_master)

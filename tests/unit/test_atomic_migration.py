"""The driver of the engine's atomic slot migration (Valkey 9), against a scripted source: what it
reads of CLUSTER GETSLOTMIGRATIONS, when it starts a job, follows one, backs off, and cancels one.
The real engine runs in tests/redis/test_cluster_atomic_migration.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from redis_messaging.api import models
from redis_messaging.modes.cluster import topology as ct
from redis_messaging.redis import cluster as cl
from redis_messaging.redis.engine import Engine, has_atomic_slot_migration

SOURCE = cl.Endpoint("a" * 40, ("10.0.0.1", 6379), "10.0.0.1", 6379)
TARGET = cl.Endpoint("b" * 40, ("10.0.0.2", 6379), "10.0.0.2", 6379)


def job(name: str, state: str, slots: str = "0-99", *, target: str = TARGET.id, updated: int = 1000,
        created: int = 900, operation: str = "EXPORT") -> list[bytes]:
    """A job as RESP2 gives it: a flat list of field names and values."""
    fields = {"name": name, "operation": operation, "slot_ranges": slots, "target_node": target,
              "source_node": SOURCE.id, "create_time": created, "last_update_time": updated,
              "last_ack_time": updated, "state": state, "message": "", "cow_size": 0}
    return [str(x).encode() for pair in fields.items() for x in pair]


@dataclass
class Source:
    """The source node: its jobs (newest first, as the engine lists them) and its clock."""

    jobs: list[list[bytes]] = field(default_factory=list)
    clock: int = 1000
    sent: list[tuple[str, ...]] = field(default_factory=list)
    finish_after: int | None = None  # polls until the jobs end (None: they keep running)
    outcome: tuple[bytes, bytes] = (b"success", b"")  # how they end: state, message
    polls: int = 0

    def execute_command(self, *args: Any) -> Any:
        words = tuple(str(a) for a in args)
        self.sent.append(words)
        if words[:2] == ("CLUSTER", "GETSLOTMIGRATIONS"):
            self.polls += 1
            if self.finish_after is not None and self.polls > self.finish_after:
                state, message = self.outcome
                self.jobs = [[*j[:-6], b"state", state, b"message", message, *j[-2:]] for j in self.jobs]
            return list(self.jobs)
        if words == ("TIME",):
            return [str(self.clock).encode(), b"0"]
        if words[:2] == ("CLUSTER", "COUNTKEYSINSLOT"):
            return 3
        if words[:2] == ("CLUSTER", "MIGRATESLOTS"):
            ranges = words[3:-2]
            text = " ".join(f"{ranges[i]}-{ranges[i + 1]}" for i in range(0, len(ranges), 2))
            self.jobs.insert(0, job(f"new{len(self.jobs)}", "snapshotting", text, target=words[-1],
                                    created=self.clock, updated=self.clock))
            return b"OK"
        if words[0] == "EVAL":  # AtomicMover.CANCEL_IF_WAITING, as the engine runs it
            assert words[1] == cl.AtomicMover.CANCEL_IF_WAITING
            states = [dict(zip(j[::2], j[1::2], strict=True)) for j in self.jobs]
            if any(s[b"operation"] == b"EXPORT" and s[b"state"] not in (b"success", b"failed", b"cancelled",
                                                                        b"waiting-to-pause") for s in states):
                return 0
            self.jobs = [[*j[:-6], b"state", b"cancelled", *j[-4:]] for j in self.jobs]
            return 1
        raise AssertionError(f"unexpected command {words}")

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)


@dataclass
class Pipeline:
    node: Source
    queued: list[tuple[Any, ...]] = field(default_factory=list)

    def execute_command(self, *args: Any) -> None:
        self.queued.append(args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [self.node.execute_command(*args) for args in self.queued]


class Raw:
    def __init__(self, source: Source) -> None:
        self.source = source

    def get(self, address: tuple[str, int]) -> Source:
        assert address == SOURCE.address
        return self.source


def mover(source: Source, **kwargs: Any) -> cl.AtomicMover:
    return cl.AtomicMover(Raw(source), poll=0.0, **kwargs)  # type: ignore[arg-type]


def started(source: Source) -> list[tuple[str, ...]]:
    return [w for w in source.sent if w[:2] == ("CLUSTER", "MIGRATESLOTS")]


def test_jobs_are_read_from_either_reply_form() -> None:
    flat = job("j1", "replicating", "0-9 20-29")
    as_map = dict(zip(flat[::2], flat[1::2], strict=True))
    for reply in ([flat], [as_map]):
        (parsed,) = cl.parse_slot_jobs(reply)
        assert parsed.slots == ((0, 9), (20, 29))
        assert (parsed.name, parsed.operation, parsed.state) == ("j1", "EXPORT", "replicating")
        assert parsed.target == TARGET.id
        assert not parsed.finished
        assert len(parsed.slot_set()) == 20
    assert cl.parse_slot_jobs([job("j2", "cancelled", "7-7")])[0].failed


def test_a_move_starts_one_job_for_all_its_slots_and_waits_for_it() -> None:
    source = Source(finish_after=3)
    stats = mover(source).move(SOURCE, TARGET, [*range(0, 10), 12], deadline=1e18)
    assert started(source) == [("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", "0", "9", "12", "12", "NODE", TARGET.id)]
    assert (stats.slots, stats.keys, stats.running, stats.followed) == (11, 33, False, False)


def test_a_job_still_running_at_the_deadline_is_left_to_the_next_pass() -> None:
    source = Source()
    stats = mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert stats.running
    assert len(started(source)) == 1
    again = mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert (again.followed, again.running) == (True, True)
    assert len(started(source)) == 1, "the next pass follows the job, it starts no other"


def test_a_job_found_running_is_followed_and_nothing_else_starts() -> None:
    source = Source(jobs=[job("old", "replicating", "500-599")], finish_after=2)
    stats = mover(source).move(SOURCE, TARGET, range(100), deadline=1e18)
    assert started(source) == []
    assert (stats.followed, stats.slots, stats.job) == (True, 100, "old")


def test_a_failed_job_raises_with_the_engines_reason() -> None:
    source = Source(finish_after=2, outcome=(b"failed", b"Slots are no longer owned by source node"))
    with pytest.raises(cl.MigrationError, match=r"no longer owned by source node.*starts again"):
        mover(source).move(SOURCE, TARGET, range(100), deadline=1e18)


@pytest.mark.parametrize(("failures", "since", "refused"), [
    (1, 4, True), (1, 6, False),  # 5 s after one failure
    (2, 9, True), (2, 11, False),  # 10 s after two
    (9, 299, True), (9, 301, False),  # never more than 300 s
])
def test_a_failed_move_is_retried_after_a_back_off_on_the_sources_clock(failures: int, since: int,
                                                                         refused: bool) -> None:
    source = Source(jobs=[job(f"f{i}", "failed", updated=1000 - i) for i in range(failures)], clock=1000 + since)
    if refused:
        with pytest.raises(cl.MigrationError, match=f"failed {failures} time"):
            mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
        assert started(source) == []
    else:
        mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
        assert len(started(source)) == 1


def test_only_the_failures_since_the_last_success_within_the_hour_count() -> None:
    # two old failures, then a success, then one failure 6 s ago: one failure counts (5 s), not three
    source = Source(jobs=[job("new", "failed", updated=994), job("ok", "success", updated=990),
                          job("f1", "failed", updated=980), job("f2", "failed", updated=970)], clock=1000)
    mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert len(started(source)) == 1
    # failures older than an hour count no more
    old = Source(jobs=[job(f"f{i}", "failed", updated=-4000 + i) for i in range(8)], clock=1000)
    mover(old).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert len(started(old)) == 1


def test_a_back_off_is_a_wait_with_its_time_not_a_failure() -> None:
    source = Source(jobs=[job("f", "failed", updated=1000)], clock=1002)
    with pytest.raises(cl.MigrationWaiting) as waiting:
        mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert waiting.value.retry_after == 3


def test_failures_of_other_slots_or_targets_do_not_hold_a_move_back() -> None:
    source = Source(jobs=[job("x", "failed", "5000-5099"), job("y", "failed", target="c" * 40)])
    mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert len(started(source)) == 1


def cancelled(source: Source) -> bool:
    return any(b"cancelled" in j for j in source.jobs)


def test_a_job_that_cannot_drain_before_its_pause_is_cancelled() -> None:
    source = Source(jobs=[job("j", "waiting-to-pause", updated=1000)], clock=1000 + 121)
    with pytest.raises(cl.MigrationError, match=r"never drained.*KeyByKey"):
        mover(source).move(SOURCE, TARGET, range(100), deadline=1e18)
    assert cancelled(source)


def test_no_job_is_cancelled_while_another_of_the_node_is_past_its_pause() -> None:
    """CANCELSLOTMIGRATIONS ends every export of the node: one past its pause may have handed its slots
    over already, so nothing is cancelled (the script looks and cancels in one step)."""
    source = Source(jobs=[job("other", "failover-granted", "9000-9099", target="c" * 40),
                          job("j", "waiting-to-pause", updated=1000)], clock=1000 + 121)
    stats = mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert stats.running
    assert any(w[0] == "EVAL" for w in source.sent), "the script was asked"
    assert not cancelled(source)


@pytest.mark.parametrize("state", ["failover-paused", "failover-granted", "snapshotting", "replicating"])
def test_a_job_past_its_pause_or_still_copying_is_never_cancelled(state: str) -> None:
    source = Source(jobs=[job("j", state, updated=0)], clock=10_000)
    stats = mover(source).move(SOURCE, TARGET, range(100), deadline=0.0)
    assert stats.running
    assert not any(w[0] == "EVAL" for w in source.sent)


def test_only_valkey_9_and_later_moves_slots_itself() -> None:
    assert has_atomic_slot_migration(Engine("valkey", (9, 0, 0)))
    assert has_atomic_slot_migration(Engine("valkey", (9, 1, 2)))
    assert not has_atomic_slot_migration(Engine("valkey", (8, 1, 1)))
    assert not has_atomic_slot_migration(Engine("redis", (8, 0, 6)))
    assert not has_atomic_slot_migration(None)


def test_the_engine_moves_slots_only_when_every_node_answers_with_valkey_9() -> None:
    def obs(*engines: Engine | None, reachable: bool = True) -> ct.Observation:
        views = {f"p{i}": cl.NodeView(("10.0.0.1", 6379 + i), reachable=reachable, engine=e)
                 for i, e in enumerate(engines)}
        return ct.Observation(views=views, members={}, shards=3, replicas_per_shard=0, min_good_replicas=0,
                              pod_of=lambda host: None)

    nine, eight = Engine("valkey", (9, 1, 2)), Engine("valkey", (8, 1, 1))
    assert ct.atomic_capable(obs(nine, nine))
    assert not ct.atomic_capable(obs(nine, eight)), "an older replica cannot follow the engine's move"
    assert not ct.atomic_capable(obs(nine, None)), "a node that did not say what it runs"
    assert not ct.atomic_capable(obs(nine, reachable=False))
    assert not ct.atomic_capable(obs())


def test_the_way_slots_move_is_a_choice_of_the_resource() -> None:
    cluster = {"mode": "cluster", "cluster": {"shards": 3}}
    assert models.parse_spec(cluster).cluster.slot_migration == "Auto"
    chosen = models.parse_spec({"mode": "cluster", "cluster": {"shards": 3, "slotMigration": "KeyByKey"}})
    assert chosen.cluster.slot_migration == "KeyByKey"
    with pytest.raises(ValueError, match=r"slotMigration|slot_migration"):
        models.parse_spec({"mode": "cluster", "cluster": {"shards": 3, "slotMigration": "Fast"}})


class Recorder:
    """Stands in for the two movers in the topology's module: what it was asked to do."""

    def __init__(self, *, running: list[cl.SlotJob] | None = None, importing: list[cl.SlotJob] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._running = running or []
        self._importing = importing or []

    def atomic(self, raw: Any, **kwargs: Any) -> Any:
        recorder = self

        class Mover:
            def running(self, address: Any) -> list[cl.SlotJob]:
                return recorder._running

            def importing(self, address: Any) -> list[cl.SlotJob]:
                return recorder._importing

            def move(self, source: Any, target: Any, slots: Any, *, deadline: float) -> cl.AtomicStats:
                recorder.calls.append(("atomic", tuple(slots)))
                return cl.AtomicStats(slots=len(slots), job="j", target=target.id)
        return Mover()

    def keyed(self, raw: Any, **kwargs: Any) -> Any:
        recorder = self

        class Mover:
            def move(self, source: Any, target: Any, slots: Any, others: Any, **kw: Any) -> cl.MoveStats:
                recorder.calls.append(("keys", kwargs.get("setslot_connections")))
                return cl.MoveStats(slots=len(slots))
        return Mover()


class Addresses:
    def redis(self, owner: Any, pod: str) -> tuple[str, int]:
        return (pod, 6379)


def execute(monkeypatch: pytest.MonkeyPatch, recorder: Recorder, engines: dict[str, Engine], *, atomic: bool,
            resume: bool = False) -> Any:
    import dataclasses

    from cluster_fake import Fake

    from redis_messaging.builders.names import Owner

    monkeypatch.setattr(cl, "AtomicMover", recorder.atomic)
    monkeypatch.setattr(cl, "SlotMover", recorder.keyed)
    obs = Fake().bootstrapped().observation()
    views = {p: dataclasses.replace(v, engine=engines.get(p, engines["*"])) for p, v in obs.views.items()}
    obs = dataclasses.replace(obs, views=views)
    step = ct.Move("r-shard-0-0", "r-shard-1-0", (0, 1, 2), 0, 1, resume=resume)
    topology = ct.ClusterTopology(Addresses())  # type: ignore[arg-type]
    owner = Owner(name="r", namespace="ns", uid="u")
    return topology._execute(step, owner, obs, None, None, 1e18, [], atomic=atomic)  # type: ignore[arg-type]


NINE, EIGHT, REDIS = Engine("valkey", (9, 1, 2)), Engine("valkey", (8, 1, 1)), Engine("redis", (7, 0, 15))


def test_the_engine_moves_the_slots_when_the_resource_may_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    action = execute(monkeypatch, recorder, {"*": NINE}, atomic=True)
    assert recorder.calls == [("atomic", (0, 1, 2))]
    assert "atomically" in action.message


def test_half_moved_slots_are_finished_key_by_key_even_where_the_engine_could(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    execute(monkeypatch, recorder, {"*": NINE}, atomic=True, resume=True)
    assert [c[0] for c in recorder.calls] == ["keys"]


def test_a_key_by_key_move_follows_an_engine_job_running_on_its_source_first(monkeypatch: pytest.MonkeyPatch) -> None:
    running = cl.parse_slot_jobs([job("j", "replicating")])
    recorder = Recorder(running=running)
    execute(monkeypatch, recorder, {"*": NINE}, atomic=False)  # KeyByKey chosen, a job still runs
    assert [c[0] for c in recorder.calls] == ["atomic"]


def test_a_key_by_key_move_waits_while_its_target_imports_for_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    importing = cl.parse_slot_jobs([job("j", "receiving-snapshot", operation="IMPORT")])
    recorder = Recorder(importing=importing)
    with pytest.raises(cl.MigrationWaiting, match="waits for it to end"):
        execute(monkeypatch, recorder, {"*": NINE}, atomic=False)
    assert recorder.calls == []


@pytest.mark.parametrize(("engine", "connections"), [(EIGHT, ct.SETSLOT_CONNECTIONS), (REDIS, 1)])
def test_setslot_is_spread_only_where_the_engine_waits_for_replicas(monkeypatch: pytest.MonkeyPatch, engine: Engine,
                                                                    connections: int) -> None:
    recorder = Recorder()
    execute(monkeypatch, recorder, {"*": engine}, atomic=False)
    assert recorder.calls == [("keys", connections)]

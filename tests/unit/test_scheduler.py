"""When each resource's work runs: concurrently across resources, one at a time for each."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from redis_messaging.runtime.scheduler import Scheduler


def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.005)


@pytest.fixture
def made() -> Iterator[list[Scheduler[str]]]:
    schedulers: list[Scheduler[str]] = []
    yield schedulers
    for s in schedulers:
        s.stop(timeout=5)


def scheduler(made: list[Scheduler[str]], run: Callable[[str], float | None], *, workers: int = 4,
              period: float = 30.0, from_start: bool = False) -> Scheduler[str]:
    s: Scheduler[str] = Scheduler(run, workers=workers, period=period, name="test", from_start=from_start)
    made.append(s)
    s.start()
    return s


def test_a_slow_resource_delays_no_other(made: list[Scheduler[str]]) -> None:
    runs: dict[str, list[float]] = {}
    release = threading.Event()

    def run(key: str) -> float | None:
        runs.setdefault(key, []).append(time.monotonic())
        if key == "unreachable":
            release.wait(5)  # every pod of it times out
        return 0.02

    s = scheduler(made, run)
    for key in ("unreachable", "a", "b"):
        s.wake(key)
    eventually(lambda: len(runs.get("a", [])) >= 10 and len(runs.get("b", [])) >= 10,
               what="ten passes of each other resource while one hangs")
    assert len(runs["unreachable"]) == 1  # never two passes of one resource at once
    release.set()
    eventually(lambda: len(runs["unreachable"]) >= 2, what="the slow one's next pass")


def test_one_resource_never_runs_twice_at_once_and_a_wake_during_a_run_is_not_lost(made: list[Scheduler[str]]) -> None:
    inside = threading.Event()
    proceed = threading.Event()
    running = 0
    most = 0
    count = 0
    lock = threading.Lock()

    def run(key: str) -> float | None:
        nonlocal running, most, count
        with lock:
            running += 1
            most = max(most, running)
            count += 1
        inside.set()
        proceed.wait(5)
        with lock:
            running -= 1
        return None  # back after the period (30 s)

    s = scheduler(made, run)
    s.wake("orders")
    assert inside.wait(5)
    for _ in range(5):
        s.wake("orders")  # a failover followed, a pod event: during the pass
    proceed.set()
    eventually(lambda: count == 2, what="one more pass once the first one ended")
    time.sleep(0.1)
    assert count == 2
    assert most == 1
    assert s.due_in("orders") is not None
    assert 25 < (s.due_in("orders") or 0) <= 30


def test_sooner_wins_and_a_removed_key_is_never_run_again(made: list[Scheduler[str]]) -> None:
    ran: list[str] = []
    s = scheduler(made, lambda key: ran.append(key) or None)
    s.add("orders")
    s.wake("orders", 10.0)
    s.wake("orders", 0.05)
    s.wake("orders", 20.0)
    eventually(lambda: ran == ["orders"], what="the pass asked for soonest")
    s.remove("orders")
    s.wake("other")
    eventually(lambda: ran == ["orders", "other"], what="the other pass")
    assert "orders" not in s.scheduled()


def test_a_failing_run_comes_back_later_and_the_others_go_on(made: list[Scheduler[str]]) -> None:
    ran: list[str] = []

    def run(key: str) -> float | None:
        ran.append(key)
        if key == "broken":
            raise RuntimeError("boom")
        return 0.01

    s = scheduler(made, run, period=30.0)
    s.wake("broken")
    s.wake("fine")
    eventually(lambda: ran.count("fine") >= 5, what="the good resource's passes")
    assert ran.count("broken") == 1
    assert 5 < (s.due_in("broken") or 0) <= 10  # min(period, 10 s)


def test_ticks_counted_from_their_start_keep_their_rate(made: list[Scheduler[str]]) -> None:
    starts: list[float] = []

    def run(_: str) -> float | None:
        starts.append(time.monotonic())
        time.sleep(0.05)
        return None

    s = scheduler(made, run, period=0.1, from_start=True)
    s.wake("orders")
    eventually(lambda: len(starts) >= 6, what="six ticks")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(gaps) < 0.14, gaps  # 0.1 s from start to start, not 0.15 s (start + run + period)


def test_concurrency_is_bounded(made: list[Scheduler[str]]) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def run(_: str) -> float | None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return None

    s = scheduler(made, run, workers=3)
    for i in range(12):
        s.wake(f"r{i}")
    eventually(lambda: not s.running() and all((s.due_in(f"r{i}") or 0) > 1 for i in range(12)),
               what="every pass done")
    assert most == 3


def test_a_woken_key_goes_before_the_keys_whose_period_came_round(made: list[Scheduler[str]]) -> None:
    # One worker, held by a pass that waits on pods that do not answer; meanwhile the period of five
    # other resources comes round, then one resource is edited. The edit's pass is the next to run.
    order: list[str] = []
    release = threading.Event()

    def run(key: str) -> float | None:
        order.append(key)
        if key == "unreachable":
            release.wait(5)
        return None

    s = scheduler(made, run, workers=1, period=30.0)
    s.wake("unreachable")
    eventually(lambda: order == ["unreachable"], what="the slow pass running")
    for i in range(5):
        s.add(f"periodic-{i}", after=0.0)
    time.sleep(0.05)
    s.wake("edited")
    release.set()
    eventually(lambda: len(order) == 7, what="every pass")
    assert order[1] == "edited", order
    assert order[2:] == [f"periodic-{i}" for i in range(5)]  # the others in the order they came due


def test_no_more_keys_are_handed_out_than_workers_are_free(made: list[Scheduler[str]]) -> None:
    release = threading.Event()
    s = scheduler(made, lambda _: release.wait(5) and None, workers=2)
    for i in range(6):
        s.wake(f"r{i}")
    eventually(lambda: len(s.running()) == 2, what="two passes running")
    time.sleep(0.05)
    assert len(s.running()) == 2
    assert len(s.scheduled()) == 6  # the other four wait, still scheduled, none queued in the pool
    release.set()
    eventually(lambda: all((s.due_in(f"r{i}") or 0) > 1 for i in range(6)), what="every pass done")

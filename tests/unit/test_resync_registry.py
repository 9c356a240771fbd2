"""When each resource gets its next pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from redis_messaging.reconcile.resync import Registry, resync_forever

INTERVAL = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def body(name: str, generation: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "uid": f"uid-{name}"}
    if generation is not None:
        meta["generation"] = generation
    return {"metadata": meta}


def names(due: list[tuple[tuple[str, str], dict[str, Any]]]) -> list[str]:
    return [key[1] for key, _ in due]


def first_pass_due() -> tuple[Clock, Registry]:
    """A registry that has just seen "orders", its clock moved to that resource's first pass."""
    clock = Clock()
    r = Registry(clock)
    r.observe("ADDED", body("orders"))
    assert names(r.due(INTERVAL)) == []
    clock.now += INTERVAL
    assert names(r.due(INTERVAL)) == ["orders"]
    return clock, r


def test_a_resource_at_rest_is_due_every_interval() -> None:
    clock, r = first_pass_due()
    r.done(("ns", "orders"), INTERVAL)
    clock.now += INTERVAL - 1
    assert names(r.due(INTERVAL)) == []


def test_a_pass_asked_for_while_another_runs_is_not_lost_when_that_one_ends() -> None:
    # A failover is followed (from a watch thread) during a pass that found nothing to do: the pass
    # ends asking for the usual period, the failover's request for a pass at once still holds.
    clock, r = first_pass_due()
    r.schedule(("ns", "orders"), 0.0)  # during the pass
    r.done(("ns", "orders"), INTERVAL)
    assert names(r.due(INTERVAL)) == ["orders"]
    r.done(("ns", "orders"), INTERVAL)  # that request was served: back to the period
    clock.now += 1
    assert names(r.due(INTERVAL)) == []


def test_sooner_wins_and_a_deleted_resource_is_forgotten() -> None:
    clock = Clock()
    r = Registry(clock)
    r.observe("ADDED", body("orders"))
    r.schedule(("ns", "orders"), 10.0)
    r.schedule(("ns", "orders"), 2.0)
    r.schedule(("ns", "orders"), 20.0)
    clock.now += 2
    assert names(r.due(INTERVAL)) == ["orders"]
    r.observe("DELETED", body("orders"))
    r.done(("ns", "orders"), 0.0)
    clock.now += INTERVAL
    assert names(r.due(INTERVAL)) == []


def test_the_loop_comes_back_when_a_pass_asks_and_survives_a_failing_one() -> None:
    r = Registry()
    r.observe("ADDED", body("orders"))
    r.observe("ADDED", body("broken"))
    r.schedule(("ns", "orders"), 0.0)
    r.schedule(("ns", "broken"), 0.0)
    seen: list[str] = []

    async def main() -> None:
        stopped = asyncio.Event()

        def run_pass(b: dict[str, Any]) -> float | None:
            seen.append(b["metadata"]["name"])
            if b["metadata"]["name"] == "broken":
                raise RuntimeError("boom")
            if seen.count("orders") >= 3:
                stopped.set()
            return 0.05

        await asyncio.wait_for(resync_forever(r, run_pass, INTERVAL, stopped, tick=0.01), timeout=5)

    asyncio.run(main())
    assert seen.count("orders") == 3
    assert seen.count("broken") == 1  # a failed pass comes back after min(interval, 10 s)


def run_loop(r: Registry, run_pass: Callable[[dict[str, Any]], float | None], stopped: asyncio.Event) -> None:
    async def main() -> None:
        await asyncio.wait_for(resync_forever(r, run_pass, INTERVAL, stopped, tick=0.01), timeout=5)

    asyncio.run(main())


def test_a_pass_runs_on_the_body_of_when_it_starts_not_of_when_its_round_began() -> None:
    # Two resources due in one round; while the first one's pass runs long, an edit of the second one
    # arrives (and Kopf's update handler applies it). The second one's periodic pass must not run on
    # the body from before the edit: it would roll the pods back to the old template.
    r = Registry()
    r.observe("ADDED", body("slow"))
    r.observe("ADDED", body("edited", generation=1))
    r.schedule(("ns", "slow"), 0.0)
    r.schedule(("ns", "edited"), 0.0)
    ran_on: dict[str, int | None] = {}
    stopped = asyncio.Event()

    def run_pass(b: dict[str, Any]) -> float | None:
        name = b["metadata"]["name"]
        ran_on[name] = b["metadata"].get("generation")
        if name == "slow":
            time.sleep(0.1)
            r.observe("MODIFIED", body("edited", generation=2))  # the watch, during this pass
        else:
            stopped.set()
        return None

    run_loop(r, run_pass, stopped)
    assert ran_on == {"slow": None, "edited": 2}


def test_a_resource_deleted_during_a_round_gets_no_pass_in_it() -> None:
    r = Registry()
    r.observe("ADDED", body("slow"))
    r.observe("ADDED", body("deleted"))
    r.observe("ADDED", body("last"))
    for name in ("slow", "deleted", "last"):
        r.schedule(("ns", name), 0.0)
    ran: list[str] = []
    stopped = asyncio.Event()

    def run_pass(b: dict[str, Any]) -> float | None:
        ran.append(b["metadata"]["name"])
        if ran[-1] == "slow":
            r.observe("DELETED", body("deleted"))
        if ran[-1] == "last":
            stopped.set()
        return None

    run_loop(r, run_pass, stopped)
    assert ran == ["slow", "last"]

"""The safety net: every known resource gets a pass at a steady period.

Kopf's timers and daemons put a finalizer on the resource, and a finalizer blocks deletion whenever
the operator is not running. The operator therefore keeps its periodic work at the operator level:
a registry fed by watch events and one supervising task, so deleting a resource never waits on us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Registry:
    """The latest body of every resource the operator watches, from watch events, and when each
    is due for its next pass."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._due: dict[Key, float] = {}
        self._clock = clock
        self._asked: dict[Key, float] = {}  # explicit schedule() calls not yet served by a pass
        self._lock = threading.Lock()  # passes are scheduled from other threads too (failover watches)

    @staticmethod
    def key_of(body: Mapping[str, Any]) -> Key:
        meta = body.get("metadata") or {}
        return (meta.get("namespace", ""), meta.get("name", ""))

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = self.key_of(body)
        with self._lock:
            if event_type == "DELETED" or (body.get("metadata") or {}).get("deletionTimestamp"):
                self._bodies.pop(key, None)
                self._due.pop(key, None)
                self._asked.pop(key, None)
            else:
                self._bodies[key] = dict(body)

    def schedule(self, key: Key, after: float) -> None:
        """The next pass of ``key`` in ``after`` seconds (sooner wins over later); asked during a
        pass of ``key``, it still holds when that pass ends."""
        due = self._clock() + after
        with self._lock:
            self._due[key] = min(due, self._due.get(key, due))
            self._asked[key] = min(due, self._asked.get(key, due))

    def due(self, interval: float) -> list[tuple[Key, dict[str, Any]]]:
        """Resources whose pass is due; a resource seen for the first time is due after ``interval``."""
        now = self._clock()
        out = []
        with self._lock:
            for key, body in list(self._bodies.items()):
                when = self._due.setdefault(key, now + interval)
                if when <= now:
                    self._asked.pop(key, None)  # served by this pass
                    out.append((key, body))
        return out

    def done(self, key: Key, after: float) -> None:
        with self._lock:
            if key in self._bodies:
                due = self._clock() + after
                self._due[key] = min(due, self._asked.pop(key, due))

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._bodies.get(key)

    def clear(self) -> None:
        with self._lock:
            self._bodies.clear()
            self._due.clear()
            self._asked.clear()


async def resync_forever(registry: Registry, run_pass: Callable[[dict[str, Any]], float | None],
                         interval: float, stopped: asyncio.Event, *, tick: float = 0.25) -> None:
    """Run ``run_pass`` (blocking; in a worker thread) for every resource when it is due: every
    ``interval`` seconds, or sooner when the previous pass asked to come back (its return value)."""
    while not stopped.is_set():
        for key, body in registry.due(interval):
            if stopped.is_set():
                break
            retry: float | None = None
            try:
                retry = await asyncio.to_thread(run_pass, body)
            except Exception as exc:  # one broken resource must not stop the others' passes
                log.error("periodic pass of %s/%s failed: %s: %s", *key, type(exc).__name__, exc)
                retry = min(interval, 10.0)
            registry.done(key, retry if retry is not None else interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=tick)

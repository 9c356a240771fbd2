"""When each resource's work runs: concurrently across resources, one at a time for each.

A :class:`Scheduler` keeps, per key, when its next run is due. One dispatcher thread hands due keys
to a bounded pool of worker threads, one key per free worker; a key that is running is never handed
out again until its run ends, so a slow or unreachable resource holds one worker and delays nobody
else. A run returns when it wants to come back (seconds; None: after the period). Asked to run while
running (:meth:`wake`), a key runs again as soon as the current run ends.

When more keys are due than workers are free, a key that was woken (a spec change, a pod that became
Ready, a failover) goes before the keys whose period came round, and among each the one due first
goes first: 1,000 safety-net passes of resources whose pods do not answer never make an edit wait
for all of them.

The reconcile passes and the autoscaler ticks each have a scheduler of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

ERROR_RETRY_SECONDS = 10.0
"""A run that raised comes back after this long (or after the period, when shorter)."""


class Scheduler(Generic[K]):
    def __init__(self, run: Callable[[K], float | None], *, workers: int, period: float, name: str,
                 from_start: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        """``run(key)`` does the work of one key; ``period``: seconds between runs of a key when the run
        asks for nothing sooner, counted from the end of a run, or from its start with ``from_start``."""
        self._run = run
        self.period = period
        self.name = name
        self._from_start = from_start
        self._clock = clock
        self._due: dict[K, float] = {}
        self._woken: set[K] = set()  # due keys that were woken, not merely due by their period
        self._running: set[K] = set()
        self._again: dict[K, float] = {}  # asked for while running: when
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.workers = workers

    # -- what is scheduled ------------------------------------------------------------------------
    def add(self, key: K, after: float | None = None) -> None:
        """Schedule ``key`` (after the period by default) unless it is scheduled or running already."""
        with self._cond:
            if key in self._due or key in self._running:
                return
            self._due[key] = self._clock() + (self.period if after is None else after)
            self._cond.notify()

    def wake(self, key: K, after: float = 0.0) -> None:
        """Run ``key`` within ``after`` seconds (sooner wins over later); asked while it runs, it runs
        again once the current run ends."""
        with self._cond:
            when = self._clock() + after
            if key in self._running:
                self._again[key] = min(when, self._again.get(key, when))
            else:
                self._due[key] = min(when, self._due.get(key, when))
                self._woken.add(key)
            self._cond.notify()

    def remove(self, key: K) -> None:
        """Forget ``key``: a run under way finishes, and nothing of it is scheduled again."""
        with self._cond:
            self._due.pop(key, None)
            self._woken.discard(key)
            self._again.pop(key, None)
            self._running.discard(key)

    def scheduled(self) -> set[K]:
        with self._cond:
            return set(self._due) | set(self._running)

    def running(self) -> set[K]:
        with self._cond:
            return set(self._running)

    def due_in(self, key: K) -> float | None:
        """Seconds until ``key``'s next run (None: not scheduled, or running)."""
        with self._cond:
            when = self._due.get(key)
            return None if when is None else when - self._clock()

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopped = False
            self._thread = threading.Thread(target=self._dispatch, name=f"{self.name}-dispatch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop handing out work and wait (up to ``timeout``) for the runs under way."""
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._woken.clear()
            self._again.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = self._clock()
                free = self.workers - len(self._running)
                ready = sorted((key not in self._woken, when, i, key)
                               for i, (key, when) in enumerate(self._due.items()) if when <= now)
                for *_, key in ready[:max(free, 0)]:
                    del self._due[key]
                    self._woken.discard(key)
                    self._running.add(key)
                    try:
                        self._pool.submit(self._one, key)
                    except RuntimeError:  # the pool is shutting down
                        return
                # due keys that found no free worker wait until a run ends (it notifies), others their time
                next_due = min((when for when in self._due.values()), default=now + 1.0)
                wait = 1.0 if len(ready) > free else next_due - now
                self._cond.wait(timeout=min(max(wait, 0.0), 1.0))

    def _one(self, key: K) -> None:
        started = self._clock()
        after: float | None = None
        try:
            after = self._run(key)
        except Exception as exc:  # one broken resource must not stop the others
            log.error("%s of %s failed: %s: %s", self.name, key, type(exc).__name__, exc, exc_info=True)
            after = min(self.period, ERROR_RETRY_SECONDS)
        with self._cond:
            if key not in self._running:  # removed while it ran
                self._again.pop(key, None)
                self._cond.notify()
                return
            self._running.discard(key)
            if self._stopped:
                return
            now = self._clock()
            base = started if self._from_start and after is None else now
            when = base + (self.period if after is None else after)
            again = self._again.pop(key, None)
            if again is not None:
                when = min(when, max(again, now))
                self._woken.add(key)
            self._due[key] = min(when, self._due.get(key, when))
            self._cond.notify()

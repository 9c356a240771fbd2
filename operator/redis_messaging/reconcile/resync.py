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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
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
        """Resources whose pass is due; a resource seen for the first time is due after ``interval``.

        The bodies are those known now; a pass that starts later reads its body again (:meth:`get`),
        since a watch event may have brought a newer one in between."""
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


def generation_of(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class _Turn:
    lock: threading.Lock = field(default_factory=threading.Lock)
    handled: int | None = None  # the highest generation a pass of this uid has started on


class PassOrder:
    """Which body a pass of a resource may run on: the newest one known, never an older generation.

    Passes of one resource start from several places, each with the body it got at some moment:
    Kopf's create/update/resume handlers (the body of their event), the periodic loop (the registry),
    a followed failover (a pass asked of the loop). A pass on a body older than one that another pass
    already handled undoes that pass's work: it rolls the pods back to the previous template, puts
    back a removed stream, shrinks what was grown. So a pass

    1. starts from the newest body known when it starts (:meth:`newest`; the periodic loop reads
       the registry right before each pass), and
    2. is refused when its generation is older than the highest one a pass of the same uid has
       already started on (:meth:`turn`, which also runs the passes of one resource one at a time).
       A refused pass writes nothing and asks to come back soon, on the newest body.

    Generations are compared within one uid only (a resource re-created under the same name starts
    again at 1), and an entry is dropped when its resource is deleted (:meth:`forget`). A body
    without a generation (the API server always sets one; hand-made bodies may lack it) cannot be
    ordered: it is admitted and records nothing.

    Kept to this one small object so that a per-resource controller can take over its own entry
    (the turn and the generation) when passes of different resources run concurrently.
    """

    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}
        self._guard = threading.Lock()

    def _turn(self, uid: str) -> _Turn:
        with self._guard:
            return self._turns.setdefault(uid, _Turn())

    @contextlib.contextmanager
    def turn(self, uid: str, generation: int | None) -> Iterator[bool]:
        """Hold the resource's turn (one pass at a time); yields whether a pass may run on
        ``generation``, and records it as handled when it may."""
        turn = self._turn(uid)
        with turn.lock:
            if generation is not None and turn.handled is not None and generation < turn.handled:
                yield False
                return
            if generation is not None:
                turn.handled = generation
            yield True

    def handled(self, uid: str) -> int | None:
        with self._guard:
            turn = self._turns.get(uid)
        return None if turn is None else turn.handled

    def forget(self, uid: str) -> None:
        with self._guard:
            self._turns.pop(uid, None)

    @staticmethod
    def newest(body: Mapping[str, Any], known: Mapping[str, Any] | None) -> dict[str, Any]:
        """Of the body a pass was handed and the newest one the watch delivered (``known``, from
        the registry), the one to run on: ``known`` when it is of the same resource (uid) and of a
        generation at least as high (watch events arrive in order: on a tie it is the later copy)."""
        if known is None or (known.get("metadata") or {}).get("uid") != (body.get("metadata") or {}).get("uid"):
            return dict(body)
        mine, theirs = generation_of(body), generation_of(known)
        if mine is not None and (theirs is None or theirs < mine):
            return dict(body)
        return dict(known)


async def resync_forever(registry: Registry, run_pass: Callable[[dict[str, Any]], float | None],
                         interval: float, stopped: asyncio.Event, *, tick: float = 0.25) -> None:
    """Run ``run_pass`` (blocking; in a worker thread) for every resource when it is due: every
    ``interval`` seconds, or sooner when the previous pass asked to come back (its return value).
    Each pass gets the resource's body as the registry holds it when that pass starts."""
    while not stopped.is_set():
        for key, _ in registry.due(interval):
            if stopped.is_set():
                break
            # The body as it is now, not as it was when the round started: an earlier pass of this
            # round may have run long, and a pass on an older body would undo a newer edit.
            body = registry.get(key)
            if body is None:  # deleted meanwhile
                continue
            retry: float | None = None
            try:
                retry = await asyncio.to_thread(run_pass, body)
            except Exception as exc:  # one broken resource must not stop the others' passes
                log.error("periodic pass of %s/%s failed: %s: %s", *key, type(exc).__name__, exc)
                retry = min(interval, 10.0)
            registry.done(key, retry if retry is not None else interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=tick)

"""The safety net: every known resource gets a pass at a steady period.

Kopf's timers and daemons put a finalizer on the resource, and a finalizer blocks deletion whenever
the operator is not running. The operator therefore keeps its periodic work at the operator level:
a registry fed by watch events and one supervising task, so deleting a resource never waits on us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Registry:
    """The latest body of every resource the operator watches, from watch events."""

    def __init__(self) -> None:
        self._bodies: dict[Key, dict[str, Any]] = {}

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self._bodies.pop(key, None)
        else:
            self._bodies[key] = dict(body)

    def snapshot(self) -> dict[Key, dict[str, Any]]:
        return dict(self._bodies)

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._bodies.get(key)


async def resync_forever(registry: Registry, run_pass: Callable[[dict[str, Any]], object],
                         interval: float, stopped: asyncio.Event) -> None:
    """Run ``run_pass`` (blocking; in a worker thread) over every known resource each period."""
    while not stopped.is_set():
        for key, body in registry.snapshot().items():
            if stopped.is_set():
                break
            if registry.get(key) is None:  # deleted meanwhile
                continue
            try:
                await asyncio.to_thread(run_pass, body)
            except Exception as exc:  # one broken resource must not stop the others' passes
                log.error("periodic pass of %s/%s failed: %s: %s", *key, type(exc).__name__, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=interval)

"""A planned switch-over without losing an acknowledged write.

``SENTINEL FAILOVER`` alone leaves a window: after the promotion, the old master still accepts writes,
and a replica that Sentinel has not re-pointed yet acknowledges them (``WAIT``); both are then
re-synced from the new master and those writes are gone. So the old master's writes are paused
first (``CLIENT PAUSE ... WRITE``), the replicas catch up with it, and only then Sentinel fails over;
the pause ends when the old master is a replica (or at its timeout, should the failover not happen).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis.exceptions import RedisError

from redis_messaging.redis import sentinel as rs

Address = tuple[str, int]


def pause_writes(conns: rs.Connections, master: Address, millis: int) -> None:
    conns.get(master).execute_command("CLIENT", "PAUSE", str(millis), "WRITE")  # type: ignore[no-untyped-call]


def unpause(conns: rs.Connections, address: Address) -> bool:
    """End a pause (a no-op where none is); False when the process did not answer."""
    try:
        conns.get(address).execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    except (RedisError, OSError):
        return False
    return True


def caught_up(conns: rs.Connections, master: Address, replicas: Iterable[Address], *, timeout: float) -> bool:
    """Until every replica's offset reached the (paused) master's, at most ``timeout`` seconds."""
    replicas = list(replicas)
    deadline = time.monotonic() + timeout
    while True:
        target = rs.observe_redis(conns, master).offset
        if all(rs.observe_redis(conns, r).offset >= target for r in replicas):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)

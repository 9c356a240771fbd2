"""What a test looks at to prove nothing is left behind: open sockets, threads by name."""

from __future__ import annotations

import os
import threading


def open_sockets() -> int:
    """Sockets this process holds open now."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def threads_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]

"""Status conditions: pure helpers, the clock passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READY = "Ready"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
ORDER = (READY, AVAILABLE, PROGRESSING, DEGRADED)


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge(old: list[dict[str, Any]], new: list[Cond], *, now: str, generation: int | None) -> list[dict[str, Any]]:
    """New conditions; lastTransitionTime moves only when a condition's status changes."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for cond in sorted(new, key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER)):
        prev = previous.get(cond.type)
        changed = prev is None or prev.get("status") != cond.status_text
        out.append({
            "type": cond.type,
            "status": cond.status_text,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now if changed else prev["lastTransitionTime"],  # type: ignore[index]
            "observedGeneration": generation,
        })
    return out


def transitions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditions whose status or reason differs from before (worth an Event)."""
    previous = {c.get("type"): c for c in old or []}
    return [
        c for c in new
        if (p := previous.get(c["type"])) is None
        or (p.get("status"), p.get("reason")) != (c["status"], c["reason"])
    ]

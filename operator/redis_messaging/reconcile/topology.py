"""The check-and-heal step of a pass: what a mode-specific topology controller reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders.names import Owner


@dataclass(frozen=True)
class Action:
    """Something the topology controller did, worth an Event."""

    reason: str  # CamelCase, e.g. "MasterLabelMoved", "SplitBrainRepaired"
    message: str
    warning: bool = False


@dataclass(frozen=True)
class TopologyReport:
    master: str | None = None
    available: bool | None = None  # None: not known (no pod reachable yet)
    healthy: bool = False
    reason: str = "WaitingForPods"
    message: str = ""
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # extra status fields (shards, ...)
    labels: dict[str, str] = field(default_factory=dict)  # pod name -> role label value
    retry_after: float | None = None
    release: list[str] = field(default_factory=list)  # workloads whose job is done: the pass deletes them


class Topology(Protocol):
    def check_and_heal(self, spec: RedisMessagingSpec, owner: Owner, pods: list[dict[str, Any]],
                       password: str | None) -> TopologyReport:
        """Inspect the running Redis processes, repair what needs repair, report."""

    def close(self) -> None:
        """Close every connection it holds (its resource is gone)."""

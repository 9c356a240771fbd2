"""What differs between Sentinel and Cluster mode, behind one protocol: :class:`Mode`.

Each mode is one package (:mod:`redis_messaging.modes.sentinel`, :mod:`redis_messaging.modes.cluster`)
with its objects (StatefulSets, Services, PDBs, the ConfigMap's files), its check-and-heal topology
controller, its ordered rolling update, its readiness and connection status, and (Sentinel mode) its
failover follow-up. The reconcile pass and the runtime speak only to this protocol; an import contract
keeps the two modes independent of each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders.names import Owner
from redis_messaging.builders.tls import Facts
from redis_messaging.kube.client import Kube
from redis_messaging.modes.rollout import RollReport
from redis_messaging.redis import engine
from redis_messaging.redis.addresses import Addresses

Obj = dict[str, Any]


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


def engine_status(engines: Iterable[engine.Engine | None]) -> dict[str, Any]:
    """``status.engine`` from what the Redis processes said (INFO server); nothing when none answered,
    so that the last one seen stays (the pass judges image changes by it)."""
    found = engine.summary(engines)
    return {"engine": found} if found else {}


class Topology(Protocol):
    def check_and_heal(self, spec: RedisMessagingSpec, owner: Owner, pods: list[dict[str, Any]],
                       password: str | None) -> TopologyReport:
        """Inspect the running Redis processes, repair what needs repair, report."""

    def close(self) -> None:
        """Close every connection it holds (its resource is gone)."""


class Roller(Protocol):
    def run(self, spec: RedisMessagingSpec, owner: Owner, statefulsets: Mapping[str, Obj], pods: list[Obj],
            password: str | None) -> RollReport:
        """One move of the ordered rolling update: the pods outdated against their StatefulSets."""

    def close(self) -> None:
        """Close every connection it holds."""


class Watch(Protocol):
    """A mode's follow-up of failovers as they happen (Sentinel's ``+switch-master``)."""

    def ensure(self, *, redis_replicas: int, sentinel_replicas: int, password: str | None,
               down_after_milliseconds: int = 0) -> None: ...

    def stop(self, timeout: float | None = None) -> None: ...


class Mode(Protocol):
    name: str

    def objects(self, spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
                tls_facts: Facts | None = None) -> list[Obj]:
        """Every child object, in apply order (the generated password Secrets excluded)."""

    def config_files(self, spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
        """The files of the resource's ConfigMap, by key."""

    def redis_pods(self, spec: RedisMessagingSpec, owner: Owner) -> list[str]:
        """Every redis-server pod the spec declares."""

    def sentinel_pods(self, spec: RedisMessagingSpec, owner: Owner) -> list[str]:
        """Every redis-sentinel pod the spec declares (none in Cluster mode)."""

    def readiness(self, spec: RedisMessagingSpec, owner: Owner, live: Mapping[tuple[str, str], Obj]
                  ) -> tuple[bool, str, int]:
        """Whether every pod the spec asks for is ready (from the StatefulSets), in words, and how many
        Redis pods are."""

    def connection(self, spec: RedisMessagingSpec, owner: Owner) -> dict[str, Any]:
        """``status.connection``: where applications connect."""

    def topology(self, addresses: Addresses, *, timeout: float) -> Topology:
        """A new check-and-heal controller (one per resource)."""

    def roller(self, kube: Kube | None, addresses: Addresses, *, timeout: float) -> Roller:
        """A new rolling-update step (one per resource)."""

    def watch(self, kube: Kube, addresses: Addresses, owner: Owner, *, pods: Callable[[], list[Obj]] | None,
              on_followed: Callable[[Owner, Any], None]) -> Watch | None:
        """A new failover follow-up (one per resource), or None when the mode has none."""


def ready_replicas(sts: Obj | None) -> int:
    return int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)

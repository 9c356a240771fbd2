"""Sentinel mode behind the :class:`~redis_messaging.modes.base.Mode` protocol: a master, replicas and
Sentinels; Sentinel decides failovers, the operator follows them and heals what Sentinel cannot."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.builders.tls import Facts
from redis_messaging.kube.client import Kube
from redis_messaging.modes.base import Obj, ready_replicas
from redis_messaging.modes.sentinel import objects, scripts
from redis_messaging.modes.sentinel.rolling import SentinelRoller
from redis_messaging.modes.sentinel.topology import SentinelTopology
from redis_messaging.modes.sentinel.watch import FailoverWatch
from redis_messaging.redis.addresses import Addresses


class SentinelMode:
    name = "sentinel"

    def objects(self, spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
                tls_facts: Facts | None = None) -> list[Obj]:
        return objects.build(spec, owner, password=password, tls_facts=tls_facts)

    def config_files(self, spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
        return scripts.config_files(spec, owner)

    def redis_pods(self, spec: RedisMessagingSpec, owner: Owner) -> list[str]:
        return [owner.redis_pod(i) for i in range(spec.redis.replicas)]

    def sentinel_pods(self, spec: RedisMessagingSpec, owner: Owner) -> list[str]:
        return [owner.sentinel_pod(i) for i in range(spec.sentinel.replicas)]

    def readiness(self, spec: RedisMessagingSpec, owner: Owner, live: Mapping[tuple[str, str], Obj]
                  ) -> tuple[bool, str, int]:
        redis_ready = ready_replicas(live.get(("StatefulSet", owner.redis_sts)))
        sentinel_ready = ready_replicas(live.get(("StatefulSet", owner.sentinel_sts)))
        return (redis_ready >= spec.redis.replicas and sentinel_ready >= spec.sentinel.replicas,
                f"redis {redis_ready}/{spec.redis.replicas} ready, "
                f"sentinel {sentinel_ready}/{spec.sentinel.replicas} ready", redis_ready)

    def connection(self, spec: RedisMessagingSpec, owner: Owner) -> dict[str, Any]:
        return {
            "secretName": owner.connection_secret,
            "host": owner.service_host(owner.master_service),
            "port": names.REDIS_PORT,
            "sentinelHost": owner.service_host(owner.sentinel_service),
            "sentinelPort": names.SENTINEL_PORT,
            "masterName": owner.master_name,
        }

    def topology(self, addresses: Addresses, *, timeout: float) -> SentinelTopology:
        return SentinelTopology(addresses, timeout=timeout)

    def roller(self, kube: Kube | None, addresses: Addresses, *, timeout: float) -> SentinelRoller:
        return SentinelRoller(kube, addresses, timeout=timeout)

    def watch(self, kube: Kube, addresses: Addresses, owner: Owner, *, pods: Callable[[], list[Obj]] | None,
              on_followed: Callable[[Owner, Any], None]) -> FailoverWatch:
        return FailoverWatch(kube, addresses, owner, pods=pods, on_followed=on_followed)

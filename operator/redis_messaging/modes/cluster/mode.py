"""Cluster mode behind the :class:`~redis_messaging.modes.base.Mode` protocol: shards with replicas;
the cluster bus decides failovers, the operator bootstraps, reshards and heals what the bus cannot."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.builders.tls import Facts
from redis_messaging.kube.client import Kube
from redis_messaging.modes.base import Obj, ready_replicas
from redis_messaging.modes.cluster import objects, scripts
from redis_messaging.modes.cluster.rolling import ClusterRoller
from redis_messaging.modes.cluster.topology import ClusterTopology
from redis_messaging.redis.addresses import Addresses


class ClusterMode:
    name = "cluster"

    def objects(self, spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
                tls_facts: Facts | None = None) -> list[Obj]:
        return objects.build(spec, owner, password=password, tls_facts=tls_facts)

    def config_files(self, spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
        return scripts.config_files(spec)

    def redis_pods(self, spec: RedisMessagingSpec, owner: Owner) -> list[str]:
        return objects.all_pods(spec, owner)

    def sentinel_pods(self, spec: RedisMessagingSpec, owner: Owner) -> list[str]:
        return []

    def readiness(self, spec: RedisMessagingSpec, owner: Owner, live: Mapping[tuple[str, str], Obj]
                  ) -> tuple[bool, str, int]:
        per_shard = 1 + spec.cluster.replicas_per_shard
        ready = [ready_replicas(live.get(("StatefulSet", owner.shard(i)))) for i in range(spec.cluster.shards)]
        full = sum(1 for r in ready if r >= per_shard)
        return (full == spec.cluster.shards,
                f"shards {full}/{spec.cluster.shards} ready ({sum(ready)}/{per_shard * spec.cluster.shards} pods)",
                sum(ready))

    def connection(self, spec: RedisMessagingSpec, owner: Owner) -> dict[str, Any]:
        return {
            "secretName": owner.connection_secret,
            "host": owner.service_host(owner.cluster_service),
            "port": names.REDIS_PORT,
        }

    def topology(self, addresses: Addresses, *, timeout: float) -> ClusterTopology:
        return ClusterTopology(addresses, timeout=timeout)

    def roller(self, kube: Kube | None, addresses: Addresses, *, timeout: float) -> ClusterRoller:
        return ClusterRoller(kube, addresses, timeout=timeout)

    def watch(self, kube: Kube, addresses: Addresses, owner: Owner, *, pods: Callable[[], list[Obj]] | None,
              on_followed: Callable[[Owner, Any], None]) -> None:
        return None  # the cluster bus fails over; every pass reads the roles from the nodes

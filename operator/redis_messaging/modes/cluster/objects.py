"""Desired Kubernetes objects for `mode: cluster`: pure functions of the spec.

One StatefulSet per shard (``<name>-shard-<i>``: a master and ``replicasPerShard`` replicas, each
with its own volume holding the data and ``nodes.conf``), one headless Service giving every shard pod
its stable DNS name (the name it announces with ``cluster-announce-hostname``), one client Service
that cluster clients use as a seed, one PodDisruptionBudget per shard, the ConfigMap and the
connection Secret. Which node is master, which slots it serves and how replicas attach is decided at
run time by :mod:`redis_messaging.modes.cluster.topology`; nothing here depends on it.

Objects shared with sentinel mode (ConfigMap, metadata, Services, pod template, volume claim) come
from :mod:`redis_messaging.builders.common`, so both modes render them the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import common, names, pods, tls
from redis_messaging.builders.names import Owner
from redis_messaging.modes.cluster import scripts

Obj = dict[str, Any]

BUS_PORT_OFFSET = 10000
"""Redis Cluster's bus listens on the client port + 10000."""
BUS_PORT = names.BUS_PORT


def shard_selector(owner: Owner, index: int) -> dict[str, str]:
    return {**names.selector_labels(owner, names.COMPONENT_SHARD), names.LABEL_SHARD: str(index)}


def shard_pods(spec: RedisMessagingSpec, owner: Owner, index: int) -> list[str]:
    """The pods of one shard, as its StatefulSet names them (ordinal 0 is the first master)."""
    return [owner.shard_pod(index, j) for j in range(1 + spec.cluster.replicas_per_shard)]


def all_pods(spec: RedisMessagingSpec, owner: Owner) -> list[str]:
    return [p for i in range(spec.cluster.shards) for p in shard_pods(spec, owner, i)]


def seed_addresses(spec: RedisMessagingSpec, owner: Owner) -> list[str]:
    """``host:port`` of every shard pod, by its stable name: what a cluster client starts from."""
    return [f"{owner.pod_host(p, owner.redis_headless)}:{names.REDIS_PORT}" for p in all_pods(spec, owner)]


def connection_secret(spec: RedisMessagingSpec, owner: Owner, password: str | None,
                      tls_facts: tls.Facts | None = None) -> Obj:
    """What applications mount to connect: the client Service, the seed list, a URL, the password,
    and with TLS the CA that signed the servers' certificates (``ca.crt``)."""
    host = owner.service_host(owner.cluster_service)
    scheme = "rediss" if spec.tls.enabled else "redis"
    cred = f":{quote(password, safe='')}@" if password is not None else ""
    data = {
        "mode": "cluster",
        "host": host,
        "port": str(names.REDIS_PORT),
        "seeds": ",".join(seed_addresses(spec, owner)),
        "url": f"{scheme}://{cred}{host}:{names.REDIS_PORT}",
    }
    return common.connection_secret(owner, names.COMPONENT_SHARD, data, password, tls_facts)


def services(owner: Owner) -> list[Obj]:
    component = names.COMPONENT_SHARD
    headless = common.service(owner, owner.redis_headless, component, names.REDIS_PORT, "redis", headless=True)
    # The bus port is published too, so that `kubectl get endpoints` shows what the nodes talk on.
    headless["spec"]["ports"].append(
        {"name": "cluster-bus", "port": BUS_PORT, "targetPort": "cluster-bus", "protocol": "TCP"})
    client = common.service(owner, owner.cluster_service, component, names.REDIS_PORT, "redis")
    return [headless, client]


def script_env(spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
    """The non-secret environment the start, probe and pre-stop scripts read in cluster mode."""
    return {
        "RMSG_MODE": "cluster",
        "RMSG_HEADLESS_SERVICE": owner.redis_headless,
        "RMSG_CLUSTER_DOMAIN": owner.cluster_domain,
        "RMSG_PRESTOP_SECONDS": str(max(spec.pod.termination_grace_period_seconds - 10, 5)),
    }


def shard_statefulset(spec: RedisMessagingSpec, owner: Owner, index: int) -> Obj:
    auth = common.auth_secret_name(spec, owner)
    tls_secret = tls.secret_name(spec, owner)
    exporter = common.exporter_secret_name(spec, owner)
    volumes, mounts = pods.config_volumes(owner, auth, common.user_secrets(spec), tls_secret, exporter)
    claims = common.data_claim(spec)
    if not claims:
        volumes.append({"name": "data", "emptyDir": {}})
    mounts.append({"name": "data", "mountPath": names.DATA_MOUNT})  # data and nodes.conf
    script = f"{names.CONFIG_MOUNT}/"
    env = {**script_env(spec, owner), "RMSG_SHARD": str(index), **pods.tls_env(tls_secret)}
    redis_container: Obj = {
        "name": "redis",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["sh", f"{script}redis-start.sh"],
        "env": pods.downward_env() + pods.env(env),
        "ports": [
            {"name": "redis", "containerPort": names.REDIS_PORT, "protocol": "TCP"},
            {"name": "cluster-bus", "containerPort": BUS_PORT, "protocol": "TCP"},
        ],
        **pods.redis_probes(script),
        "resources": pods.resources(spec.redis.resources, pods.DEFAULT_RESOURCES),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    containers = [redis_container]
    init: list[Obj] = []
    if spec.monitoring.exporter.enabled:
        sidecar = pods.exporter(spec, exporter, owner=owner, headless=owner.redis_headless, tls_secret=tls_secret)
        containers.append(sidecar.container)
        init += sidecar.init_containers
        volumes += sidecar.volumes
    cfg = scripts.config_files(spec)
    config_hash = common.hashed_files(cfg, ("redis.conf", "redis-start.sh", "redis-role.sh", "common.sh"))
    template = common.pod_template(spec, owner, names.COMPONENT_SHARD, containers, volumes, config_hash, init)
    template["metadata"]["labels"][names.LABEL_SHARD] = str(index)
    sts_spec: Obj = {
        "serviceName": owner.redis_headless,
        "replicas": 1 + spec.cluster.replicas_per_shard,
        "podManagementPolicy": "Parallel",
        # The operator replaces pods itself (replicas first, then a CLUSTER FAILOVER, then the old master).
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": shard_selector(owner, index)},
        "template": template,
        "persistentVolumeClaimRetentionPolicy": {
            "whenDeleted": spec.persistence.retention_policy.when_deleted,
            "whenScaled": spec.persistence.retention_policy.when_scaled,
        },
    }
    if claims:
        sts_spec["volumeClaimTemplates"] = claims
    metadata = common.meta(owner, owner.shard(index), names.COMPONENT_SHARD)
    metadata["labels"][names.LABEL_SHARD] = str(index)
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": sts_spec}


def pod_disruption_budget(owner: Owner, index: int) -> Obj:
    """At most one pod of a shard down at a time: its master or one replica, never both."""
    metadata = common.meta(owner, owner.shard(index), names.COMPONENT_SHARD)
    metadata["labels"][names.LABEL_SHARD] = str(index)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": shard_selector(owner, index)}},
    }


def build(spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
          tls_facts: tls.Facts | None = None) -> list[Obj]:
    """Every object of a cluster-mode resource, in the order they are applied.

    The generated auth Secret is not in this list (see :func:`redis_messaging.builders.common.generated_auth_secret`).
    StatefulSets of shards beyond ``cluster.shards`` are not here either: they are deleted by the
    reconcile pass only once their slots have moved away and their nodes are forgotten.
    """
    shards = range(spec.cluster.shards)
    certificate = tls.certificate(spec, owner)
    return [
        *([certificate] if certificate else []),
        common.config_map(owner, scripts.config_files(spec), names.COMPONENT_REDIS),
        connection_secret(spec, owner, password, tls_facts),
        *services(owner),
        *(shard_statefulset(spec, owner, i) for i in shards),
        *(pod_disruption_budget(owner, i) for i in shards),
    ]

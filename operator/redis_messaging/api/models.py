"""The RedisMessaging resource: spec and status as pydantic models.

These models are the single source of the CRD schema (see :mod:`redis_messaging.api.crd`).
Validation that the API server can enforce lives here as constraints (enums, minimums, patterns)
or as CEL rules in ``x-kubernetes-validations``, so a bad resource is refused at apply time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "redis-messaging.dev"
VERSION = "v1alpha1"
KIND = "RedisMessaging"
PLURAL = "redismessagings"
SINGULAR = "redismessaging"
SHORT_NAMES = ["rmsg"]
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes names (DNS-1123 label); resources derive child names from them, so keep them short.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DURATION = r"^([0-9]+(ms|s|m|h|d))+$"
STREAM_ID = r"^(\$|0|[0-9]+(-[0-9]+)?)$"

# redis.conf keys the operator owns; letting users set them would break topology, auth or storage.
PROTECTED_REDIS_CONFIG = (
    "port", "bind", "dir", "dbfilename", "appendfilename", "appenddirname", "include",
    "requirepass", "masterauth", "masteruser", "replicaof", "slaveof", "cluster-enabled",
    "cluster-config-file", "cluster-announce-hostname", "cluster-announce-ip",
    "replica-announce-ip", "replica-announce-port", "tls-port", "tls-cert-file", "tls-key-file",
    "tls-ca-cert-file", "tls-replication", "tls-cluster", "aclfile", "protected-mode", "daemonize",
    "supervised", "pidfile", "logfile", "unixsocket", "rename-command",
)


def _cel(rule: str, message: str) -> JsonDict:
    return {"rule": rule, "message": message}


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# A free-form Kubernetes object (affinity, resources, ...) validated by the API server's own types
# when the pod is created; the CRD keeps it as is.
FreeForm = dict[str, Any]


class ResourceRequirements(Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class RedisSpec(Model):
    replicas: int = Field(3, ge=1, le=15, description="Redis pods in sentinel mode (one master).")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    config: dict[str, str] = Field(
        default_factory=dict,
        max_length=200,
        description="Extra redis.conf directives. Keys the operator manages are refused.",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.all(k, !(k in " + _cel_list(PROTECTED_REDIS_CONFIG) + "))",
                    "redis.config may not set keys the operator manages (port, bind, dir, auth, "
                    "replication, cluster, TLS, include, rename-command, ...)",
                )
            ]
        },
    )
    min_replicas_to_write: int = Field(
        1, ge=0, description="min-replicas-to-write when the master has replicas (capped at replicas-1)."
    )
    min_replicas_max_lag: int = Field(10, ge=1, description="min-replicas-max-lag in seconds.")


class SentinelSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    # has(): the API server also checks this rule against the default `{}`
                    "!has(self.quorum) || !has(self.replicas) || self.quorum <= self.replicas",
                    "sentinel.quorum must not exceed sentinel.replicas",
                )
            ]
        }
    )

    replicas: int = Field(3, ge=1, le=9)
    quorum: int = Field(2, ge=1)
    down_after_milliseconds: int = Field(5000, ge=1000)
    failover_timeout: int = Field(60000, ge=5000)
    parallel_syncs: int = Field(1, ge=1)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class ClusterSpec(Model):
    shards: int = Field(3, ge=3, le=100, description="Master shards; a Redis Cluster needs at least 3.")
    replicas_per_shard: int = Field(1, ge=0, le=5)
    node_timeout: int = Field(5000, ge=1000, description="cluster-node-timeout in milliseconds.")


class Storage(Model):
    size: str = Field(
        "8Gi",
        pattern=QUANTITY,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "quantity(self).compareTo(quantity(oldSelf)) >= 0",
                    "persistence.storage.size may grow but never shrink",
                )
            ]
        },
    )
    storage_class_name: str | None = Field(
        None,
        json_schema_extra={
            "x-kubernetes-validations": [_cel("self == oldSelf", "storageClassName is immutable")]
        },
    )


class RetentionPolicy(Model):
    when_deleted: Literal["Retain", "Delete"] = "Retain"
    when_scaled: Literal["Retain", "Delete"] = "Retain"


class Persistence(Model):
    mode: Literal["aof", "rdb", "both", "none"] = "aof"
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    rdb_save: str = Field(
        "3600 1 300 100 60 10000",
        pattern=r"^([0-9]+ [0-9]+)( [0-9]+ [0-9]+)*$",
        description="RDB save points as 'seconds changes' pairs.",
    )
    storage: Storage = Field(default_factory=Storage)
    retention_policy: RetentionPolicy = Field(default_factory=RetentionPolicy)


class AclUser(Model):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]+$", max_length=64)
    secret_name: str = Field(pattern=DNS_LABEL, max_length=253)
    rules: str = Field(min_length=1, description="ACL rules, e.g. '~orders* +@stream +@read'.")


class Auth(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!has(self.enabled) || self.enabled || !has(self.users) || size(self.users) == 0",
                     "auth.users need auth.enabled"),
                _cel(
                    "!has(self.users) || self.users.all(u, u.name != 'default')",
                    "the default user's password comes from auth.secretName",
                ),
            ]
        }
    )

    enabled: bool = True
    secret_name: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="Secret with key 'password' for the default user; generated when not named.",
    )
    users: list[AclUser] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    rotation_grace_seconds: int = Field(
        120, ge=0,
        description="After a changed password is published in the connection Secret, how long the previous "
        "one keeps working, so clients can re-read the Secret and reconnect.",
    )


class IssuerRef(Model):
    name: str
    kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"
    group: str = "cert-manager.io"


class Tls(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(has(self.secretName) && has(self.issuerRef))",
                    "tls takes either secretName or issuerRef, not both",
                ),
                _cel(
                    "!has(self.enabled) || !self.enabled || has(self.secretName) || has(self.issuerRef)",
                    "tls.enabled needs tls.secretName or tls.issuerRef",
                ),
            ]
        }
    )

    enabled: bool = False
    # A kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (what cert-manager writes).
    secret_name: str | None = Field(None, pattern=DNS_LABEL)
    # Or: the operator creates a cert-manager Certificate from this issuer (Secret <name>-tls).
    issuer_ref: IssuerRef | None = None
    # Require a client certificate signed by ca.crt from every client (tls-auth-clients yes); by
    # default clients verify the servers and authenticate with passwords (tls-auth-clients optional).
    auth_clients: bool = False


class Exporter(Model):
    enabled: bool = True
    image: str = Field("oliver006/redis_exporter:v1.67.0", min_length=1)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class ServiceMonitor(Model):
    enabled: bool = False
    interval: str = Field("30s", pattern=DURATION)
    labels: dict[str, str] = Field(default_factory=dict)


class PrometheusRule(Model):
    enabled: bool = False
    labels: dict[str, str] = Field(default_factory=dict)


class GrafanaDashboard(Model):
    enabled: bool = False
    labels: dict[str, str] = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="Labels of the dashboard ConfigMap; the Grafana sidecar picks up grafana_dashboard=1.",
    )


class Monitoring(Model):
    exporter: Exporter = Field(default_factory=Exporter)
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)
    prometheus_rule: PrometheusRule = Field(default_factory=PrometheusRule)
    grafana_dashboard: GrafanaDashboard = Field(default_factory=GrafanaDashboard)


class NetworkPolicy(Model):
    """Who may open connections to the pods: the pods of the same resource (replication, Sentinel,
    cluster bus), the operator, the declared clients, and scrapers on the metrics port only."""

    enabled: bool = False
    clients: list[FreeForm] = Field(
        default_factory=list,
        description="NetworkPolicyPeers admitted to Redis and Sentinel; by default the pods of the "
        "namespace labelled redis-messaging.dev/client=<resource name>.",
    )
    metrics_from: list[FreeForm] = Field(
        default_factory=list,
        description="NetworkPolicyPeers admitted to the exporter's metrics port; empty admits any source "
        "to that port only.",
    )


class PodSpec(Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    affinity: FreeForm | None = Field(
        None, description="Replaces the default anti-affinity when given."
    )
    tolerations: list[FreeForm] = Field(default_factory=list)
    topology_spread_constraints: list[FreeForm] | None = Field(
        None, description="Replaces the default zone spread when given."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    priority_class_name: str | None = None
    security_context: FreeForm | None = Field(
        None, description="Pod securityContext; the default is non-root with seccomp RuntimeDefault."
    )
    termination_grace_period_seconds: int = Field(60, ge=0)
    image_pull_secrets: list[str] = Field(default_factory=list)


class AutoscaleTarget(Model):
    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str = Field(pattern=DNS_LABEL, max_length=253)


class Autoscale(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")
            ]
        }
    )

    target: AutoscaleTarget
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(10, ge=1)
    metric: Literal["backlog", "lag", "pending"] = "backlog"
    backlog_per_replica: int = Field(100, ge=1)
    target_drain_seconds: int | None = Field(
        None, ge=1, description="Rate-aware mode: replicas that drain the backlog within this time."
    )
    max_step_up: int | None = Field(None, ge=1)
    scale_down_stabilization_seconds: int = Field(120, ge=0)
    idle_seconds_before_zero: int = Field(300, ge=0)


class Group(Model):
    name: str = Field(min_length=1, max_length=256)
    start_id: str = Field("$", pattern=STREAM_ID, description="Where a new group starts: '$', '0' or an id.")
    autoscale: Autoscale | None = None


class StreamRetention(Model):
    max_len: int | None = Field(None, ge=1)
    min_age: str | None = Field(None, pattern=DURATION)
    unsafe: bool = Field(
        False, description="Trim by policy even past entries some group has not delivered or acked."
    )


class Stream(Model):
    name: str = Field(min_length=1, max_length=512)
    retention: StreamRetention = Field(default_factory=StreamRetention)
    prune: bool = Field(False, description="Delete groups that are no longer declared.")
    groups: list[Group] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class Queue(Model):
    """A list used as a work queue: producers LPUSH, consumers BRPOP (or BLMOVE for at-least-once)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!has(self.autoscale) || !has(self.autoscale.metric) || self.autoscale.metric != 'pending'",
                     "a list queue has no pending entries: its backlog is its length (LLEN)")
            ]
        }
    )

    name: str = Field(min_length=1, max_length=512)
    autoscale: Autoscale | None = None


class Channel(Model):
    """A Pub/Sub channel to watch: a message published while nobody listens is lost."""

    name: str = Field(min_length=1, max_length=512)
    sharded: bool = Field(False, description="A shard channel (SSUBSCRIBE / SPUBLISH, cluster mode).")


class RedisMessagingSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.mode) || self.mode != 'sentinel' || !has(self.redis) || !has(self.redis.replicas) "
                    "|| self.redis.replicas >= 1",
                    "sentinel mode needs at least one redis replica",
                ),
            ]
        }
    )

    mode: Literal["sentinel", "cluster"] = Field(
        "sentinel",
        json_schema_extra={"x-kubernetes-validations": [_cel("self == oldSelf", "mode is immutable")]},
    )
    image: str = Field("redis:7.2", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    redis: RedisSpec = Field(default_factory=RedisSpec)
    sentinel: SentinelSpec = Field(default_factory=SentinelSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    persistence: Persistence = Field(default_factory=Persistence)
    auth: Auth = Field(default_factory=Auth)
    tls: Tls = Field(default_factory=Tls)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    network_policy: NetworkPolicy = Field(default_factory=NetworkPolicy)
    pod: PodSpec = Field(default_factory=PodSpec)
    streams: list[Stream] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    queues: list[Queue] = Field(
        default_factory=list,
        description="List queues whose length (LLEN) can scale their consumers like a stream group.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    channels: list[Channel] = Field(
        default_factory=list,
        description="Pub/Sub channels whose subscriber count is watched.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


# ---------------------------------------------------------------------------------------------
# Status


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class Connection(Model):
    secret_name: str
    host: str
    port: int
    sentinel_host: str | None = None
    sentinel_port: int | None = None
    master_name: str | None = None


class ShardStatus(Model):
    name: str
    master: str | None = None
    replicas: list[str] = Field(default_factory=list)
    slots: str = ""


class GroupStatus(Model):
    name: str
    lag: int | None = Field(None, description="Entries not delivered to the group yet; absent when unknown.")
    lag_estimated: bool = False
    pending: int | None = Field(None, description="Entries delivered to a consumer and not acknowledged.")
    orphaned_pending: int | None = Field(
        None, description="Pending entries of consumers whose pod is gone and that no live consumer could take."
    )
    consumers: int | None = None
    current_replicas: int | None = None
    desired_replicas: int | None = None
    last_decision: str | None = Field(None, description="Why the autoscaler wants desiredReplicas, in words.")
    last_scale_time: str | None = Field(None, description="When the operator last patched the target's scale.")
    error: str | None = Field(None, description="Why the group could not be measured or scaled.")


class StreamStatus(Model):
    name: str
    length: int | None = None
    shard: str | None = None
    trimmed: int = Field(0, description="Entries removed by retention since the operator started.")
    error: str | None = None
    groups: list[GroupStatus] = Field(default_factory=list)


class QueueStatus(Model):
    name: str
    length: int | None = None
    shard: str | None = None
    current_replicas: int | None = None
    desired_replicas: int | None = None
    last_decision: str | None = None
    last_scale_time: str | None = None
    error: str | None = None


class ChannelStatus(Model):
    name: str
    sharded: bool = False
    subscribers: int | None = None
    error: str | None = None


class RedisMessagingStatus(Model):
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    master: str | None = None
    ready_replicas: int | None = None
    shards: list[ShardStatus] = Field(default_factory=list)
    connection: Connection | None = None
    streams: list[StreamStatus] = Field(default_factory=list)
    queues: list[QueueStatus] = Field(default_factory=list)
    channels: list[ChannelStatus] = Field(default_factory=list)


def parse_spec(spec: dict[str, Any]) -> RedisMessagingSpec:
    """Parse a spec as stored by the API server (camelCase, defaults applied)."""
    return RedisMessagingSpec.model_validate(spec)

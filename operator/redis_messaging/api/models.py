"""The RedisMessaging resource: spec and status as pydantic models.

These models are the single source of the CRD schema (see :mod:`redis_messaging.api.crd`).
Validation that the API server can enforce lives here as constraints (enums, minimums, patterns)
or as CEL rules in ``x-kubernetes-validations``, so a bad resource is refused at apply time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

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
DEFAULT_IMAGE = "redis:8.0"
"""spec.image when the resource names none: the engine CI builds (Debian's source package of Redis 8.0)
and runs the e2e tier and the demo on, every run. The API server stores it in each resource it creates,
so a later default never re-rolls an existing resource."""

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


# Redis commands no declared ACL user may run: each shows a password or a hash of one (CONFIG GET
# requirepass/masterauth; ACL GETUSER/LIST), changes one (CONFIG SET, ACL SETUSER), streams other
# clients' commands (MONITOR), runs code inside the server (DEBUG, MODULE LOAD) or makes the server
# log in elsewhere with the default user's password (REPLICAOF/SLAVEOF a host of the caller's choice,
# CLUSTER MEET + REPLICATE). The operator denies them to every declared user (see auth.users[].rules).
USER_DENIED_COMMANDS = ("config", "acl", "monitor", "debug", "module", "replicaof", "slaveof", "cluster|meet",
                        "cluster|replicate")
# A rule of auth.users[].rules that grants one of them, or that carries a password (>pw, <pw, #hash, !hash)
# or nopass (a user's password comes from its Secret, never from the resource, which more people read).
# One pattern for the CRD's CEL rule (RE2) and the operator (Python re): no construct they read apart.
SECRET_RULE_PATTERN = (r"(?i)(^|[\s(])([+](config|acl|monitor|debug|module|replicaof|slaveof)([|]\S*)?"
                       r"|[+]cluster[|](meet|replicate)([|]\S*)?|[><#!]\S*|nopass)([\s)]|$)")
SECRET_RULE_MESSAGE = (
    "auth.users[].rules may not grant CONFIG, ACL, MONITOR, DEBUG, MODULE, REPLICAOF, SLAVEOF, CLUSTER MEET or "
    "CLUSTER REPLICATE (they show passwords or hand them out), nor carry a password (>, <, #, !) or nopass: the "
    "password comes from secretName"
)


def secret_rules(rules: str) -> list[str]:
    """The rules of ``rules`` that :data:`SECRET_RULE_PATTERN` refuses (what the CRD's CEL rule refuses
    at apply time; the operator reports them for resources stored without that check)."""
    return [token for token in rules.split() if re.search(SECRET_RULE_PATTERN, token)]


def _cel(rule: str, message: str) -> JsonDict:
    return {"rule": rule, "message": message}


def _cel_string(text: str) -> str:
    """``text`` inside a single-quoted CEL string literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


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
Toleration = Annotated[FreeForm, Field(description="A Kubernetes Toleration, as in a pod's spec.")]
TopologySpreadConstraint = Annotated[
    FreeForm, Field(description="A Kubernetes TopologySpreadConstraint, as in a pod's spec.")
]
NetworkPolicyPeer = Annotated[
    FreeForm,
    Field(description="A Kubernetes NetworkPolicyPeer: a podSelector, a namespaceSelector (or both), or an ipBlock."),
]


class ResourceRequirements(Model):
    """CPU and memory of a container, as in a Kubernetes container's resources. With neither requests
    nor limits, the container gets the operator's default requests (each field that uses this says which)."""

    requests: dict[str, str] = Field(
        default_factory=dict,
        description="Resources the container is guaranteed, as Kubernetes quantities, e.g. {cpu: 100m, memory: 128Mi}.",
    )
    limits: dict[str, str] = Field(
        default_factory=dict,
        description="Most resources the container may use, as Kubernetes quantities, e.g. {memory: 1Gi}.",
    )


class RedisSpec(Model):
    """The redis-server processes: how many in Sentinel mode, their resources and their redis.conf."""

    replicas: int = Field(
        3, ge=1, le=15,
        description="Redis pods in Sentinel mode (StatefulSet <name>-redis): one master, the others its replicas. "
        "Cluster mode ignores it (see cluster.shards and cluster.replicasPerShard).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Resources of each redis-server container; with neither requests nor limits, requests of "
        "cpu 100m and memory 128Mi.",
    )
    config: dict[str, str] = Field(
        default_factory=dict,
        max_length=200,
        description="Extra redis.conf directives, name to value (e.g. maxmemory: 1gb), at most 200. They come "
        "after the operator's defaults (maxmemory-policy noeviction, tcp-keepalive 60, timeout 0) and may "
        "override them; keys the operator manages are refused. A change rolls the Redis pods.",
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
        1, ge=0,
        description="min-replicas-to-write: a master refuses writes while fewer replicas than this are connected "
        "and within minReplicasMaxLag, so a master cut off from its replicas stops taking writes. Capped at the "
        "replicas that exist (redis.replicas - 1, or cluster.replicasPerShard); 0 turns the check off.",
    )
    min_replicas_max_lag: int = Field(
        10, ge=1,
        description="min-replicas-max-lag, in seconds: a replica counts for minReplicasToWrite only if it "
        "acknowledged the master within this time. Also the threshold of the replica-lag alert.",
    )


class SentinelSpec(Model):
    """Sentinel mode only: the Sentinels (StatefulSet <name>-sentinel) that watch the master and fail
    over to a replica, and their settings for it (sentinel.conf)."""

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

    replicas: int = Field(3, ge=1, le=9, description="Sentinel pods.")
    quorum: int = Field(
        2, ge=1,
        description="Sentinels that must agree the master is down before a failover starts (the quorum of "
        "sentinel monitor); at most sentinel.replicas.",
    )
    down_after_milliseconds: int = Field(
        5000, ge=1000,
        description="down-after-milliseconds: how long, in milliseconds, the master may not answer before a "
        "Sentinel calls it down. The operator waits at least as long (and at least 10 s) before it promotes a "
        "replica itself, and a planned switch-over pauses the master's writes for about a third of it (0.2 to "
        "5 s).",
    )
    failover_timeout: int = Field(
        60000, ge=5000,
        description="Sentinel's failover-timeout, in milliseconds; among other things, a Sentinel retries a "
        "failover of the same master only after twice this time. When the master the Sentinels name restarted "
        "as a replica, the operator leaves them this much longer to fail over before it elects a master itself.",
    )
    parallel_syncs: int = Field(
        1, ge=1,
        description="Replicas that Sentinel points at a new master at the same time after a failover "
        "(parallel-syncs).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Resources of each Sentinel container; with neither requests nor limits, requests of cpu "
        "50m and memory 32Mi.",
    )


MAX_REPLICAS_PER_SHARD = 5
"""A shard has at most six pods (ordinals 0-5): the start script looks for its siblings among them."""


class ClusterSpec(Model):
    """Cluster mode only: the shards of the Redis Cluster, one StatefulSet <name>-shard-<i> each."""

    shards: int = Field(
        3, ge=3, le=100,
        description="Master shards, each serving an even share of the 16384 hash slots; a Redis Cluster needs "
        "at least 3. A change reshards: slots move to new shards, or away from removed ones before their "
        "StatefulSets are deleted.",
    )
    replicas_per_shard: int = Field(
        1, ge=0, le=MAX_REPLICAS_PER_SHARD,
        description="Replicas of each shard's master: a shard has 1 + replicasPerShard pods.",
    )
    node_timeout: int = Field(
        5000, ge=1000,
        description="cluster-node-timeout, in milliseconds: how long a node may not answer before the cluster "
        "counts it as failing and a replica of it may take over.",
    )
    slot_migration: Literal["Auto", "KeyByKey"] = Field(
        "Auto",
        description="How slots move when shards are added or removed. Auto: the engine moves them itself, "
        "atomically (CLUSTER MIGRATESLOTS), when every node runs Valkey 9.0 or later, and key by key "
        "(MIGRATE) otherwise. KeyByKey: always key by key. Slots a key-by-key move left half-moved are "
        "always finished key by key.",
    )


class Storage(Model):
    """The data volume of each Redis pod: a PersistentVolumeClaim data-<pod>, mounted at /data."""

    size: str = Field(
        "8Gi",
        pattern=QUANTITY,
        description="Size of each data volume, a Kubernetes quantity (e.g. 8Gi). It may grow, never shrink: "
        "existing claims are expanded in place when their StorageClass allows volume expansion.",
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
        description="StorageClass of the data volumes; the cluster's default class when not set. It cannot be "
        "changed once set.",
        json_schema_extra={
            "x-kubernetes-validations": [_cel("self == oldSelf", "storageClassName is immutable")]
        },
    )


class RetentionPolicy(Model):
    """What becomes of the data volumes when their pods go: the persistentVolumeClaimRetentionPolicy of
    the Redis StatefulSets."""

    when_deleted: Literal["Retain", "Delete"] = Field(
        "Retain",
        description="The claims of a StatefulSet that is deleted (the resource deleted, or a shard removed): "
        "Retain keeps them, Delete deletes them.",
    )
    when_scaled: Literal["Retain", "Delete"] = Field(
        "Retain",
        description="The claims of pods removed by a scale-down (fewer redis.replicas or "
        "cluster.replicasPerShard): Retain keeps them, Delete deletes them.",
    )


class Persistence(Model):
    """How Redis keeps its data on disk, and the volumes it keeps it on."""

    mode: Literal["aof", "rdb", "both", "none"] = Field(
        "aof",
        description="aof: an append-only file of every write; rdb: snapshots at the rdbSave points; both; none: "
        "nothing on disk and no volume (an emptyDir: the data goes with the pod).",
    )
    appendfsync: Literal["always", "everysec", "no"] = Field(
        "everysec",
        description="When the append-only file is flushed to disk (appendfsync; modes aof and both): always, "
        "after every write; everysec, once a second (a crash may lose the last second of writes); no, when the "
        "operating system decides.",
    )
    rdb_save: str = Field(
        "3600 1 300 100 60 10000",
        pattern=r"^([0-9]+ [0-9]+)( [0-9]+ [0-9]+)*$",
        description="RDB save points as 'seconds changes' pairs (modes rdb and both): a snapshot is written when "
        "at least that many writes happened within that many seconds.",
    )
    storage: Storage = Field(default_factory=Storage)
    retention_policy: RetentionPolicy = Field(default_factory=RetentionPolicy)


class AclUser(Model):
    """A Redis ACL user besides the default one, set on every Redis process (ACL SETUSER <name> reset on
    ><password> <rules>)."""

    name: str = Field(
        pattern=r"^[a-zA-Z0-9_.-]+$", max_length=64,
        description="The user's name; not default (the default user's password is auth.secretName's).",
    )
    secret_name: str = Field(
        pattern=DNS_LABEL, max_length=253,
        description="Secret in the resource's namespace whose key 'password' holds the user's password.",
    )
    rules: str = Field(
        min_length=1, max_length=4096,
        description="ACL rules: the keys and commands the user may use, e.g. '~orders* +@stream +@read'. No "
        "declared user may read a password: the operator appends -config -acl -monitor -debug -module -replicaof "
        "-slaveof -cluster|meet -cluster|replicate to the rules (and to each selector), and a rule that grants one "
        "of these or carries a password (>, <, #, !, nopass) is refused.",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"!self.matches('{_cel_string(SECRET_RULE_PATTERN)}')", SECRET_RULE_MESSAGE)
            ]
        },
    )


class Auth(Model):
    """Passwords: the default user's, the ACL users', and how a changed password is rolled out."""

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

    enabled: bool = Field(
        True,
        description="Require a password on Redis and Sentinel. false: no password at all, and no ACL users.",
    )
    secret_name: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="Secret whose key 'password' holds the default user's password. Not set: the operator "
        "generates one, once, into the Secret <name>-auth. A changed password is rolled out without downtime.",
    )
    users: list[AclUser] = Field(
        default_factory=list,
        max_length=64,
        description="ACL users besides the default one, by name, at most 64; they need auth.enabled. A user "
        "no longer declared is deleted.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    rotation_grace_seconds: int = Field(
        120, ge=0,
        description="After a changed password is published in the connection Secret, how many seconds the "
        "previous one keeps working, so clients can re-read the Secret and reconnect.",
    )


class IssuerRef(Model):
    """A cert-manager issuer, to sign the Certificate the operator creates for tls.issuerRef."""

    name: str = Field(description="Name of the Issuer or ClusterIssuer.")
    kind: Literal["Issuer", "ClusterIssuer"] = Field(
        "Issuer", description="Issuer (in the resource's namespace) or ClusterIssuer."
    )
    group: str = Field("cert-manager.io", description="API group of the issuer.")


class Tls(Model):
    """TLS on every connection: clients, replication, Sentinel and the cluster bus, with no plain-text
    port left open."""

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

    enabled: bool = Field(
        False,
        description="Serve TLS only (port 0). Needs secretName or issuerRef; nothing is built until the Secret "
        "holds tls.crt, tls.key and ca.crt.",
    )
    secret_name: str | None = Field(
        None, pattern=DNS_LABEL,
        description="A Secret with tls.crt, tls.key and ca.crt (the layout cert-manager writes): the key pair "
        "every pod serves with, signed by ca.crt; the exporter verifies it by the pod's own DNS name. Not with "
        "issuerRef.",
    )
    issuer_ref: IssuerRef | None = Field(
        None,
        description="Instead of secretName: the operator creates a cert-manager Certificate from this issuer, "
        "naming every pod and Service, and the pods use its Secret <name>-tls. Needs cert-manager.",
    )
    auth_clients: bool = Field(
        False,
        description="Require from every client a certificate signed by ca.crt (tls-auth-clients yes). false: "
        "clients verify the servers and authenticate with passwords (tls-auth-clients optional).",
    )


class Exporter(Model):
    """The redis_exporter sidecar of every Redis and Sentinel pod: Prometheus metrics on port 9121."""

    enabled: bool = Field(
        True,
        description="Run the sidecar. With auth it logs in as its own read-only ACL user rmsg-exporter, whose "
        "password is generated into the Secret <name>-exporter and reaches it as a file. That user can read no "
        "password (no CONFIG, no ACL), so the exporter exports no redis_config_* metrics; maxmemory comes from "
        "INFO (redis_memory_max_bytes).",
    )
    image: str = Field("oliver006/redis_exporter:v1.97.0", min_length=1, description="The redis_exporter image.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Resources of each exporter container; with neither requests nor limits, requests of cpu "
        "10m and memory 32Mi.",
    )


class ServiceMonitor(Model):
    """A Prometheus Operator ServiceMonitor <name> that scrapes the exporters through the headless
    Service <name>-metrics."""

    enabled: bool = Field(
        False,
        description="Create the Service and the ServiceMonitor. Left out, with the condition MonitoringReady "
        "False, while the API server does not serve monitoring.coreos.com/v1.",
    )
    interval: str = Field("30s", pattern=DURATION, description="Scrape interval, a duration such as 30s or 1m.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels of the ServiceMonitor, e.g. the ones your Prometheus selects ServiceMonitors by.",
    )


class PrometheusRule(Model):
    """A Prometheus Operator PrometheusRule <name> with the alerts that matter for messaging:
    availability, Sentinel, memory, and consumers falling behind."""

    enabled: bool = Field(
        False,
        description="Create the PrometheusRule. Left out, with the condition MonitoringReady False, while the "
        "API server does not serve monitoring.coreos.com/v1.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels of the PrometheusRule, e.g. the ones your Prometheus selects rules by.",
    )


class GrafanaDashboard(Model):
    """A Grafana dashboard of the resource, as JSON in the ConfigMap <name>-dashboard."""

    enabled: bool = Field(False, description="Create the dashboard ConfigMap.")
    labels: dict[str, str] = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="Labels of the dashboard ConfigMap; the Grafana sidecar picks up grafana_dashboard=1.",
    )


class Monitoring(Model):
    """Metrics and alerts: the exporter sidecars, and the Prometheus Operator and Grafana objects."""

    exporter: Exporter = Field(default_factory=Exporter)
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)
    prometheus_rule: PrometheusRule = Field(default_factory=PrometheusRule)
    grafana_dashboard: GrafanaDashboard = Field(default_factory=GrafanaDashboard)


class NetworkPolicy(Model):
    """Who may open connections to the pods: the pods of the same resource (replication, Sentinel,
    cluster bus), the operator, the declared clients, and scrapers on the metrics port only."""

    enabled: bool = Field(
        False,
        description="Create the NetworkPolicy <name> over every pod of the resource (ingress only; egress is "
        "left alone). The cluster's network plugin enforces it, or not.",
    )
    clients: list[NetworkPolicyPeer] = Field(
        default_factory=list,
        description="NetworkPolicyPeers admitted to Redis and Sentinel; by default the pods of the "
        "namespace labelled redis-messaging.dev/client=<resource name>.",
    )
    metrics_from: list[NetworkPolicyPeer] = Field(
        default_factory=list,
        description="NetworkPolicyPeers admitted to the exporter's metrics port; empty admits any source "
        "to that port only.",
    )


class PodSpec(Model):
    """Pod settings shared by every Redis, Sentinel and shard pod of the resource."""

    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels of the pods.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations of the pods.")
    affinity: FreeForm | None = Field(
        None,
        description="The pods' affinity. Replaces, when given, the default anti-affinity that prefers one pod "
        "of a kind per node.",
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of the pods.")
    topology_spread_constraints: list[TopologySpreadConstraint] | None = Field(
        None,
        description="Replaces, when given, the default spread over zones (topology.kubernetes.io/zone, maxSkew "
        "1, ScheduleAnyway).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must run on.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the pods.")
    security_context: FreeForm | None = Field(
        None,
        description="Pod securityContext. Replaces, when given, the default: non-root as UID, GID and fsGroup "
        "999, seccomp RuntimeDefault.",
    )
    termination_grace_period_seconds: int = Field(
        60, ge=0,
        description="Seconds a pod has to stop. Its pre-stop hook (a master hands over to a replica that caught "
        "up) may take all but 10 of them, and at least 5.",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of the Secrets to pull the Redis and exporter images with."
    )


class AutoscaleTarget(Model):
    """The consumer workload, in the resource's namespace, whose replicas the operator sets through its
    scale subresource."""

    kind: Literal["Deployment", "StatefulSet"] = Field(
        "Deployment",
        description="Deployment or StatefulSet. Before a Deployment consuming a stream scales down, its pods "
        "whose consumers hold the fewest pending entries are marked to go first (pod-deletion-cost).",
    )
    name: str = Field(pattern=DNS_LABEL, max_length=253, description="Name of the Deployment or StatefulSet.")


class Autoscale(Model):
    """Scale the consumer workload on this group's or queue's backlog (not set: it is only measured):
    ceil(metric / backlogPerReplica) replicas within [minReplicas, maxReplicas], up at once, down no lower
    than the highest recommendation of the last scaleDownStabilizationSeconds. A workload that an HPA, a
    KEDA ScaledObject or another group also targets is not scaled (condition AutoscaleConflict)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")
            ]
        }
    )

    target: AutoscaleTarget
    min_replicas: int = Field(
        0, ge=0,
        description="Fewest replicas. With 0 the workload goes to zero after idleSecondsBeforeZero without work, "
        "and one entry wakes it.",
    )
    max_replicas: int = Field(10, ge=1, description="Most replicas; at least minReplicas.")
    metric: Literal["backlog", "lag", "pending"] = Field(
        "backlog",
        description="What is divided by backlogPerReplica: backlog (lag + pending), lag (entries not delivered "
        "to the group yet) or pending (delivered, not acknowledged). Whatever the metric, an entry not delivered "
        "yet wakes a workload from zero. For a list queue lag and backlog are its length, and pending is refused.",
    )
    backlog_per_replica: int = Field(
        100, ge=1,
        description="Entries of the metric one replica is expected to handle: replicas = ceil(metric / "
        "backlogPerReplica). Also the threshold of the backlog alert.",
    )
    target_drain_seconds: int | None = Field(
        None, ge=1,
        description="Rate-aware mode: the replicas that drain the backlog within this many seconds while keeping "
        "up with new entries, from the measured processing rate of one replica. Until that rate is measured "
        "(streams on Redis 7 or later; never for a list queue), backlogPerReplica applies.",
    )
    max_step_up: int | None = Field(
        None, ge=1,
        description="Most replicas one decision adds (a decision every autoscaler tick, 2 s by default). Not "
        "set: no limit.",
    )
    scale_down_stabilization_seconds: int = Field(
        120, ge=0,
        description="A scale-down goes no lower than the highest replica count recommended within this many "
        "seconds, as the HorizontalPodAutoscaler's scale-down stabilization does.",
    )
    idle_seconds_before_zero: int = Field(
        300, ge=0,
        description="Seconds without lag and without pending entries before the last replica is removed "
        "(minReplicas 0); until then the workload keeps one.",
    )


class Group(Model):
    """A consumer group of the stream, created when it does not exist (with the stream, if need be)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!has(self.deadLetterStream) || has(self.maxDeliveries)",
                     "deadLetterStream needs maxDeliveries"),
            ]
        }
    )

    name: str = Field(min_length=1, max_length=256, description="Name of the consumer group.")
    start_id: str = Field(
        "$", pattern=STREAM_ID,
        description="Where a new group starts reading: '$' (the entries added from then on), '0' (the whole "
        "stream) or an entry id. Used only when the group is created; an existing group is not moved.",
    )
    autoscale: Autoscale | None = None
    reclaim: bool = Field(
        True,
        description="Claim back the pending entries of consumers whose pod is gone: a consumer's name is its pod's "
        "name, and a consumer with no pod of that name in the resource's namespace (or only a finished one) is "
        "gone. Its entries idle at least a second go to the live consumer with the fewest pending entries, each "
        "hand-over counted as a delivery, and the consumer is deleted once it holds nothing. false: for a group "
        "whose consumers are not pods of this namespace (another namespace, outside Kubernetes); nothing is "
        "claimed or deleted.",
    )
    max_deliveries: int | None = Field(
        None, ge=1,
        description="Dead-letter the entries no consumer manages to process: an entry delivered more than this "
        "many times (its delivery count in XPENDING, raised by every read of it by a consumer, its own pending "
        "entries re-read included, and by every hand-over from a consumer whose pod is gone) and idle at least "
        "a second is copied to deadLetterStream and acknowledged in the group, in one script. Not set: nothing "
        "is dead-lettered.",
    )
    dead_letter_stream: str | None = Field(
        None, min_length=1, max_length=512,
        description="The stream that receives the group's dead letters (needs maxDeliveries). Not set: "
        "'<stream>:dead-letters' when the stream's name has a hash tag ({...}), else '{<stream>}:dead-letters', "
        "on the stream's hash slot either way. In cluster mode it must be on the stream's slot (the copy and "
        "the acknowledgement run in one script): a name on another slot is refused (condition DeadLettersReady "
        "False) and nothing is dead-lettered.",
    )


class StreamRetention(Model):
    """How much of the stream to keep, applied at every reconcile pass; with neither maxLen nor minAge,
    nothing is trimmed, and with both an entry goes when either says so. Unless unsafe, no entry that a
    group has not been delivered yet or still has pending is removed."""

    max_len: int | None = Field(None, ge=1, description="Keep at most this many entries, the newest.")
    min_age: str | None = Field(
        None, pattern=DURATION,
        description="Keep the entries younger than this, a duration such as 24h or 1h30m (units ms, s, m, h, d), "
        "by the time in their ids.",
    )
    unsafe: bool = Field(
        False,
        description="Trim by the policy even entries some group has not been delivered yet or still has pending.",
    )


class Stream(Model):
    """A Redis stream: its consumer groups, its retention, and the autoscaling of its consumers. In
    cluster mode it lives on the shard that serves its key's slot."""

    name: str = Field(min_length=1, max_length=512, description="The stream's key.")
    retention: StreamRetention = Field(default_factory=StreamRetention)
    prune: bool = Field(
        False,
        description="Delete the consumer groups of the stream that are not declared here, with their pending "
        "entries.",
    )
    groups: list[Group] = Field(
        default_factory=list,
        description="Consumer groups of the stream, by name.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class Queue(Model):
    """A list used as a work queue: producers LPUSH, consumers BRPOP (or BLMOVE for at-least-once). Its
    length (LLEN) is its backlog."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!has(self.autoscale) || !has(self.autoscale.metric) || self.autoscale.metric != 'pending'",
                     "a list queue has no pending entries: its backlog is its length (LLEN)")
            ]
        }
    )

    name: str = Field(min_length=1, max_length=512, description="The list's key.")
    autoscale: Autoscale | None = None


class Channel(Model):
    """A Pub/Sub channel whose subscribers are counted: a message published while nobody listens is lost."""

    name: str = Field(min_length=1, max_length=512, description="The channel's name.")
    sharded: bool = Field(
        False,
        description="A shard channel (SSUBSCRIBE / SPUBLISH, cluster mode): counted on the shard that serves its "
        "slot rather than on every master.",
    )


class RedisMessagingSpec(Model):
    """Highly available Redis for messaging, as wanted: the mode and its pods, persistence, auth, TLS,
    monitoring, and the streams, list queues and Pub/Sub channels the operator looks after."""

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
        description="sentinel: a master, its replicas and Sentinels that fail over. cluster: a Redis Cluster of "
        "shards, each a master and its replicas. Immutable.",
        json_schema_extra={"x-kubernetes-validations": [_cel("self == oldSelf", "mode is immutable")]},
    )
    image: str = Field(
        DEFAULT_IMAGE, min_length=1,
        description="The Redis or Valkey image of the Redis and Sentinel containers (redis-server, "
        "redis-sentinel and redis-cli). A change rolls the pods one at a time; a change the data cannot "
        "follow (a downgrade, Valkey to Redis) is refused.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of every container: Redis, Sentinel and exporter."
    )
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
        description="Streams the operator looks after, by name: their consumer groups created, their retention "
        "applied, their consumers autoscaled.",
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
    """One aspect of the resource's state, as Kubernetes conditions go."""

    type: str = Field(description="What the condition is about, e.g. Ready or StreamsReady.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Why, in one CamelCase word, e.g. WaitingForPods.")
    message: str = Field("", description="Why, in words.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339, UTC).")
    observed_generation: int | None = Field(None, description="The metadata.generation the condition was set for.")


class Connection(Model):
    """Where applications connect. The Secret it names holds these addresses too, with the password
    (when auth is on), URLs, and with TLS the CA (ca.crt)."""

    secret_name: str = Field(description="The connection Secret, <name>-connection.")
    host: str = Field(
        description="DNS name of the Service to connect to: <name>-master (the master) in Sentinel mode, "
        "<name>-cluster (every shard pod, a seed for cluster clients) in cluster mode.",
    )
    port: int = Field(description="The Redis port, 6379.")
    sentinel_host: str | None = Field(
        None, description="Sentinel mode: DNS name of the Sentinel Service <name>-sentinel."
    )
    sentinel_port: int | None = Field(None, description="Sentinel mode: the Sentinel port, 26379.")
    master_name: str | None = Field(
        None, description="Sentinel mode: the name the Sentinels know the master by (the resource's name)."
    )


class ShardStatus(Model):
    """One shard of the Redis Cluster, as the cluster reports it."""

    name: str = Field(description="The shard's StatefulSet, <name>-shard-<i>.")
    master: str | None = Field(None, description="The pod that is the shard's master; absent when it has none.")
    replicas: list[str] = Field(default_factory=list, description="The pods replicating the master.")
    slots: str = Field("", description="Hash slots the master serves, as ranges, e.g. 0-5460,10923; empty when none.")


class ScaledStatus(Model):
    """What the autoscaler did for a group or a queue with a target workload."""

    current_replicas: int | None = Field(
        None, description="Replicas of the target workload, as last read from or set through its scale subresource."
    )
    desired_replicas: int | None = Field(None, description="Replicas the autoscaler wants the target to have.")
    last_decision: str | None = Field(None, description="Why the autoscaler wants desiredReplicas, in words.")
    last_scale_time: str | None = Field(
        None, description="When the operator last patched the target's scale (RFC 3339, UTC)."
    )


class GroupStatus(ScaledStatus):
    """One consumer group, as last measured and scaled."""

    name: str = Field(description="The consumer group.")
    lag: int | None = Field(
        None, description="Entries not delivered to the group yet; absent when unknown, a lower bound when lagCapped."
    )
    lag_estimated: bool = Field(
        False,
        description="Redis did not know the lag and the operator counted it, up to 10000 entries.",
    )
    lag_capped: bool = Field(
        False,
        description="The operator's count of the lag stopped at its cap: the lag is at least lag, maybe much "
        "more. The autoscaler may scale up on it but never scales down on it.",
    )
    pending: int | None = Field(None, description="Entries delivered to a consumer and not acknowledged.")
    orphaned_pending: int | None = Field(
        None, description="Pending entries of consumers whose pod is gone and that no live consumer could take."
    )
    consumers: int | None = Field(
        None, description="Consumers of the group in Redis (a consumer is named after its pod)."
    )
    dead_letter_stream: str | None = Field(
        None, description="With maxDeliveries: the stream that receives the group's dead letters."
    )
    dead_lettered: int | None = Field(
        None, description="With maxDeliveries: entries moved to the dead-letter stream since the operator started."
    )
    error: str | None = Field(None, description="Why the group could not be measured or scaled.")


class StreamStatus(Model):
    """One declared stream, as last measured."""

    name: str = Field(description="The stream's key.")
    length: int | None = Field(None, description="Entries in the stream (XLEN).")
    shard: str | None = Field(None, description="Cluster mode: the shard (its StatefulSet) that holds the stream.")
    trimmed: int = Field(0, description="Entries removed by retention since the operator started.")
    error: str | None = Field(
        None, description="Why the stream could not be measured, for a stream without groups (each group says it "
        "otherwise)."
    )
    groups: list[GroupStatus] = Field(default_factory=list, description="The declared groups, in declaration order.")


class QueueStatus(ScaledStatus):
    """One declared list queue, as last measured and scaled."""

    name: str = Field(description="The list's key.")
    length: int | None = Field(None, description="Entries in the list (LLEN).")
    shard: str | None = Field(None, description="Cluster mode: the shard (its StatefulSet) that holds the list.")
    error: str | None = Field(None, description="Why the queue could not be measured or scaled.")


class ChannelStatus(Model):
    """One declared Pub/Sub channel, as last measured."""

    name: str = Field(description="The channel's name.")
    sharded: bool = Field(False, description="Whether it is a shard channel.")
    subscribers: int | None = Field(
        None,
        description="Subscribers: PUBSUB NUMSUB summed over every master, or SHARDNUMSUB on its shard for a "
        "shard channel. 0: a message published now is lost.",
    )
    error: str | None = Field(None, description="Why the channel could not be measured.")


class RedisMessagingStatus(Model):
    """What the operator last observed: conditions, the master or the shards, where to connect, and
    the declared streams, queues and channels as measured."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        None, description="The metadata.generation that the last reconcile pass handled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Available, Progressing and Degraded, and the conditions of parts of the work (e.g. "
        "StreamsReady, AutoscaleConflict, MonitoringReady), by type.",
    )
    master: str | None = Field(
        None, description="Sentinel mode: the Redis pod that is the master, followed at once when Sentinel fails over."
    )
    engine: str | None = Field(
        None,
        description="What the Redis processes run, from their INFO: \"redis 7.0.15\", or each engine with its "
        "count of processes while they differ (a rolling update between versions). A spec.image that the data "
        "cannot follow from it (a downgrade, Valkey to Redis, Redis 7.4 or later to Valkey) is refused: see the "
        "EngineCompatible condition.",
    )
    ready_replicas: int | None = Field(
        None,
        description="Redis pods that are ready: of the Redis StatefulSet in Sentinel mode, of every shard in "
        "cluster mode.",
    )
    shards: list[ShardStatus] = Field(
        default_factory=list, description="Cluster mode: each shard's master, replicas and hash slots."
    )
    connection: Connection | None = None
    streams: list[StreamStatus] = Field(
        default_factory=list, description="The declared streams, in declaration order."
    )
    queues: list[QueueStatus] = Field(
        default_factory=list, description="The declared list queues, in declaration order."
    )
    channels: list[ChannelStatus] = Field(
        default_factory=list, description="The declared channels, in declaration order."
    )


def parse_spec(spec: dict[str, Any]) -> RedisMessagingSpec:
    """Parse a spec as stored by the API server (camelCase, defaults applied)."""
    return RedisMessagingSpec.model_validate(spec)

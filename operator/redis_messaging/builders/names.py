"""Names, label and annotation keys: the one place they are spelled."""

from __future__ import annotations

from dataclasses import dataclass

from redis_messaging.api import models

DOMAIN = models.GROUP
MANAGER = "redis-messaging-operator"
APP_NAME = "redis-messaging"  # the app.kubernetes.io/name of every child: what the operator's watches select

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_ROLE = f"{DOMAIN}/role"
LABEL_SHARD = f"{DOMAIN}/shard"

ANNOTATION_CONFIG_HASH = f"{DOMAIN}/config-hash"
ANNOTATION_APPLIED_HASH = f"{DOMAIN}/applied-hash"
ANNOTATION_GENERATED = f"{DOMAIN}/generated"

ROLE_MASTER = "master"
ROLE_REPLICA = "replica"

COMPONENT_REDIS = "redis"
COMPONENT_SENTINEL = "sentinel"
COMPONENT_SHARD = "shard"

REDIS_PORT = 6379
SENTINEL_PORT = 26379
BUS_PORT = REDIS_PORT + 10000  # Cluster mode: the cluster bus
EXPORTER_PORT = 9121

CONFIG_MOUNT = "/etc/redis-messaging"
AUTH_MOUNT = "/etc/redis-messaging-auth"
TLS_MOUNT = "/etc/redis-messaging-tls"
RUN_MOUNT = "/run/redis"
DATA_MOUNT = "/data"
# The master a Redis pod names while it waits to be told whom to follow (redis-start.sh): it keeps its
# data, accepts no write, and no pod can sync from it. Nothing listens on port 1 of a pod's loopback.
NO_MASTER_HOST = "127.0.0.1"
NO_MASTER_PORT = 1


@dataclass(frozen=True)
class Owner:
    """The RedisMessaging resource that owns every object built for it."""

    name: str
    namespace: str
    uid: str = ""
    cluster_domain: str = "cluster.local"

    def owner_reference(self) -> dict[str, object]:
        return {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    # -- child names ---------------------------------------------------------------------------
    @property
    def redis_sts(self) -> str:
        return f"{self.name}-redis"

    @property
    def redis_headless(self) -> str:
        return f"{self.name}-redis-headless"

    @property
    def master_service(self) -> str:
        return f"{self.name}-master"

    @property
    def replicas_service(self) -> str:
        return f"{self.name}-replicas"

    @property
    def sentinel_sts(self) -> str:
        return f"{self.name}-sentinel"

    @property
    def sentinel_headless(self) -> str:
        return f"{self.name}-sentinel-headless"

    @property
    def sentinel_service(self) -> str:
        return f"{self.name}-sentinel"

    @property
    def config_map(self) -> str:
        return f"{self.name}-config"

    @property
    def auth_secret(self) -> str:
        return f"{self.name}-auth"

    @property
    def exporter_secret(self) -> str:
        """The generated password of the exporter's own ACL user (never rotated with the default's)."""
        return f"{self.name}-exporter"

    @property
    def tls_secret(self) -> str:
        """The Secret of the cert-manager Certificate the operator creates from spec.tls.issuerRef."""
        return f"{self.name}-tls"

    @property
    def connection_secret(self) -> str:
        return f"{self.name}-connection"

    @property
    def master_name(self) -> str:
        """The name Sentinel monitors the master under."""
        return self.name

    @property
    def cluster_service(self) -> str:
        """Cluster mode: the client Service in front of every shard pod (a seed for cluster clients)."""
        return f"{self.name}-cluster"

    def shard(self, index: int) -> str:
        """Cluster mode: the StatefulSet (and PodDisruptionBudget) of one shard."""
        return f"{self.name}-shard-{index}"

    def shard_pod(self, index: int, ordinal: int) -> str:
        return f"{self.shard(index)}-{ordinal}"

    def shard_of_pod(self, pod: str) -> tuple[int, int] | None:
        """``(shard index, ordinal)`` of a shard pod's name, None for any other name."""
        prefix = f"{self.name}-shard-"
        if not pod.startswith(prefix):
            return None
        index, sep, ordinal = pod[len(prefix):].partition("-")
        if not sep or not index.isdigit() or not ordinal.isdigit():
            return None
        return int(index), int(ordinal)

    def shard_of_object(self, name: str) -> int | None:
        """The shard index of a shard StatefulSet's (or PodDisruptionBudget's) name, None otherwise."""
        prefix = f"{self.name}-shard-"
        rest = name[len(prefix):] if name.startswith(prefix) else ""
        return int(rest) if rest.isdigit() else None

    def redis_pod(self, ordinal: int) -> str:
        return f"{self.redis_sts}-{ordinal}"

    def sentinel_pod(self, ordinal: int) -> str:
        return f"{self.sentinel_sts}-{ordinal}"

    def service_host(self, service: str) -> str:
        return f"{service}.{self.namespace}.svc.{self.cluster_domain}"

    def pod_host(self, pod: str, headless: str) -> str:
        """The stable DNS name of a StatefulSet pod through its headless Service."""
        return f"{pod}.{headless}.{self.namespace}.svc.{self.cluster_domain}"


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: owner.name,
        LABEL_COMPONENT: component,
    }


def common_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        **selector_labels(owner, component),
        LABEL_MANAGED_BY: MANAGER,
        LABEL_PART_OF: "redis-messaging",
    }


def instance_selector(owner: Owner) -> str:
    """Label selector matching every child object of one resource."""
    return f"{LABEL_NAME}={APP_NAME},{LABEL_INSTANCE}={owner.name}"

"""Pieces of pod templates shared by every Redis and Sentinel workload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec, ResourceRequirements
from redis_messaging.builders import config, names, tls
from redis_messaging.builders.names import Owner

Obj = dict[str, Any]

DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}}
REDIS_UID = 999  # the uid of the redis user in the official redis images
USERS_MOUNT = "/etc/redis-messaging-users"  # where redis-start.sh reads the ACL users' passwords


def resources(res: ResourceRequirements, default: Obj | None = None) -> Obj:
    out: Obj = {}
    if res.requests:
        out["requests"] = dict(res.requests)
    if res.limits:
        out["limits"] = dict(res.limits)
    return out or dict(default or {})


def container_security_context() -> Obj:
    """What the `restricted` Pod Security Standard asks of every container."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(spec: RedisMessagingSpec) -> Obj:
    if spec.pod.security_context is not None:
        return dict(spec.pod.security_context)
    return {
        "runAsNonRoot": True,
        "runAsUser": REDIS_UID,
        "runAsGroup": REDIS_UID,
        "fsGroup": REDIS_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scheduling(spec: RedisMessagingSpec, selector: dict[str, str]) -> Obj:
    """Affinity, spread and placement; by default one pod of a kind per node, spread over zones."""
    out: Obj = {}
    if spec.pod.affinity is not None:
        out["affinity"] = dict(spec.pod.affinity)
    else:
        out["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": dict(selector)},
                        },
                    }
                ]
            }
        }
    if spec.pod.topology_spread_constraints is not None:
        out["topologySpreadConstraints"] = [dict(c) for c in spec.pod.topology_spread_constraints]
    else:
        out["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            }
        ]
    if spec.pod.tolerations:
        out["tolerations"] = [dict(t) for t in spec.pod.tolerations]
    if spec.pod.node_selector:
        out["nodeSelector"] = dict(spec.pod.node_selector)
    if spec.pod.priority_class_name:
        out["priorityClassName"] = spec.pod.priority_class_name
    if spec.pod.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in spec.pod.image_pull_secrets]
    return out


def downward_env() -> list[Obj]:
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def env(values: dict[str, str]) -> list[Obj]:
    return [{"name": k, "value": v} for k, v in values.items()]


def exec_probe(command: list[str], *, initial: int, period: int, timeout: int, failures: int) -> Obj:
    return {
        "exec": {"command": command},
        "initialDelaySeconds": initial,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def redis_probes(script_dir: str) -> Obj:
    """Startup, liveness and readiness probes and the pre-stop hook of a redis-server container,
    all running the ConfigMap's scripts from ``script_dir``."""
    return {
        "startupProbe": exec_probe(["sh", f"{script_dir}probe.sh", "liveness"],
                                   initial=2, period=5, timeout=5, failures=60),
        "livenessProbe": exec_probe(["sh", f"{script_dir}probe.sh", "liveness"],
                                    initial=0, period=10, timeout=5, failures=6),
        "readinessProbe": exec_probe(["sh", f"{script_dir}probe.sh", "readiness"],
                                     initial=0, period=5, timeout=5, failures=2),
        "lifecycle": {"preStop": {"exec": {"command": ["sh", f"{script_dir}prestop.sh"]}}},
    }


def config_volumes(owner: Owner, auth_secret: str | None, user_secrets: Sequence[str] = (),
                   tls_secret: str | None = None, exporter_secret: str | None = None) -> tuple[list[Obj], list[Obj]]:
    """Volumes and mounts for the ConfigMap, the auth Secret, the ACL users' Secrets (file ``user-<i>``
    holds the i-th user's password, file ``exporter`` the exporter user's), the TLS Secret and the
    private runtime dir."""
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": owner.config_map, "defaultMode": 0o555}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": names.CONFIG_MOUNT, "readOnly": True},
        {"name": "run", "mountPath": names.RUN_MOUNT},
        # a private in-memory /tmp for redis-cli in the scripts; the root filesystem is read-only
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
    ]
    if auth_secret:
        volumes.append(
            {"name": "auth", "secret": {"secretName": auth_secret, "defaultMode": 0o400,
                                        "items": [{"key": "password", "path": "password"}]}}
        )
        mounts.append({"name": "auth", "mountPath": names.AUTH_MOUNT, "readOnly": True})
    sources = [{"secret": {"name": name, "items": [{"key": "password", "path": f"user-{i}"}]}}
               for i, name in enumerate(user_secrets)]
    if exporter_secret:
        sources.append({"secret": {"name": exporter_secret,
                                   "items": [{"key": "password", "path": config.EXPORTER_FILE}]}})
    if sources:
        volumes.append({"name": "users", "projected": {"sources": sources, "defaultMode": 0o400}})
        mounts.append({"name": "users", "mountPath": USERS_MOUNT, "readOnly": True})
    if tls_secret:
        volume, mount = tls.volume(tls_secret)
        volumes.append(volume)
        mounts.append(mount)
    return volumes, mounts


def tls_env(tls_secret: str | None) -> dict[str, str]:
    """What tells the scripts (common.sh) to speak TLS."""
    return {"RMSG_TLS": "yes"} if tls_secret else {}


EXPORTER_AUTH_MOUNT = "/run/redis-messaging-exporter"  # the exporter's password file, in memory
EXPORTER_AUTH_VOLUME = "exporter-auth"


@dataclass(frozen=True)
class ExporterSidecar:
    """What the redis_exporter sidecar adds to a pod: its container, the init container that writes its
    password file (with auth), and their in-memory volume."""

    container: Obj
    init_containers: list[Obj]
    volumes: list[Obj]


def exporter(spec: RedisMessagingSpec, exporter_secret: str | None, port: int = names.REDIS_PORT, *,
             owner: Owner | None = None, headless: str = "", tls_secret: str | None = None) -> ExporterSidecar:
    """redis_exporter sidecar (of a redis-server, or of a Sentinel with ``port``: it then exports the
    redis_sentinel_* metrics). With auth it is the ACL user ``rmsg-exporter``, whose rules read no secret
    (no CONFIG, no ACL: see :data:`config.EXPORTER_RULES_REDIS`); its password is ``exporter_secret``'s,
    not the default user's, so a rotation of that one never locks it out.

    The password reaches it as a file, never as an environment value: redis_exporter's
    ``-redis.password-file`` is a JSON object from the address it scrapes to the password, and that
    address is the pod's own name with TLS, so an init container (the Redis image, the ConfigMap's
    ``exporter-auth.sh``) writes it from the mounted Secret into an in-memory volume, mode 0600, that
    the exporter mounts read-only. Its config metrics are off (``-config-command -``): they need
    ``CONFIG GET``, which would show it the default user's password.

    With TLS it reaches its process by the pod's own stable name (``owner`` and ``headless``), the
    name the certificate carries, and verifies it against ca.crt: no skipped verification."""
    exp = spec.monitoring.exporter
    address: list[Obj] = [{"name": "REDIS_ADDR", "value": f"redis://127.0.0.1:{port}"}]
    env_vars: list[Obj] = []
    mounts: list[Obj] = []
    if tls_secret:
        if owner is None or not headless:
            raise ValueError("a TLS exporter needs the owner and the headless Service")
        host = owner.pod_host("$(POD_NAME)", headless)  # expanded by the kubelet from the env above it
        directory = names.TLS_MOUNT
        address = [*downward_env(), {"name": "REDIS_ADDR", "value": f"rediss://{host}:{port}"}]
        env_vars = [
            {"name": "REDIS_EXPORTER_TLS_CA_CERT_FILE", "value": f"{directory}/{tls.CA_FILE}"},
            {"name": "REDIS_EXPORTER_TLS_CLIENT_CERT_FILE", "value": f"{directory}/{tls.CERT_FILE}"},
            {"name": "REDIS_EXPORTER_TLS_CLIENT_KEY_FILE", "value": f"{directory}/{tls.KEY_FILE}"},
        ]
        mounts.append(tls.volume(tls_secret)[1])
    # No CONFIG GET: its reply holds requirepass and masterauth.
    env_vars.append({"name": "REDIS_EXPORTER_CONFIG_COMMAND", "value": "-"})
    init: list[Obj] = []
    volumes: list[Obj] = []
    if exporter_secret:
        login = [{"name": "REDIS_USER", "value": config.EXPORTER_USER},
                 {"name": "REDIS_PASSWORD_FILE", "value": f"{EXPORTER_AUTH_MOUNT}/{config.EXPORTER_PASSWORD_FILE}"}]
        env_vars += login
        volumes.append({"name": EXPORTER_AUTH_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
        mounts.append({"name": EXPORTER_AUTH_VOLUME, "mountPath": EXPORTER_AUTH_MOUNT, "readOnly": True})
        init.append({
            "name": "exporter-auth",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["sh", f"{names.CONFIG_MOUNT}/{config.EXPORTER_AUTH_SCRIPT}"],
            "env": address + login,
            "resources": resources(exp.resources, {"requests": {"cpu": "10m", "memory": "16Mi"}}),
            "securityContext": container_security_context(),
            "volumeMounts": [
                {"name": "config", "mountPath": names.CONFIG_MOUNT, "readOnly": True},
                {"name": "users", "mountPath": USERS_MOUNT, "readOnly": True},
                {"name": EXPORTER_AUTH_VOLUME, "mountPath": EXPORTER_AUTH_MOUNT},
            ],
        })
    extra: Obj = {"volumeMounts": mounts} if mounts else {}
    container = {
        "name": "exporter",
        "image": exp.image,
        "imagePullPolicy": spec.image_pull_policy,
        "env": address + env_vars,
        "ports": [{"name": "metrics", "containerPort": names.EXPORTER_PORT, "protocol": "TCP"}],
        "resources": resources(exp.resources, {"requests": {"cpu": "10m", "memory": "32Mi"}}),
        "securityContext": container_security_context(),
        **extra,
    }
    return ExporterSidecar(container, init, volumes)

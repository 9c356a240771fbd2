"""Desired Kubernetes objects for `mode: sentinel`: pure functions of the spec."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import config, names, pods, tls
from redis_messaging.builders.names import Owner

Obj = dict[str, Any]


def meta(owner: Owner, name: str, component: str, **extra: Any) -> Obj:
    out: Obj = {
        "name": name,
        "namespace": owner.namespace,
        "labels": names.common_labels(owner, component),
        "ownerReferences": [owner.owner_reference()],
    }
    out.update(extra)
    return out


def auth_secret_name(spec: RedisMessagingSpec, owner: Owner) -> str | None:
    if not spec.auth.enabled:
        return None
    return spec.auth.secret_name or owner.auth_secret


def config_map(spec: RedisMessagingSpec, owner: Owner) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(owner, owner.config_map, names.COMPONENT_REDIS),
        "data": config.config_files(spec, owner),
    }


def generated_auth_secret(owner: Owner, name: str | None = None) -> Obj:
    """The shape of a generated password Secret (the auth Secret, or ``name``: the exporter user's);
    its password is added once, when it is created."""
    m = meta(owner, name or owner.auth_secret, names.COMPONENT_REDIS)
    m["annotations"] = {names.ANNOTATION_GENERATED: "true"}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": m, "type": "Opaque"}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def connection_secret(spec: RedisMessagingSpec, owner: Owner, password: str | None,
                      tls_facts: tls.Facts | None = None) -> Obj:
    """What applications mount to connect: addresses, Sentinel master name, URLs, and with TLS the
    CA that signed the servers' certificates (``ca.crt``)."""
    host = owner.service_host(owner.master_service)
    sentinel_host = owner.service_host(owner.sentinel_service)
    scheme = "rediss" if spec.tls.enabled else "redis"
    cred = f":{quote(password, safe='')}@" if password is not None else ""
    data = {
        "host": host,
        "port": str(names.REDIS_PORT),
        "sentinelHost": sentinel_host,
        "sentinelPort": str(names.SENTINEL_PORT),
        "masterName": owner.master_name,
        "url": f"{scheme}://{cred}{host}:{names.REDIS_PORT}/0",
        "sentinelUrl": f"{scheme}+sentinel://{cred}{sentinel_host}:{names.SENTINEL_PORT}/{owner.master_name}/0",
    }
    if password is not None:
        data["password"] = password
    if tls_facts is not None:
        data[tls.CA_FILE] = tls_facts.ca
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(owner, owner.connection_secret, names.COMPONENT_REDIS),
        "type": "Opaque",
        "data": {k: _b64(v) for k, v in sorted(data.items())},
    }


def _service(owner: Owner, name: str, component: str, port: int, port_name: str, *,
             headless: bool = False, role: str | None = None) -> Obj:
    selector = names.selector_labels(owner, component)
    if role:
        selector[names.LABEL_ROLE] = role
    spec: Obj = {
        "selector": selector,
        "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
        # Peers must resolve each other while they are still starting (replication, Sentinel).
        spec["publishNotReadyAddresses"] = True
    else:
        spec["type"] = "ClusterIP"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(owner, name, component), "spec": spec}


def services(owner: Owner) -> list[Obj]:
    redis_c, sent_c = names.COMPONENT_REDIS, names.COMPONENT_SENTINEL
    return [
        _service(owner, owner.redis_headless, redis_c, names.REDIS_PORT, "redis", headless=True),
        _service(owner, owner.master_service, redis_c, names.REDIS_PORT, "redis", role=names.ROLE_MASTER),
        _service(owner, owner.replicas_service, redis_c, names.REDIS_PORT, "redis", role=names.ROLE_REPLICA),
        _service(owner, owner.sentinel_headless, sent_c, names.SENTINEL_PORT, "sentinel", headless=True),
        _service(owner, owner.sentinel_service, sent_c, names.SENTINEL_PORT, "sentinel"),
    ]


def _host_list(owner: Owner, pod_names: list[str], headless: str) -> str:
    return " ".join(owner.pod_host(p, headless) for p in pod_names)


def script_env(spec: RedisMessagingSpec, owner: Owner, headless: str) -> dict[str, str]:
    """The non-secret environment the start, probe and pre-stop scripts read."""
    redis_pods = [owner.redis_pod(i) for i in range(spec.redis.replicas)]
    sentinel_pods = [owner.sentinel_pod(i) for i in range(spec.sentinel.replicas)]
    return {
        "RMSG_MODE": "sentinel",
        "RMSG_HEADLESS_SERVICE": headless,
        "RMSG_CLUSTER_DOMAIN": owner.cluster_domain,
        "RMSG_MASTER_NAME": owner.master_name,
        "RMSG_SEED_HOST": owner.pod_host(owner.redis_pod(0), owner.redis_headless),
        "RMSG_REDIS_HOSTS": _host_list(owner, redis_pods, owner.redis_headless),
        "RMSG_SENTINEL_HOSTS": _host_list(owner, sentinel_pods, owner.sentinel_headless),
        "RMSG_PRESTOP_SECONDS": str(max(spec.pod.termination_grace_period_seconds - 10, 5)),
        "RMSG_CATCH_UP_MS": str(catch_up_millis(spec)),
    }


def catch_up_millis(spec: RedisMessagingSpec) -> int:
    """How long a planned switch-over keeps the master's writes paused for its replicas to catch up:
    a paused master also holds back Sentinel's hello messages and the pings queued behind them, so it
    stays well below down-after-milliseconds (a third of it, between 0.2 and 5 s)."""
    return max(200, min(5000, spec.sentinel.down_after_milliseconds // 3))


def _pod_template(spec: RedisMessagingSpec, owner: Owner, component: str, containers: list[Obj],
                  volumes: list[Obj], config_hash: str) -> Obj:
    selector = names.selector_labels(owner, component)
    labels = {**names.common_labels(owner, component), **spec.pod.labels}
    annotations = {**spec.pod.annotations, names.ANNOTATION_CONFIG_HASH: config_hash}
    pod_spec: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.pod.termination_grace_period_seconds,
        "securityContext": pods.pod_security_context(spec),
        "containers": containers,
        "volumes": volumes,
        **pods.scheduling(spec, selector),
    }
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def _data_claim(spec: RedisMessagingSpec) -> list[Obj]:
    if spec.persistence.mode == "none":
        return []
    storage = spec.persistence.storage
    claim_spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "data"}, "spec": claim_spec}]


def exporter_secret_name(spec: RedisMessagingSpec, owner: Owner) -> str | None:
    """The exporter user's generated password Secret, when the exporter authenticates."""
    return owner.exporter_secret if config.exporter_user(spec) else None


def user_secrets(spec: RedisMessagingSpec) -> list[str]:
    """The Secrets of spec.auth.users, in declaration order (file user-<i> is the i-th's password)."""
    return [u.secret_name for u in spec.auth.users] if spec.auth.enabled else []


def redis_statefulset(spec: RedisMessagingSpec, owner: Owner) -> Obj:
    auth = auth_secret_name(spec, owner)
    tls_secret = tls.secret_name(spec, owner)
    exporter = exporter_secret_name(spec, owner)
    volumes, mounts = pods.config_volumes(owner, auth, user_secrets(spec), tls_secret, exporter)
    claims = _data_claim(spec)
    if not claims:
        volumes.append({"name": "data", "emptyDir": {}})
    mounts.append({"name": "data", "mountPath": names.DATA_MOUNT})
    script = f"{names.CONFIG_MOUNT}/"
    redis_container: Obj = {
        "name": "redis",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["sh", f"{script}redis-start.sh"],
        "env": pods.downward_env() + pods.env({**script_env(spec, owner, owner.redis_headless),
                                               **pods.tls_env(tls_secret)}),
        "ports": [{"name": "redis", "containerPort": names.REDIS_PORT, "protocol": "TCP"}],
        **pods.redis_probes(script),
        "resources": pods.resources(spec.redis.resources, pods.DEFAULT_RESOURCES),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    containers = [redis_container]
    if spec.monitoring.exporter.enabled:
        containers.append(pods.exporter_container(spec, exporter, owner=owner, headless=owner.redis_headless,
                                                  tls_secret=tls_secret))
    cfg = config.config_files(spec, owner)
    config_hash = config.content_hash({k: cfg[k] for k in ("redis.conf", "redis-start.sh", "common.sh")})
    sts_spec: Obj = {
        "serviceName": owner.redis_headless,
        "replicas": spec.redis.replicas,
        "podManagementPolicy": "Parallel",
        # The operator replaces pods itself: replicas first, then a switch-over, then the old master.
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": names.selector_labels(owner, names.COMPONENT_REDIS)},
        "template": _pod_template(spec, owner, names.COMPONENT_REDIS, containers, volumes, config_hash),
        "persistentVolumeClaimRetentionPolicy": {
            "whenDeleted": spec.persistence.retention_policy.when_deleted,
            "whenScaled": spec.persistence.retention_policy.when_scaled,
        },
    }
    if claims:
        sts_spec["volumeClaimTemplates"] = claims
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": meta(owner, owner.redis_sts, names.COMPONENT_REDIS), "spec": sts_spec}


def sentinel_statefulset(spec: RedisMessagingSpec, owner: Owner, tls_facts: tls.Facts | None = None) -> Obj:
    auth = auth_secret_name(spec, owner)
    tls_secret = tls.secret_name(spec, owner)
    exporter = exporter_secret_name(spec, owner)
    volumes, mounts = pods.config_volumes(owner, auth, tls_secret=tls_secret, exporter_secret=exporter)
    script = f"{names.CONFIG_MOUNT}/"
    container: Obj = {
        "name": "sentinel",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["sh", f"{script}sentinel-start.sh"],
        "env": pods.downward_env() + pods.env({**script_env(spec, owner, owner.sentinel_headless),
                                               **pods.tls_env(tls_secret)}),
        "ports": [{"name": "sentinel", "containerPort": names.SENTINEL_PORT, "protocol": "TCP"}],
        "livenessProbe": pods.exec_probe(["sh", f"{script}probe.sh", "liveness", "sentinel"],
                                         initial=5, period=10, timeout=5, failures=6),
        "readinessProbe": pods.exec_probe(["sh", f"{script}probe.sh", "readiness", "sentinel"],
                                          initial=2, period=5, timeout=5, failures=2),
        "resources": pods.resources(spec.sentinel.resources, {"requests": {"cpu": "50m", "memory": "32Mi"}}),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    cfg = config.config_files(spec, owner)
    config_hash = config.content_hash(
        {k: cfg[k] for k in ("sentinel.conf", "sentinel-monitor.conf", "sentinel-start.sh", "common.sh")}
    )
    containers = [container]
    if spec.monitoring.exporter.enabled:  # redis_sentinel_* metrics: quorum, agreement on the master
        containers.append(pods.exporter_container(spec, exporter, names.SENTINEL_PORT, owner=owner,
                                                  headless=owner.sentinel_headless, tls_secret=tls_secret))
    template = _pod_template(spec, owner, names.COMPONENT_SENTINEL, containers, volumes, config_hash)
    if tls_secret and tls_facts is not None:  # Sentinel cannot reload a renewed certificate: a new one rolls it
        template["metadata"]["annotations"][tls.ANNOTATION_REVISION] = tls_facts.revision
    sts_spec: Obj = {
        "serviceName": owner.sentinel_headless,
        "replicas": spec.sentinel.replicas,
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": names.selector_labels(owner, names.COMPONENT_SENTINEL)},
        "template": template,
    }
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": meta(owner, owner.sentinel_sts, names.COMPONENT_SENTINEL), "spec": sts_spec}


def pod_disruption_budgets(owner: Owner) -> list[Obj]:
    out = []
    for name, component in ((owner.redis_sts, names.COMPONENT_REDIS),
                            (owner.sentinel_sts, names.COMPONENT_SENTINEL)):
        out.append({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(owner, name, component),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": names.selector_labels(owner, component)},
            },
        })
    return out


def build(spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
          tls_facts: tls.Facts | None = None) -> list[Obj]:
    """Every object of a sentinel-mode resource, in the order they are applied.

    The generated auth Secret is not in this list: it is created once (never re-applied, so the
    password is never replaced); see :func:`generated_auth_secret`. The cert-manager Certificate is
    (:func:`tls.certificate`, when spec.tls.issuerRef asks for one).
    """
    certificate = tls.certificate(spec, owner)
    return [
        *([certificate] if certificate else []),
        config_map(spec, owner),
        connection_secret(spec, owner, password, tls_facts),
        *services(owner),
        redis_statefulset(spec, owner),
        sentinel_statefulset(spec, owner, tls_facts),
        *pod_disruption_budgets(owner),
    ]

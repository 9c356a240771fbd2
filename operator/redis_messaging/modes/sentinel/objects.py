"""Desired Kubernetes objects for `mode: sentinel`: pure functions of the spec."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import common, names, pods, tls
from redis_messaging.builders.names import Owner
from redis_messaging.modes.sentinel import scripts

Obj = dict[str, Any]


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
    return common.connection_secret(owner, names.COMPONENT_REDIS, data, password, tls_facts)


def services(owner: Owner) -> list[Obj]:
    redis_c, sent_c = names.COMPONENT_REDIS, names.COMPONENT_SENTINEL
    return [
        common.service(owner, owner.redis_headless, redis_c, names.REDIS_PORT, "redis", headless=True),
        common.service(owner, owner.master_service, redis_c, names.REDIS_PORT, "redis", role=names.ROLE_MASTER),
        common.service(owner, owner.replicas_service, redis_c, names.REDIS_PORT, "redis", role=names.ROLE_REPLICA),
        common.service(owner, owner.sentinel_headless, sent_c, names.SENTINEL_PORT, "sentinel", headless=True),
        common.service(owner, owner.sentinel_service, sent_c, names.SENTINEL_PORT, "sentinel"),
    ]


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
        "RMSG_REDIS_HOSTS": common.host_list(owner, redis_pods, owner.redis_headless),
        "RMSG_SENTINEL_HOSTS": common.host_list(owner, sentinel_pods, owner.sentinel_headless),
        "RMSG_PRESTOP_SECONDS": str(max(spec.pod.termination_grace_period_seconds - 10, 5)),
        "RMSG_CATCH_UP_MS": str(catch_up_millis(spec)),
    }


def catch_up_millis(spec: RedisMessagingSpec) -> int:
    """How long a planned switch-over keeps the master's writes paused for its replicas to catch up:
    a paused master also holds back Sentinel's hello messages and the pings queued behind them, so it
    stays well below down-after-milliseconds (a third of it, between 0.2 and 5 s)."""
    return max(200, min(5000, spec.sentinel.down_after_milliseconds // 3))


def redis_statefulset(spec: RedisMessagingSpec, owner: Owner) -> Obj:
    auth = common.auth_secret_name(spec, owner)
    tls_secret = tls.secret_name(spec, owner)
    exporter = common.exporter_secret_name(spec, owner)
    volumes, mounts = pods.config_volumes(owner, auth, common.user_secrets(spec), tls_secret, exporter)
    claims = common.data_claim(spec)
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
    init: list[Obj] = []
    if spec.monitoring.exporter.enabled:
        sidecar = pods.exporter(spec, exporter, owner=owner, headless=owner.redis_headless, tls_secret=tls_secret)
        containers.append(sidecar.container)
        init += sidecar.init_containers
        volumes += sidecar.volumes
    cfg = scripts.config_files(spec, owner)
    config_hash = common.hashed_files(cfg, ("redis.conf", "redis-start.sh", "redis-role.sh", "sentinel-lib.sh",
                                            "common.sh"))
    sts_spec: Obj = {
        "serviceName": owner.redis_headless,
        "replicas": spec.redis.replicas,
        "podManagementPolicy": "Parallel",
        # The operator replaces pods itself: replicas first, then a switch-over, then the old master.
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": names.selector_labels(owner, names.COMPONENT_REDIS)},
        "template": common.pod_template(spec, owner, names.COMPONENT_REDIS, containers, volumes, config_hash, init),
        "persistentVolumeClaimRetentionPolicy": {
            "whenDeleted": spec.persistence.retention_policy.when_deleted,
            "whenScaled": spec.persistence.retention_policy.when_scaled,
        },
    }
    if claims:
        sts_spec["volumeClaimTemplates"] = claims
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": common.meta(owner, owner.redis_sts, names.COMPONENT_REDIS), "spec": sts_spec}


def sentinel_statefulset(spec: RedisMessagingSpec, owner: Owner, tls_facts: tls.Facts | None = None) -> Obj:
    auth = common.auth_secret_name(spec, owner)
    tls_secret = tls.secret_name(spec, owner)
    exporter = common.exporter_secret_name(spec, owner)
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
    cfg = scripts.config_files(spec, owner)
    config_hash = common.hashed_files(cfg, ("sentinel.conf", "sentinel-monitor.conf", "sentinel-start.sh",
                                            "sentinel-lib.sh", "common.sh"))
    containers = [container]
    init: list[Obj] = []
    if spec.monitoring.exporter.enabled:  # redis_sentinel_* metrics: quorum, agreement on the master
        sidecar = pods.exporter(spec, exporter, names.SENTINEL_PORT, owner=owner, headless=owner.sentinel_headless,
                                tls_secret=tls_secret)
        containers.append(sidecar.container)
        init += sidecar.init_containers
        volumes += sidecar.volumes
    template = common.pod_template(spec, owner, names.COMPONENT_SENTINEL, containers, volumes, config_hash, init)
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
            "metadata": common.meta(owner, owner.sentinel_sts, names.COMPONENT_SENTINEL), "spec": sts_spec}


def pod_disruption_budgets(owner: Owner) -> list[Obj]:
    out = []
    for name, component in ((owner.redis_sts, names.COMPONENT_REDIS),
                            (owner.sentinel_sts, names.COMPONENT_SENTINEL)):
        out.append({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": common.meta(owner, name, component),
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
    password is never replaced); see :func:`redis_messaging.builders.common.generated_auth_secret`. The
    cert-manager Certificate is (:func:`tls.certificate`, when spec.tls.issuerRef asks for one).
    """
    certificate = tls.certificate(spec, owner)
    return [
        *([certificate] if certificate else []),
        common.config_map(owner, scripts.config_files(spec, owner), names.COMPONENT_REDIS),
        connection_secret(spec, owner, password, tls_facts),
        *services(owner),
        redis_statefulset(spec, owner),
        sentinel_statefulset(spec, owner, tls_facts),
        *pod_disruption_budgets(owner),
    ]

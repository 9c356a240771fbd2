"""Desired objects and pieces both modes build the same way: metadata, Services, pod templates,
volume claims, the generated password Secrets and the ConfigMap. Pure functions of the spec."""

from __future__ import annotations

import base64
from typing import Any

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


def generated_auth_secret(owner: Owner, name: str | None = None) -> Obj:
    """The shape of a generated password Secret (the auth Secret, or ``name``: the exporter user's);
    its password is added once, when it is created."""
    m = meta(owner, name or owner.auth_secret, names.COMPONENT_REDIS)
    m["annotations"] = {names.ANNOTATION_GENERATED: "true"}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": m, "type": "Opaque"}


def connection_secret(owner: Owner, component: str, data: dict[str, str], password: str | None,
                      tls_facts: tls.Facts | None) -> Obj:
    """The Secret applications mount to connect: the mode's addresses and URLs in ``data``, then the
    password and, with TLS, the CA that signed the servers' certificates (``ca.crt``)."""
    data = dict(data)
    if password is not None:
        data["password"] = password
    if tls_facts is not None:
        data[tls.CA_FILE] = tls_facts.ca
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(owner, owner.connection_secret, component),
        "type": "Opaque",
        "data": {k: b64(v) for k, v in sorted(data.items())},
    }


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def service(owner: Owner, name: str, component: str, port: int, port_name: str, *,
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


def host_list(owner: Owner, pod_names: list[str], headless: str) -> str:
    return " ".join(owner.pod_host(p, headless) for p in pod_names)


def pod_template(spec: RedisMessagingSpec, owner: Owner, component: str, containers: list[Obj],
                  volumes: list[Obj], config_hash: str, init_containers: list[Obj] | None = None) -> Obj:
    selector = names.selector_labels(owner, component)
    labels = {**names.common_labels(owner, component), **spec.pod.labels}
    annotations = {**spec.pod.annotations, names.ANNOTATION_CONFIG_HASH: config_hash}
    pod_spec: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.pod.termination_grace_period_seconds,
        "securityContext": pods.pod_security_context(spec),
        **({"initContainers": init_containers} if init_containers else {}),
        "containers": containers,
        "volumes": volumes,
        **pods.scheduling(spec, selector),
    }
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def data_claim(spec: RedisMessagingSpec) -> list[Obj]:
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


def hashed_files(cfg: dict[str, str], keys: tuple[str, ...]) -> str:
    """The config hash of a pod template: what its containers read of the ConfigMap (``keys``, and the
    exporter's init script when there is one); a change rolls the pods."""
    return config.content_hash({k: cfg[k] for k in (*keys, config.EXPORTER_AUTH_SCRIPT) if k in cfg})


def config_map(owner: Owner, files: dict[str, str], component: str) -> Obj:
    """The ConfigMap of a resource: its mode's files (:func:`redis_messaging.modes.Mode.config_files`)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(owner, owner.config_map, component),
        "data": files,
    }

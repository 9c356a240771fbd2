"""TLS: which Secret the pods mount, and the cert-manager Certificate that fills it.

Every process serves TLS only (``port 0``): clients, replication, Sentinel and the cluster bus. The
Secret holds ``tls.crt``, ``tls.key`` and ``ca.crt`` (the layout cert-manager writes); the same key
pair serves and, where a peer asks for one, authenticates as a client. Clients verify the servers
against ``ca.crt``; with ``spec.tls.authClients`` Redis asks every client for a certificate too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner

Obj = dict[str, Any]

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
FILES = (CERT_FILE, KEY_FILE, CA_FILE)

CERTIFICATE_API = "cert-manager.io/v1"
ANNOTATION_REVISION = f"{names.DOMAIN}/tls-revision"


@dataclass(frozen=True)
class Facts:
    """What the builders need to know of the TLS Secret's content: the CA applications trust (it goes
    into the connection Secret) and a revision of the certificate. Sentinel cannot reload its
    certificate, so the Sentinel pod template carries the revision and a renewal rolls the Sentinels
    one by one; Redis reloads in place."""

    ca: str
    revision: str


def secret_name(spec: RedisMessagingSpec, owner: Owner) -> str | None:
    """The Secret the pods mount, or None without TLS."""
    if not spec.tls.enabled:
        return None
    return spec.tls.secret_name or owner.tls_secret


def dns_names(spec: RedisMessagingSpec, owner: Owner) -> list[str]:
    """Every name a client may reach a pod by: each pod's stable name, the Services, localhost."""
    domain = owner.cluster_domain
    headless = [owner.redis_headless]
    services = [owner.cluster_service] if spec.mode == "cluster" else [
        owner.master_service, owner.replicas_service, owner.sentinel_service]
    if spec.mode == "sentinel":
        headless.append(owner.sentinel_headless)
    out = []
    for h in headless:
        out += [f"*.{h}.{owner.namespace}.svc.{domain}", f"*.{h}.{owner.namespace}.svc"]
    for s in services:
        out += [f"{s}.{owner.namespace}.svc.{domain}", f"{s}.{owner.namespace}.svc", f"{s}.{owner.namespace}"]
    return [*out, "localhost"]


def certificate(spec: RedisMessagingSpec, owner: Owner) -> Obj | None:
    """The cert-manager Certificate of spec.tls.issuerRef, or None when a Secret is named instead.

    The private key is rotated with every renewal; Redis picks the new pair up without a restart
    (see :mod:`redis_messaging.reconcile.tls`)."""
    ref = spec.tls.issuer_ref
    if not spec.tls.enabled or ref is None:
        return None
    component = names.COMPONENT_SHARD if spec.mode == "cluster" else names.COMPONENT_REDIS
    return {
        "apiVersion": CERTIFICATE_API,
        "kind": "Certificate",
        "metadata": {
            "name": owner.tls_secret,
            "namespace": owner.namespace,
            "labels": names.common_labels(owner, component),
            "ownerReferences": [owner.owner_reference()],
        },
        "spec": {
            "secretName": owner.tls_secret,
            "secretTemplate": {"labels": names.common_labels(owner, component)},
            "issuerRef": {"name": ref.name, "kind": ref.kind, "group": ref.group},
            "commonName": f"{owner.name}.{owner.namespace}",
            "dnsNames": dns_names(spec, owner),
            "ipAddresses": ["127.0.0.1"],
            "usages": ["server auth", "client auth", "digital signature", "key encipherment"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    }


def volume(secret: str) -> tuple[Obj, Obj]:
    """The pod volume of the TLS Secret and its read-only mount."""
    return (
        {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o400,
                                   "items": [{"key": f, "path": f} for f in FILES]}},
        {"name": "tls", "mountPath": names.TLS_MOUNT, "readOnly": True},
    )

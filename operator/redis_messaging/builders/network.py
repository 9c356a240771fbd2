"""The optional NetworkPolicy of a resource (spec.networkPolicy).

Ingress to every pod of the resource is limited to: the pods of the same resource on every port
(replication, Sentinel, the cluster bus), the operator (when it knows which pods it runs as), the
declared clients on the Redis and Sentinel ports, and scrapers on the exporter's port only. Egress is
left alone. Enforcement is the network plugin's: a cluster whose plugin ignores NetworkPolicies
admits everything, as it would without one.
"""

from __future__ import annotations

from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner

Obj = dict[str, Any]

LABEL_CLIENT = f"{names.DOMAIN}/client"
"""The label that admits a pod of the resource's namespace as a client by default (value: the name)."""


def _tcp(*ports: int) -> list[Obj]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def network_policy(spec: RedisMessagingSpec, owner: Owner, operator_peer: Obj | None = None) -> Obj | None:
    """The NetworkPolicy, or None when spec.networkPolicy is off. ``operator_peer``: a
    NetworkPolicyPeer selecting the operator's pods (from the operator's settings)."""
    np = spec.network_policy
    if not np.enabled:
        return None
    instance = {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: owner.name}
    client_ports = [names.REDIS_PORT] if spec.mode == "cluster" else [names.REDIS_PORT, names.SENTINEL_PORT]
    ours_ports = [*client_ports, names.BUS_PORT] if spec.mode == "cluster" else client_ports
    clients = [dict(p) for p in np.clients] or [{"podSelector": {"matchLabels": {LABEL_CLIENT: owner.name}}}]
    ingress: list[Obj] = [
        {"from": [{"podSelector": {"matchLabels": dict(instance)}}], "ports": _tcp(*ours_ports)},
        {"from": clients, "ports": _tcp(*client_ports)},
    ]
    if operator_peer is not None:
        ingress.append({"from": [dict(operator_peer)], "ports": _tcp(*client_ports)})
    if spec.monitoring.exporter.enabled:
        metrics: Obj = {"ports": _tcp(names.EXPORTER_PORT)}
        if np.metrics_from:
            metrics["from"] = [dict(p) for p in np.metrics_from]
        ingress.append(metrics)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": names.common_labels(owner, "network"),
            "ownerReferences": [owner.owner_reference()],
        },
        "spec": {"podSelector": {"matchLabels": instance}, "policyTypes": ["Ingress"], "ingress": ingress},
    }

"""spec.networkPolicy: who may connect to the pods of a resource."""

from __future__ import annotations

from typing import Any

import pytest

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.builders.network import LABEL_CLIENT, network_policy

OWNER = Owner(name="orders", namespace="shop", uid="u1")
OPERATOR = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-messaging-operator"}}}


def policy(spec: dict[str, Any], peer: dict[str, Any] | None = OPERATOR) -> dict[str, Any]:
    found = network_policy(models.parse_spec(spec), OWNER, peer)
    assert found is not None
    return found


def ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def test_off_by_default() -> None:
    assert network_policy(models.parse_spec({}), OWNER, OPERATOR) is None


def test_sentinel_mode_admits_its_own_pods_the_operator_labelled_clients_and_scrapers() -> None:
    np = policy({"networkPolicy": {"enabled": True}})
    assert np["kind"] == "NetworkPolicy"
    assert np["metadata"]["ownerReferences"][0]["uid"] == "u1"
    spec = np["spec"]
    instance = {"app.kubernetes.io/name": "redis-messaging", "app.kubernetes.io/instance": "orders"}
    assert spec["podSelector"] == {"matchLabels": instance}
    assert spec["policyTypes"] == ["Ingress"]
    ours, clients, operator, metrics = spec["ingress"]
    assert ours["from"] == [{"podSelector": {"matchLabels": instance}}]
    assert ports(ours) == {6379, 26379}
    assert clients["from"] == [{"podSelector": {"matchLabels": {LABEL_CLIENT: "orders"}}}]
    assert ports(clients) == {6379, 26379}
    assert operator["from"] == [OPERATOR]
    assert "from" not in metrics, "scrapers from anywhere, on the metrics port only"
    assert ports(metrics) == {9121}


def test_cluster_mode_opens_the_bus_to_its_own_pods_only() -> None:
    np = policy({"mode": "cluster", "networkPolicy": {"enabled": True}}, peer=None)
    ours, clients, metrics = np["spec"]["ingress"]
    assert ports(ours) == {6379, 16379}
    assert ports(clients) == {6379}
    assert ports(metrics) == {9121}


@pytest.mark.parametrize("exporter", [True, False])
def test_declared_clients_and_scrapers_replace_the_defaults(exporter: bool) -> None:
    app = {"namespaceSelector": {"matchLabels": {"team": "billing"}}}
    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    np = policy({"networkPolicy": {"enabled": True, "clients": [app], "metricsFrom": [prom]},
                 "monitoring": {"exporter": {"enabled": exporter}}})
    rules = np["spec"]["ingress"]
    assert rules[1]["from"] == [app]
    if exporter:
        assert rules[-1] == {"ports": [{"protocol": "TCP", "port": 9121}], "from": [prom]}
    else:
        assert all(9121 not in ports(r) for r in rules)

"""spec.networkPolicy through the running operator on a real kube-apiserver: the API server accepts
the NetworkPolicy the operator builds, the operator's own pods are admitted (from its settings), and
turning the policy off deletes it."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client

os.environ.setdefault("REDIS_MESSAGING_RESYNC_SECONDS", "1")

OPERATOR = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-messaging-operator"}}}


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


def test_network_policy_applied_then_removed(api: Api, namespace: str, operator_kubeconfig: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    net = client.NetworkingV1Api(api.api)
    monkeypatch.setenv("REDIS_MESSAGING_OPERATOR_PEER", json.dumps(OPERATOR))
    with operator_running(namespace):
        api.create(namespace, rmsg("orders", {"networkPolicy": {"enabled": True}}))
        policy = eventually(lambda: net.read_namespaced_network_policy("orders", namespace), timeout=30,
                            what="the NetworkPolicy")
        peers = [p for rule in policy.spec.ingress for p in rule._from or []]
        assert any(p.namespace_selector and p.namespace_selector.match_labels ==
                   {"kubernetes.io/metadata.name": "ops"} for p in peers), "the operator is admitted"
        assert policy.metadata.owner_references[0].kind == "RedisMessaging"
        api.patch(namespace, "orders", {"spec": {"networkPolicy": {"enabled": False}}})
        eventually(lambda: not net.list_namespaced_network_policy(namespace).items, timeout=30,
                   what="the NetworkPolicy deleted")
        eventually(lambda: any(e.reason == "Deleted" and "NetworkPolicy orders" in e.message
                               for e in api.events(namespace, "orders")), what="an Event saying so")

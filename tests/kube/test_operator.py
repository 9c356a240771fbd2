"""The operator against a real kube-apiserver: CRD, validation, children, status, no idle writes."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from controlplane import ControlPlane, iter_event_summaries
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from redis_messaging.runtime import operator as runtime

# A short safety-net period, so the tests see several timer passes within seconds. Set before
# redis_messaging.handlers is imported (by the first KopfRunner of the session).
os.environ.setdefault("REDIS_MESSAGING_RESYNC_SECONDS", "1")

CHILDREN = {
    ("ConfigMap", "orders-config"),
    ("Secret", "orders-auth"),
    ("Secret", "orders-connection"),
    ("Service", "orders-redis-headless"),
    ("Service", "orders-master"),
    ("Service", "orders-replicas"),
    ("Service", "orders-sentinel-headless"),
    ("Service", "orders-sentinel"),
    ("StatefulSet", "orders-redis"),
    ("StatefulSet", "orders-sentinel"),
    ("PodDisruptionBudget", "orders-redis"),
    ("PodDisruptionBudget", "orders-sentinel"),
}


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def operator(namespace: str, operator_kubeconfig: Any, api: Api) -> Iterator[Any]:
    with operator_running(namespace) as runner:
        yield runner


def children(api: Api, namespace: str) -> dict[tuple[str, str], Any]:
    selector = "app.kubernetes.io/instance=orders"
    found: dict[tuple[str, str], Any] = {}
    for kind, items in (
        ("ConfigMap", api.core.list_namespaced_config_map(namespace, label_selector=selector).items),
        ("Secret", api.core.list_namespaced_secret(namespace, label_selector=selector).items),
        ("Service", api.core.list_namespaced_service(namespace, label_selector=selector).items),
        ("StatefulSet", api.apps.list_namespaced_stateful_set(namespace, label_selector=selector).items),
        ("PodDisruptionBudget",
         client.PolicyV1Api(api.api).list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items),
    ):
        for item in items:
            found[(kind, item.metadata.name)] = item
    return found


# ---------------------------------------------------------------------------------------------
# The CRD and what the API server refuses


def refusal(exc: ApiException) -> str:
    """The message a user sees from `kubectl apply` for a refused object."""
    return str(json.loads(exc.body or "{}").get("message", exc.body))


def test_crd_is_established_with_printer_columns(api: Api, namespace: str) -> None:
    api.create(namespace, rmsg("orders"))
    table = api.raw("GET", f"/apis/redis-messaging.dev/v1alpha1/namespaces/{namespace}/redismessagings",
                    accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    columns = [c["name"] for c in table["columnDefinitions"] if c.get("priority", 0) == 0]
    assert columns == ["Name", "Mode", "Ready", "Master", "Shards", "Engine", "Age"]
    row = table["rows"][0]["cells"]
    assert row[0] == "orders"
    assert row[1] == "sentinel"
    assert row[4] == 3


def test_short_name_and_defaults(api: Api, namespace: str) -> None:
    resources = api.raw("GET", "/apis/redis-messaging.dev/v1alpha1")["resources"]
    main = next(r for r in resources if r["name"] == "redismessagings")
    assert main["shortNames"] == ["rmsg"]
    assert main["namespaced"] is True
    created = api.create(namespace, rmsg("orders", {}))
    spec = created["spec"]
    assert spec["mode"] == "sentinel"
    assert spec["redis"]["replicas"] == 3
    assert spec["sentinel"] == {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 5000,
                                "failoverTimeout": 60000, "parallelSyncs": 1, "resources": {}}
    assert spec["persistence"]["storage"]["size"] == "8Gi"


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown mode", {"mode": "standalone"}, 'Unsupported value: "standalone"'),
    ("negative replicas", {"redis": {"replicas": -1}}, "should be greater than or equal to 1"),
    ("zero replicas", {"redis": {"replicas": 0}}, "should be greater than or equal to 1"),
    ("quorum above sentinels", {"sentinel": {"replicas": 3, "quorum": 4}},
     "sentinel.quorum must not exceed sentinel.replicas"),
    ("unknown field", {"sentinels": 3}, 'unknown field "spec.sentinels"'),
    ("unknown nested field", {"redis": {"replicaCount": 3}}, 'unknown field "spec.redis.replicaCount"'),
    ("persistence mode", {"persistence": {"mode": "journal"}}, 'Unsupported value: "journal"'),
    ("bad size", {"persistence": {"storage": {"size": "lots"}}}, "spec.persistence.storage.size"),
    ("protected config key", {"redis": {"config": {"requirepass": "x"}}}, "keys the operator manages"),
    ("two shards", {"mode": "cluster", "cluster": {"shards": 2}}, "should be greater than or equal to 3"),
    ("tls twice", {"tls": {"secretName": "a", "issuerRef": {"name": "b"}}}, "either secretName or issuerRef"),
    ("tls without source", {"tls": {"enabled": True}}, "tls.enabled needs"),
    ("duplicate stream", {"streams": [{"name": "orders"}, {"name": "orders"}]}, "Duplicate value"),
    ("min above max", {"streams": [{"name": "o", "groups": [{"name": "g", "autoscale": {
        "target": {"name": "w"}, "minReplicas": 5, "maxReplicas": 2}}]}]}, "minReplicas must not exceed maxReplicas"),
    ("default acl user", {"auth": {"users": [{"name": "default", "secretName": "s", "rules": "+@all"}]}},
     "the default user's password comes from auth.secretName"),
    ("acl rule reading passwords", {"auth": {"users": [{"name": "app", "secretName": "s", "rules": "~* +config|get"}]}},
     "may not grant CONFIG, ACL"),
    ("acl rule in a selector", {"auth": {"users": [{"name": "app", "secretName": "s", "rules": "~* (+ACL ~*)"}]}},
     "may not grant CONFIG, ACL"),
    ("password in acl rules", {"auth": {"users": [{"name": "app", "secretName": "s", "rules": "~* >pw +get"}]}},
     "nor carry a password"),
    ("down-after too short", {"sentinel": {"downAfterMilliseconds": 10}}, "greater than or equal to 1000"),
    ("bad start id", {"streams": [{"name": "o", "groups": [{"name": "g", "startId": "abc"}]}]}, "startId"),
    ("bad target kind", {"streams": [{"name": "o", "groups": [{"name": "g", "autoscale": {
        "target": {"kind": "Pod", "name": "w"}}}]}]}, 'Unsupported value: "Pod"'),
    ("appendfsync", {"persistence": {"appendfsync": "sometimes"}}, 'Unsupported value: "sometimes"'),
    ("pull policy", {"imagePullPolicy": "Sometimes"}, 'Unsupported value: "Sometimes"'),
    ("string replicas", {"redis": {"replicas": "three"}}, "spec.redis.replicas"),
]


@pytest.mark.parametrize(("case", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resources_are_refused_at_apply_time(api: Api, namespace: str, case: str,
                                                     spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiException) as err:
        api.create(namespace, rmsg("orders", spec))
    assert err.value.status in (400, 422), err.value.body
    assert message in refusal(err.value), refusal(err.value)


def test_long_names_are_refused(api: Api, namespace: str) -> None:
    with pytest.raises(ApiException) as err:
        api.create(namespace, rmsg("o" * 41))
    assert "at most 40 characters" in refusal(err.value)


@pytest.mark.parametrize(
    ("first", "change", "message"),
    [
        ({"mode": "sentinel"}, {"spec": {"mode": "cluster"}}, "mode is immutable"),
        ({"persistence": {"storage": {"size": "10Gi"}}}, {"spec": {"persistence": {"storage": {"size": "5Gi"}}}},
         "may grow but never shrink"),
        ({"persistence": {"storage": {"size": "1Gi", "storageClassName": "a"}}},
         {"spec": {"persistence": {"storage": {"storageClassName": "b"}}}}, "storageClassName is immutable"),
    ],
    ids=["mode change", "storage shrink", "storage class change"],
)
def test_invalid_changes_are_refused(api: Api, namespace: str, first: dict[str, Any], change: dict[str, Any],
                                     message: str) -> None:
    api.create(namespace, rmsg("orders", first))
    with pytest.raises(ApiException) as err:
        api.patch(namespace, "orders", change)
    assert message in refusal(err.value), refusal(err.value)


def test_storage_may_grow(api: Api, namespace: str) -> None:
    api.create(namespace, rmsg("orders", {"persistence": {"storage": {"size": "10Gi"}}}))
    api.patch(namespace, "orders", {"spec": {"persistence": {"storage": {"size": "1Ti"}}}})


# ---------------------------------------------------------------------------------------------
# The operator


def test_valid_resource_yields_every_child_owned_by_it(api: Api, namespace: str, operator: Any) -> None:
    created = api.create(namespace, rmsg("orders", {"redis": {"config": {"maxmemory": "1gb"}}}))
    uid = created["metadata"]["uid"]
    found = eventually(lambda: (c := children(api, namespace)) and set(c) >= CHILDREN and c,
                       what="all children")
    for key, obj in found.items():
        refs = obj.metadata.owner_references or []
        assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [("RedisMessaging", "orders", uid, True)], key
    sts = found[("StatefulSet", "orders-redis")]
    assert sts.spec.replicas == 3
    assert sts.spec.update_strategy.type == "OnDelete"
    assert sts.spec.volume_claim_templates[0].spec.resources.requests["storage"] == "8Gi"
    conf = found[("ConfigMap", "orders-config")].data["redis.conf"]
    assert "maxmemory 1gb" in conf
    assert "min-replicas-to-write 1" in conf
    password = base64.b64decode(found[("Secret", "orders-auth")].data["password"]).decode()
    assert len(password) == 32
    connection = {k: base64.b64decode(v).decode() for k, v in found[("Secret", "orders-connection")].data.items()}
    assert connection["host"] == f"orders-master.{namespace}.svc.cluster.local"
    assert connection["password"] == password
    status = eventually(lambda: api.get(namespace, "orders").get("status"), what="status")
    assert status["connection"]["secretName"] == "orders-connection"
    assert status["observedGeneration"] == created["metadata"]["generation"]
    reasons = {e.reason for e in api.events(namespace, "orders")}
    assert "Created" in reasons


def test_spec_change_reaches_children(api: Api, namespace: str, operator: Any) -> None:
    api.create(namespace, rmsg("orders"))
    eventually(lambda: set(children(api, namespace)) >= CHILDREN, what="children")
    api.patch(namespace, "orders", {"spec": {"redis": {"replicas": 5, "config": {"hz": "20"}},
                                             "sentinel": {"downAfterMilliseconds": 3000}}})

    def changed() -> bool:
        found = children(api, namespace)
        data = found[("ConfigMap", "orders-config")].data
        return (found[("StatefulSet", "orders-redis")].spec.replicas == 5 and "hz 20" in data["redis.conf"]
                and "down-after-milliseconds orders 3000" in data["sentinel-monitor.conf"])

    eventually(changed, what="children updated")
    eventually(lambda: api.get(namespace, "orders")["status"]["observedGeneration"] == 2, what="observedGeneration")
    messages = [e.message for e in api.events(namespace, "orders")]
    assert any("Updated StatefulSet orders-redis" in m for m in messages), messages


def test_a_pass_with_nothing_to_change_sends_no_request_at_all(api: Api, namespace: str,
                                                               control_plane: ControlPlane, operator: Any) -> None:
    api.create(namespace, rmsg("orders"))
    eventually(lambda: set(children(api, namespace)) >= CHILDREN, what="children")

    def quiet_for(seconds: float) -> bool:
        since = time.time() - seconds
        return not control_plane.operator_writes(since=since, namespace=namespace)

    # Settle: the first passes create children and write status; then the timer (every 1 s) runs on.
    # (A pass may take a few seconds here: the pods' names do not resolve, and the resolver times out.)
    try:
        eventually(lambda: quiet_for(8.0), timeout=40, what="operator quiet")
    except AssertionError:
        writes = control_plane.operator_writes(since=time.time() - 3, namespace=namespace)
        raise AssertionError([(e["verb"], e["objectRef"]) for e in writes]) from None
    running = runtime.current()
    assert running is not None
    controller = running.controller(namespace, "orders")
    assert controller is not None
    passes, since = controller.passes, time.time()
    time.sleep(4.0)  # the safety-net pass every second: each one reads its children from the indices
    requests = [e for e in control_plane.audit_events(since=since, user="operator")
                if e.get("verb") != "watch"]  # the watches opened before feed the indices
    assert requests == [], list(iter_event_summaries(requests))
    assert controller.passes - passes >= 3, "the timer did not run: the check would prove nothing"


def test_status_conditions_follow_the_pods(api: Api, namespace: str, control_plane: ControlPlane,
                                           operator: Any) -> None:
    if not control_plane.has_controller_manager:
        pytest.skip("needs kube-controller-manager (StatefulSet controller) from .ci/control-plane.sh")
    api.create(namespace, rmsg("orders", {"redis": {"replicas": 2}, "sentinel": {"replicas": 1, "quorum": 1}}))

    def cond(type_: str) -> dict[str, Any] | None:
        return api.condition(namespace, "orders", type_)

    waiting = eventually(lambda: (c := cond("Ready")) and c["reason"] == "WaitingForPods" and c, what="waiting")
    assert waiting["status"] == "False"
    assert "redis 0/2 ready" in waiting["message"]
    assert eventually(lambda: (c := cond("Progressing")) and c["status"] == "True" and c)
    eventually(lambda: len(api.core.list_namespaced_pod(namespace).items) == 3, what="pods created")
    assert api.mark_pods_ready(namespace, "app.kubernetes.io/instance=orders") == 3
    settled = eventually(lambda: (c := cond("Progressing")) and c["status"] == "False" and c, timeout=30,
                         what="progressing settles")
    assert settled["reason"] == "Stable"
    ready = cond("Ready")
    assert ready is not None
    assert "redis 2/2 ready" in (ready["message"] + settled["message"])
    assert api.get(namespace, "orders")["status"]["readyReplicas"] == 2


def test_deleting_the_resource_removes_its_children(api: Api, namespace: str, control_plane: ControlPlane,
                                                    operator: Any) -> None:
    api.create(namespace, rmsg("orders"))
    eventually(lambda: set(children(api, namespace)) >= CHILDREN, what="children")
    live = api.get(namespace, "orders")
    assert live["metadata"].get("finalizers") in (None, []), "no finalizer may block deletion"
    api.delete(namespace, "orders")

    def gone() -> bool:
        try:
            api.get(namespace, "orders")
        except ApiException as exc:
            return exc.status == 404
        return False

    eventually(gone, timeout=10, what="resource deleted without waiting on the operator")
    if not control_plane.has_controller_manager:
        pytest.skip("garbage collection needs kube-controller-manager; owner references were asserted")
    eventually(lambda: not children(api, namespace), timeout=60, what="children garbage-collected")


def test_invalid_spec_past_the_schema_gives_condition_and_event(api: Api, namespace: str, operator: Any) -> None:
    # Passes the schema, but the named Secret does not exist: the operator says so and keeps serving.
    api.create(namespace, rmsg("broken", {"auth": {"secretName": "no-such-secret"}}))
    cond = eventually(lambda: (c := api.condition(namespace, "broken", "Ready")) and c, what="condition")
    assert cond["status"] == "False"
    assert cond["reason"] == "AuthSecretMissing"
    assert "no-such-secret" in cond["message"]
    eventually(lambda: any(e.reason == "AuthSecretMissing" and e.type == "Warning"
                           for e in api.events(namespace, "broken")), what="warning event")
    # Another resource is served meanwhile.
    api.create(namespace, rmsg("orders"))
    eventually(lambda: set(children(api, namespace)) >= CHILDREN, what="children of the valid resource")
    # Fixing the cause heals the broken one.
    api.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="no-such-secret"), string_data={"password": "p4ssw0rd-from-user"}))
    eventually(lambda: (c := api.condition(namespace, "broken", "Ready")) and c["reason"] != "AuthSecretMissing",
               timeout=30, what="broken resource recovers")
    sts = api.apps.read_namespaced_stateful_set("broken-redis", namespace)
    auth = next(v for v in sts.spec.template.spec.volumes if v.name == "auth")
    assert auth.secret.secret_name == "no-such-secret"


def test_cluster_mode_yields_shard_children_and_waits_for_its_pods(api: Api, namespace: str,
                                                                 operator: Any) -> None:
    # mode: cluster used to be refused (Ready=False, reason Unsupported); now it is built.
    api.create(namespace, rmsg("orders", {"mode": "cluster", "cluster": {"shards": 3, "replicasPerShard": 1}}))
    wanted = {("ConfigMap", "orders-config"), ("Secret", "orders-auth"), ("Secret", "orders-connection"),
              ("Service", "orders-redis-headless"), ("Service", "orders-cluster"),
              *((kind, f"orders-shard-{i}") for kind in ("StatefulSet", "PodDisruptionBudget") for i in range(3))}
    found = eventually(lambda: (c := children(api, namespace)) and set(c) >= wanted and c, what="cluster children")
    assert ("StatefulSet", "orders-redis") not in found
    assert ("StatefulSet", "orders-sentinel") not in found
    assert found[("StatefulSet", "orders-shard-2")].spec.replicas == 2
    conf = found[("ConfigMap", "orders-config")].data["redis.conf"]
    assert "cluster-enabled yes" in conf
    connection = {k: base64.b64decode(v).decode() for k, v in found[("Secret", "orders-connection")].data.items()}
    assert connection["host"] == f"orders-cluster.{namespace}.svc.cluster.local"
    assert len(connection["seeds"].split(",")) == 6
    ready = eventually(lambda: (c := api.condition(namespace, "orders", "Ready")) and c, what="Ready condition")
    assert ready["status"] == "False"
    assert ready["reason"] != "Unsupported"
    status = api.get(namespace, "orders")["status"]
    assert status["connection"] == {"secretName": "orders-connection",
                                    "host": f"orders-cluster.{namespace}.svc.cluster.local", "port": 6379}

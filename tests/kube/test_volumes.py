"""Growing volumes through the running operator, on a real kube-apiserver with kube-controller-manager.

The StatefulSet controller creates the claims (``data-orders-redis-<i>``); no provisioner exists, so
each claim is bound to a PersistentVolume made here with a ``claimRef`` (the PV controller of
kube-controller-manager binds them): the API server lets only bound claims grow. Then a larger
``persistence.storage.size`` must reach every claim and the StatefulSet's claim template (the
StatefulSet re-created, its pods kept: same uids), a smaller one is refused by the CRD, and a class
without ``allowVolumeExpansion`` changes nothing and says why (Condition + Warning Event).
``persistentVolumeClaimRetentionPolicy`` is honoured by the StatefulSet controller.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from kubernetes.client.exceptions import ApiException

os.environ.setdefault("REDIS_MESSAGING_RESYNC_SECONDS", "1")

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def storage(kube_api: client.ApiClient) -> Iterator[Callable[..., str]]:
    """Make StorageClasses (and PersistentVolumes) that are removed after the test."""
    storage_api = client.StorageV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    classes: list[str] = []
    volumes: list[str] = []

    def make_class(prefix: str, *, expandable: bool, default: bool = False) -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        annotations = {DEFAULT_CLASS: "true"} if default else {}
        storage_api.create_storage_class(client.V1StorageClass(
            metadata=client.V1ObjectMeta(name=name, annotations=annotations),
            provisioner="example.com/no-provisioner", allow_volume_expansion=expandable,
            volume_binding_mode="Immediate", reclaim_policy="Retain"))
        classes.append(name)
        return name

    make_class.volumes = volumes  # type: ignore[attr-defined]
    try:
        yield make_class
    finally:
        for name in classes:
            storage_api.delete_storage_class(name)
        for name in volumes:
            try:
                core.delete_persistent_volume(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def bind(api: Api, namespace: str, pvc: str, size: str, storage_class: str, volumes: list[str]) -> None:
    """Play the provisioner: a PersistentVolume reserved for ``pvc`` (the PV controller binds them)."""
    name = f"pv-{secrets.token_hex(4)}-{pvc}"
    api.core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": size}, access_modes=["ReadWriteOnce"], storage_class_name=storage_class,
            persistent_volume_reclaim_policy="Retain", host_path=client.V1HostPathVolumeSource(path=f"/tmp/{name}"),
            claim_ref=client.V1ObjectReference(namespace=namespace, name=pvc, kind="PersistentVolumeClaim",
                                               api_version="v1"))))
    volumes.append(name)


def claims(api: Api, namespace: str) -> dict[str, Any]:
    return {p.metadata.name: p for p in api.core.list_namespaced_persistent_volume_claim(namespace).items}


def claim_size(pvc: Any) -> str:
    return str(pvc.spec.resources.requests["storage"])


def template_size(api: Api, namespace: str) -> str:
    sts = api.apps.read_namespaced_stateful_set("orders-redis", namespace)
    return str(sts.spec.volume_claim_templates[0].spec.resources.requests["storage"])


def bound_cluster(api: Api, namespace: str, storage: Any, spec: dict[str, Any], storage_class: str) -> dict[str, Any]:
    """A resource whose two redis claims exist and are Bound; returns the claims."""
    api.create(namespace, rmsg("orders", spec))
    wanted = {"data-orders-redis-0", "data-orders-redis-1"}
    found = eventually(lambda: (c := claims(api, namespace)) and set(c) >= wanted and c, timeout=30,
                       what="claims made by the StatefulSet controller")
    for name in sorted(wanted):
        assert found[name].spec.storage_class_name == storage_class  # the default class is filled in too
        bind(api, namespace, name, claim_size(found[name]), storage_class, storage.volumes)
    return eventually(lambda: (c := claims(api, namespace))
                      and all(c[n].status.phase == "Bound" for n in wanted) and c, timeout=60,
                      what="claims Bound by the PV controller")


def spec_with(size: str, storage_class: str | None = None, **extra: Any) -> dict[str, Any]:
    storage: dict[str, Any] = {"size": size}
    if storage_class is not None:
        storage["storageClassName"] = storage_class
    return {"redis": {"replicas": 2}, "sentinel": {"replicas": 1, "quorum": 1},
            "persistence": {"storage": storage, "retentionPolicy": {"whenDeleted": "Delete",
                                                                    "whenScaled": "Delete"}}, **extra}


def refusal(exc: ApiException) -> str:
    return str(json.loads(exc.body or "{}").get("message", exc.body))


@pytest.mark.parametrize("named", [True, False], ids=["named class", "default class"])
def test_larger_size_grows_claims_and_recreates_the_statefulset(
        api: Api, namespace: str, operator_kubeconfig: Any, needs_controllers: None, storage: Any,
        named: bool) -> None:
    storage_class = storage("grow", expandable=True, default=not named)
    with operator_running(namespace):
        bound_cluster(api, namespace, storage, spec_with("1Gi", storage_class if named else None), storage_class)
        before_sts = api.apps.read_namespaced_stateful_set("orders-redis", namespace)
        pods_before = {p.metadata.name: p.metadata.uid for p in api.core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=redis").items}
        assert set(pods_before) == {"orders-redis-0", "orders-redis-1"}

        api.patch(namespace, "orders", {"spec": {"persistence": {"storage": {"size": "2Gi"}}}})

        eventually(lambda: all(claim_size(claims(api, namespace)[n]) == "2Gi"
                               for n in ("data-orders-redis-0", "data-orders-redis-1")),
                   timeout=30, what="claims patched to 2Gi")
        eventually(lambda: template_size(api, namespace) == "2Gi", timeout=60,
                   what="StatefulSet re-created with a 2Gi claim template")
        after_sts = api.apps.read_namespaced_stateful_set("orders-redis", namespace)
        assert after_sts.metadata.uid != before_sts.metadata.uid
        # Orphaned, not deleted: the same pods, adopted by the new StatefulSet.
        pods_after = eventually(lambda: (p := {x.metadata.name: x for x in api.core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=redis").items})
            and all(any(r.uid == after_sts.metadata.uid for r in x.metadata.owner_references or [])
                    for x in p.values()) and p, timeout=30, what="pods adopted by the new StatefulSet")
        assert {n: p.metadata.uid for n, p in pods_after.items()} == pods_before
        assert set(claims(api, namespace)) >= {"data-orders-redis-0", "data-orders-redis-1"}
        cond = eventually(lambda: (c := api.condition(namespace, "orders", "VolumesExpanded"))
                          and c["status"] == "True" and c, timeout=30, what="VolumesExpanded=True")
        assert cond["reason"] == "AsDeclared"
        messages = [e.message for e in api.events(namespace, "orders")]
        assert any("Expanded PersistentVolumeClaim data-orders-redis-0 from 1Gi to 2Gi" in m for m in messages)
        assert any("Recreating StatefulSet orders-redis" in m for m in messages)
        assert (api.condition(namespace, "orders", "Ready") or {}).get("reason") != "InvalidSpec"

        # Shrinking is refused by the CRD itself.
        with pytest.raises(ApiException) as refused:
            api.patch(namespace, "orders", {"spec": {"persistence": {"storage": {"size": "1Gi"}}}})
        assert "may grow but never shrink" in refusal(refused.value)


def test_class_without_expansion_changes_nothing_and_says_why(
        api: Api, namespace: str, operator_kubeconfig: Any, needs_controllers: None, storage: Any) -> None:
    fixed = storage("fixed", expandable=False)
    with operator_running(namespace):
        bound_cluster(api, namespace, storage, spec_with("1Gi", fixed), fixed)
        uid = api.apps.read_namespaced_stateful_set("orders-redis", namespace).metadata.uid
        api.patch(namespace, "orders", {"spec": {"persistence": {"storage": {"size": "5Gi"}}}})
        cond = eventually(lambda: (c := api.condition(namespace, "orders", "VolumesExpanded"))
                          and c["status"] == "False" and c, timeout=30, what="VolumesExpanded=False")
        assert cond["reason"] == "VolumeExpansionNotAllowed"
        assert f"StorageClass {fixed} does not allow volume expansion" in cond["message"]
        eventually(lambda: any(e.reason == "VolumeExpansionNotAllowed" and e.type == "Warning"
                               for e in api.events(namespace, "orders")), what="Warning event")
        # Several passes later nothing changed, and the resource was not declared invalid.
        generation = api.get(namespace, "orders")["metadata"]["generation"]
        eventually(lambda: api.get(namespace, "orders")["status"]["observedGeneration"] == generation,
                   what="pass over the new generation")
        found = claims(api, namespace)
        assert {claim_size(found[n]) for n in ("data-orders-redis-0", "data-orders-redis-1")} == {"1Gi"}
        sts = api.apps.read_namespaced_stateful_set("orders-redis", namespace)
        assert sts.metadata.uid == uid
        assert template_size(api, namespace) == "1Gi"
        assert (api.condition(namespace, "orders", "Ready") or {}).get("reason") != "InvalidSpec"


def test_claim_retention_policy_is_honoured(api: Api, namespace: str, operator_kubeconfig: Any,
                                            needs_controllers: None) -> None:
    spec = {"redis": {"replicas": 3}, "sentinel": {"replicas": 1, "quorum": 1},
            "persistence": {"storage": {"size": "1Gi"}, "retentionPolicy": {"whenDeleted": "Retain",
                                                                            "whenScaled": "Delete"}}}
    with operator_running(namespace):
        api.create(namespace, rmsg("orders", spec))
        eventually(lambda: set(claims(api, namespace)) >= {f"data-orders-redis-{i}" for i in range(3)},
                   timeout=30, what="three claims")
        sts = api.apps.read_namespaced_stateful_set("orders-redis", namespace)
        policy = sts.spec.persistent_volume_claim_retention_policy
        assert (policy.when_deleted, policy.when_scaled) == ("Retain", "Delete")
        # whenScaled: Delete -> scaling in removes the claim of the removed ordinal.
        api.patch(namespace, "orders", {"spec": {"redis": {"replicas": 2}}})
        eventually(lambda: "data-orders-redis-2" not in claims(api, namespace), timeout=60,
                   what="claim of the removed ordinal deleted")
        assert {"data-orders-redis-0", "data-orders-redis-1"} <= set(claims(api, namespace))
        # whenDeleted: Retain -> deleting the resource (and so its StatefulSet) keeps the claims.
        api.delete(namespace, "orders")
        eventually(lambda: not api.apps.list_namespaced_stateful_set(namespace).items, timeout=60,
                   what="StatefulSets garbage-collected")
        assert {"data-orders-redis-0", "data-orders-redis-1"} <= set(claims(api, namespace))


def test_quantities_compare_like_the_api_server() -> None:
    from redis_messaging.reconcile.volumes import parse_quantity

    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("1024Mi") == parse_quantity("1Gi")
    assert parse_quantity("1G") < parse_quantity("1Gi")
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity("2e9") == parse_quantity("2G")
    assert parse_quantity("500m") * 2 == 1
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("lots")

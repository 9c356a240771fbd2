"""Every pod the operator's builders render is admitted by a namespace that enforces the `restricted`
Pod Security Standard, on a real kube-apiserver (whose PodSecurity admission plugin is enabled by
default since 1.25; the kube tier disables only the ServiceAccount plugin).

Pods are made from the StatefulSets' templates exactly as the StatefulSet controller makes them
(template metadata and spec, one PersistentVolumeClaim volume per claim template), and, when
kube-controller-manager runs, the StatefulSets themselves are created and their controller's pods
must appear. A template with ``privileged: true`` is the negative control: it must be refused, or
the test would prove nothing.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from controlplane import ControlPlane
from helpers import eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from redis_messaging.api import models
from redis_messaging.builders import UnsupportedSpec
from redis_messaging.builders.names import Owner
from redis_messaging.modes import build

Obj = dict[str, Any]

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}

SPECS: dict[str, Obj] = {
    "defaults (auth, exporter, aof on a PVC)": {},
    "no persistence (emptyDir data), no auth": {"persistence": {"mode": "none"}, "auth": {"enabled": False}},
    "named secret, ACL users, both persistence modes": {
        "auth": {"secretName": "orders-password",
                 "users": [{"name": "billing", "secretName": "billing-password", "rules": "~orders* +@stream"}]},
        "persistence": {"mode": "both", "storage": {"size": "1Gi", "storageClassName": "fast"}},
        "pod": {"labels": {"team": "shop"}, "annotations": {"note": "x"}},
    },
    "cluster mode": {"mode": "cluster"},
}


def _workloads(spec: Obj, namespace: str) -> list[Obj]:
    """The StatefulSets (and any other pod-owning workload) built for ``spec``; [] when the mode
    is not built by this version of the operator."""
    owner = Owner(name="orders", namespace=namespace, uid="")
    try:
        objs = build(models.parse_spec(spec), owner, password="not-used-by-templates")
    except UnsupportedSpec:
        return []
    out = []
    for obj in objs:
        if obj["kind"] in ("StatefulSet", "Deployment"):
            obj = copy.deepcopy(obj)
            obj["metadata"].pop("ownerReferences", None)  # the owner does not exist in this namespace
            out.append(obj)
    return out


def pod_from_template(workload: Obj, ordinal: int = 0) -> Obj:
    """The pod the StatefulSet controller would create for ``ordinal``."""
    template = copy.deepcopy(workload["spec"]["template"])
    name = f"{workload['metadata']['name']}-{ordinal}"
    spec = template["spec"]
    for claim in workload["spec"].get("volumeClaimTemplates") or []:
        claim_name = claim["metadata"]["name"]
        spec.setdefault("volumes", []).append(
            {"name": claim_name, "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}"}})
    spec["hostname"] = name
    spec["subdomain"] = workload["spec"].get("serviceName")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": name}, "spec": spec}


def _restrict(core: client.CoreV1Api, namespace: str) -> None:
    core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    labels = core.read_namespace(namespace).metadata.labels
    assert {k: labels.get(k) for k in RESTRICTED} == RESTRICTED


def _refusal(exc: ApiException) -> str:
    return str(json.loads(exc.body or "{}").get("message", exc.body))


@pytest.fixture
def core(kube_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


def _every_pod() -> list[tuple[str, str]]:
    out = []
    for title, spec in SPECS.items():
        for workload in _workloads(spec, "x"):
            out.append((title, workload["metadata"]["name"]))
    return out


def test_every_mode_renders_pods() -> None:
    # The parametrisation below must not be empty for the modes this version builds.
    built = {title for title, _ in _every_pod()}
    assert "defaults (auth, exporter, aof on a PVC)" in built
    assert {w for _, w in _every_pod()} >= {"orders-redis", "orders-sentinel"}


@pytest.mark.parametrize(("title", "workload_name"), _every_pod())
def test_rendered_pod_is_admitted_under_restricted(core: client.CoreV1Api, namespace: str, title: str,
                                                   workload_name: str) -> None:
    _restrict(core, namespace)
    workload = next(w for w in _workloads(SPECS[title], namespace) if w["metadata"]["name"] == workload_name)
    pod = pod_from_template(workload)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    if workload_name.endswith("-redis") and models.parse_spec(SPECS[title]).monitoring.exporter.enabled:
        assert "exporter" in containers  # the sidecar is part of what is admitted
    try:
        created = core.create_namespaced_pod(namespace, pod)
    except ApiException as exc:
        pytest.fail(f"{title}: pod of {workload_name} refused under restricted: {_refusal(exc)}")
    assert created.metadata.name == pod["metadata"]["name"]
    assert [c.name for c in created.spec.containers] == containers


def test_privileged_template_is_refused(core: client.CoreV1Api, namespace: str) -> None:
    """The negative control: the same pod with one privileged container must not be admitted."""
    _restrict(core, namespace)
    workload = next(w for w in _workloads({}, namespace) if w["metadata"]["name"] == "orders-redis")
    pod = pod_from_template(workload)
    pod["metadata"]["name"] = "privileged-control"
    context = pod["spec"]["containers"][0]["securityContext"]
    context["privileged"] = True
    del context["allowPrivilegeEscalation"]  # false together with privileged is invalid (422), not refused
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, pod)
    assert refused.value.status == 403
    message = _refusal(refused.value)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message
    # The unmodified pod is admitted in the same namespace: the refusal came from the one change.
    core.create_namespaced_pod(namespace, pod_from_template(workload))


def test_statefulset_controller_creates_the_pods(core: client.CoreV1Api, kube_api: client.ApiClient,
                                                 namespace: str, control_plane: ControlPlane) -> None:
    """Through the real path: StatefulSets applied in the restricted namespace get all their pods."""
    if not control_plane.has_controller_manager:
        pytest.skip("needs kube-controller-manager (StatefulSet controller) from .ci/control-plane.sh")
    _restrict(core, namespace)
    apps = client.AppsV1Api(kube_api)
    workloads = _workloads({"redis": {"replicas": 2}, "sentinel": {"replicas": 2, "quorum": 1}}, namespace)
    for workload in workloads:
        apps.create_namespaced_stateful_set(namespace, workload)
    expected = {f"{w['metadata']['name']}-{i}" for w in workloads for i in range(w["spec"]["replicas"])}

    def pods() -> set[str] | None:
        found = {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
        return found if found >= expected else None

    try:
        eventually(pods, timeout=30, what="pods of the StatefulSets")
    except AssertionError:
        failed = [e.message for e in core.list_namespaced_event(namespace).items if e.reason == "FailedCreate"]
        raise AssertionError(f"StatefulSet pods not created; FailedCreate events: {failed}") from None
    assert not [e for e in core.list_namespaced_event(namespace).items
                if e.reason == "FailedCreate" and "PodSecurity" in (e.message or "")]

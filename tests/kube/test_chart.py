"""The Helm chart against a real kube-apiserver: install, upgrade and uninstall are accepted.

No kubelet runs here, so the operator's pod never starts; with kube-controller-manager running, the
Deployment still gets its pod object, which PodSecurity admission checks against the "restricted"
standard enforced on the namespace. Whether the operator works under the chart's RBAC is
test_rbac.py's business.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from helpers import eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ship"))
from helm_cli import CHART, Helm, locate_helm, missing_helm_reason

CRD_NAME = "redismessagings.redis-messaging.dev"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


@pytest.fixture(scope="module")
def helm() -> Helm:
    binary = locate_helm()
    if binary is None:
        pytest.skip(missing_helm_reason())
    return Helm(binary)


def release_name() -> str:
    return f"rmo-{secrets.token_hex(3)}"


def exists(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_chart_installs_upgrades_and_uninstalls(helm: Helm, control_plane: ControlPlane, kube_api: client.ApiClient,
                                                namespace: str) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    rbac, ext = client.RbacAuthorizationV1Api(kube_api), client.ApiextensionsV1Api(kube_api)
    core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    release = release_name()
    fullname = f"{release}-redis-messaging-operator"
    kubeconfig = control_plane.admin_kubeconfig

    # install
    installed = helm.run("install", release, str(CHART), "--namespace", namespace, kubeconfig=kubeconfig)
    assert "kubectl apply -f examples/sentinel.yaml" in installed.stdout, installed.stdout
    assert "kubectl get rmsg" in installed.stdout
    assert "violate PodSecurity" not in installed.stderr, installed.stderr
    crd = ext.read_custom_resource_definition(CRD_NAME)
    eventually(lambda: any(c.type == "Established" and c.status == "True"
                           for c in ext.read_custom_resource_definition(CRD_NAME).status.conditions or []),
               what="CRD Established")
    assert crd.spec.names.short_names == ["rmsg"]
    deployment = apps.read_namespaced_deployment(fullname, namespace)
    assert deployment.spec.strategy.type == "Recreate"
    assert deployment.spec.template.spec.service_account_name == fullname
    assert exists(core.read_namespaced_service_account, fullname, namespace)
    assert exists(core.read_namespaced_service, f"{fullname}-metrics", namespace)
    assert exists(rbac.read_cluster_role, fullname)
    binding = rbac.read_cluster_role_binding(fullname)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", fullname, namespace)]
    if control_plane.has_controller_manager:
        # The ReplicaSet controller creates the pod; PodSecurity "restricted" admits it.
        selector = f"app.kubernetes.io/instance={release}"
        pod = eventually(lambda: (pods := core.list_namespaced_pod(namespace, label_selector=selector).items)
                         and pods[0], timeout=30, what="operator pod admitted under restricted PodSecurity")
        assert pod.spec.containers[0].security_context.read_only_root_filesystem is True

    # upgrade: to namespace-scoped RBAC watching this namespace only
    upgraded = helm.run("upgrade", release, str(CHART), "--namespace", namespace, "--set", "rbac.scope=namespaces",
                        "--set", f"watchNamespaces={{{namespace}}}", "--set", "operator.resyncSeconds=10",
                        kubeconfig=kubeconfig)
    assert "REVISION: 2" in upgraded.stdout, upgraded.stdout
    env = {e.name: e.value for e in apps.read_namespaced_deployment(fullname, namespace)
           .spec.template.spec.containers[0].env}
    assert env["REDIS_MESSAGING_NAMESPACES"] == f'["{namespace}"]'
    assert env["REDIS_MESSAGING_RESYNC_SECONDS"] == "10"
    assert not exists(rbac.read_cluster_role, fullname), "the cluster-wide role is gone"
    assert exists(rbac.read_cluster_role, f"{fullname}-cluster-reads")
    assert exists(rbac.read_namespaced_role, fullname, namespace)
    assert exists(rbac.read_namespaced_role_binding, fullname, namespace)

    # uninstall: every object of the release goes, the CRD (and so users' resources) stays
    helm.run("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s", kubeconfig=kubeconfig)
    assert not exists(apps.read_namespaced_deployment, fullname, namespace)
    assert not exists(core.read_namespaced_service_account, fullname, namespace)
    assert not exists(rbac.read_namespaced_role, fullname, namespace)
    assert not exists(rbac.read_cluster_role, f"{fullname}-cluster-reads")
    assert not exists(rbac.read_cluster_role_binding, f"{fullname}-cluster-reads")
    assert exists(ext.read_custom_resource_definition, CRD_NAME)
    listed = helm.run("list", "--namespace", namespace, "--short", kubeconfig=kubeconfig)
    assert release not in listed.stdout


def test_misspelled_value_fails_the_install_and_creates_nothing(helm: Helm, control_plane: ControlPlane,
                                                                  kube_api: client.ApiClient, namespace: str) -> None:
    release = release_name()
    result = helm.run("install", release, str(CHART), "--namespace", namespace, "--set", "replicaCont=2",
                      kubeconfig=control_plane.admin_kubeconfig, check=False)
    assert result.returncode != 0
    assert "additional properties 'replicaCont' not allowed" in result.stderr, result.stderr
    apps = client.AppsV1Api(kube_api)
    assert apps.list_namespaced_deployment(namespace).items == []
    assert not exists(client.RbacAuthorizationV1Api(kube_api).read_cluster_role, f"{release}-redis-messaging-operator")


def test_namespace_scoped_install_grants_nothing_cluster_wide_but_reads(
        helm: Helm, control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str) -> None:
    release = release_name()
    fullname = f"{release}-redis-messaging-operator"
    helm.run("install", release, str(CHART), "--namespace", namespace, "--set", "rbac.scope=namespaces",
             "--set", f"watchNamespaces={{{namespace}}}", kubeconfig=control_plane.admin_kubeconfig)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    try:
        cluster_rules = rbac.read_cluster_role(f"{fullname}-cluster-reads").rules
        assert {tuple(r.resources) for r in cluster_rules} == {("customresourcedefinitions",), ("namespaces",),
                                                               ("storageclasses",)}
        # Kopf's reads list and watch; volume expansion reads StorageClasses
        assert all(set(r.verbs) == ({"get", "list"} if r.resources == ["storageclasses"] else {"list", "watch"})
                   for r in cluster_rules)
        # What the ServiceAccount may do, as the API server's authorizer says.
        user = f"system:serviceaccount:{namespace}:{fullname}"
        review = client.AuthorizationV1Api(kube_api)

        def allowed(verb: str, resource: str, group: str = "", ns: str | None = namespace) -> bool:
            attributes = client.V1ResourceAttributes(verb=verb, resource=resource, group=group, namespace=ns)
            body = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                user=user, groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                resource_attributes=attributes))
            return bool(review.create_subject_access_review(body).status.allowed)

        assert allowed("patch", "statefulsets", "apps")
        assert allowed("watch", "redismessagings", "redis-messaging.dev")
        assert not allowed("patch", "statefulsets", "apps", ns="kube-system")
        assert not allowed("get", "secrets", ns="kube-system")
        assert not allowed("list", "redismessagings", "redis-messaging.dev", ns=None)
    finally:
        helm.run("uninstall", release, "--namespace", namespace, kubeconfig=control_plane.admin_kubeconfig)


def test_restricted_pod_security_check_is_not_vacuous(helm: Helm, control_plane: ControlPlane,
                                                      kube_api: client.ApiClient, namespace: str) -> None:
    """The same install with privilege escalation allowed is flagged: PodSecurity really checks the chart."""
    client.CoreV1Api(kube_api).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    release = release_name()
    result = helm.run("install", release, str(CHART), "--namespace", namespace,
                      "--set", "securityContext.allowPrivilegeEscalation=true",
                      kubeconfig=control_plane.admin_kubeconfig)
    try:
        assert "violate PodSecurity" in result.stderr, result.stderr
        assert "allowPrivilegeEscalation" in result.stderr
    finally:
        helm.run("uninstall", release, "--namespace", namespace, kubeconfig=control_plane.admin_kubeconfig)

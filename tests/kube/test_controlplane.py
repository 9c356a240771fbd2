"""The control-plane harness itself: version, storage, audit log, identities, RBAC."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from controlplane import (
    ADMIN_USER,
    DEFAULT_ETCD_VERSION,
    DEFAULT_K8S_VERSION,
    OPERATOR_USER,
    ControlPlane,
    default_assets_dir,
    expected_k8s_version,
    iter_event_summaries,
)
from kubernetes import client, config

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "control-plane.sh"


def test_default_versions_match_the_build_script() -> None:
    script = SCRIPT.read_text()
    assert f'K8S_VERSION="${{K8S_VERSION:-{DEFAULT_K8S_VERSION}}}"' in script
    assert f'ETCD_VERSION="${{ETCD_VERSION:-{DEFAULT_ETCD_VERSION}}}"' in script


def test_version(control_plane: ControlPlane) -> None:
    result = control_plane.request("GET", "/version")
    assert result.status == 200, result.text
    git_version = result.json()["gitVersion"]
    if control_plane.assets_dir == default_assets_dir() and not os.environ.get("KUBEBUILDER_ASSETS"):
        # Built by .ci/control-plane.sh, which stamps the version into the binary.
        assert git_version == expected_k8s_version()
    else:
        assert re.match(r"v1\.\d+\.\d+", git_version), git_version


def test_configmap_round_trip_is_audited(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    since = time.time()
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="probe"), data={"key": "value"}),
    )

    assert core.read_namespaced_config_map("probe", namespace).data == {"key": "value"}

    creates = control_plane.wait_for_audit_events(
        since, ADMIN_USER, namespace, {"create"}, resource="configmaps"
    )
    assert [e["objectRef"]["name"] for e in creates] == ["probe"], list(iter_event_summaries(creates))
    assert creates[0]["responseStatus"]["code"] == 201
    assert control_plane.operator_writes(since) == []


def test_operator_identity_and_kubeconfig(
    control_plane: ControlPlane, operator_kubeconfig: Path, namespace: str
) -> None:
    assert os.environ["KUBECONFIG"] == str(operator_kubeconfig)
    since = time.time()
    new_client: Callable[..., client.ApiClient] = config.new_client_from_config
    # No path: the client's default, i.e. KUBECONFIG.
    with contextlib.closing(new_client(persist_config=False)) as api:
        client.CoreV1Api(api).create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="by-operator"))
        )

    writes = control_plane.wait_for_audit_events(since, OPERATOR_USER, namespace, {"create"})
    assert [(e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"]) for e in writes] == [
        ("create", "configmaps", "by-operator")
    ]
    assert control_plane.operator_writes(since, namespace) == writes


def test_rbac_denies_an_unbound_service_account(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str
) -> None:
    client.CoreV1Api(kube_api).create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = control_plane.token_for_service_account(namespace, "nobody")

    result = control_plane.request("GET", f"/api/v1/namespaces/{namespace}/pods", token=token)

    assert result.status == 403, result.text
    assert f"system:serviceaccount:{namespace}:nobody" in result.json()["message"]


def test_bad_token_is_unauthenticated(control_plane: ControlPlane) -> None:
    assert control_plane.request("GET", "/api/v1/namespaces", token="not-a-token").status == 401


@pytest.mark.parametrize("identity", [ADMIN_USER, OPERATOR_USER])
def test_both_identities_are_cluster_admins(control_plane: ControlPlane, identity: str) -> None:
    token = control_plane.admin_token if identity == ADMIN_USER else control_plane.operator_token
    result = control_plane.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        token=token,
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert result.status == 201, result.text
    user_info = result.json()["status"]["userInfo"]
    assert user_info["username"] == identity
    assert "system:masters" in user_info["groups"]

"""spec.tls through the running operator on a real kube-apiserver: nothing is built until the TLS
Secret is there (a Condition and a Warning Event say what is missing), then every workload mounts it
and the connection Secret carries the CA; with ``issuerRef`` the operator refuses to run without
cert-manager, and with cert-manager's Certificate CRD served it applies the Certificate first and
waits for the Secret cert-manager fills."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tls_certs import Authority, KeyPair, authority

os.environ.setdefault("REDIS_MESSAGING_RESYNC_SECONDS", "1")

CERT_MANAGER = "cert-manager.io"


@pytest.fixture(scope="session")
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return authority(tmp_path_factory.mktemp("ca")).issue("secure")


def tls_secret(name: str, pair: KeyPair, *, drop: str | None = None) -> client.V1Secret:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in pair.files().items() if k != drop}
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name), type="kubernetes.io/tls", data=data)


def ready(api: Api, namespace: str, name: str) -> dict[str, Any]:
    return eventually(lambda: (c := api.condition(namespace, name, "Ready")) and c, what="Ready condition")


def reason_becomes(api: Api, namespace: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    return eventually(lambda: (c := api.condition(namespace, name, "Ready")) and c["reason"] == reason and c,
                      timeout=timeout, what=f"Ready reason {reason}")


def warned(api: Api, namespace: str, name: str, reason: str) -> None:
    eventually(lambda: any(e.reason == reason and e.type == "Warning" for e in api.events(namespace, name)),
               what=f"Warning event {reason}")


def test_workloads_wait_for_the_tls_secret_then_mount_it(api: Api, namespace: str, operator_kubeconfig: Any,
                                                         pair: KeyPair) -> None:
    with operator_running(namespace):
        api.create(namespace, rmsg("secure", {"tls": {"enabled": True, "secretName": "secure-tls"}}))
        cond = reason_becomes(api, namespace, "secure", "TLSSecretMissing")
        assert cond["status"] == "False"
        assert "Secret secure-tls" in cond["message"]
        warned(api, namespace, "secure", "TLSSecretMissing")
        assert not api.apps.list_namespaced_stateful_set(namespace).items, "nothing runs without its TLS Secret"

        # A Secret without the CA: refused with what is missing.
        api.core.create_namespaced_secret(namespace, tls_secret("secure-tls", pair, drop="ca.crt"))
        cond = reason_becomes(api, namespace, "secure", "TLSSecretInvalid")
        assert "no ca.crt" in cond["message"]
        assert not api.apps.list_namespaced_stateful_set(namespace).items

        api.core.replace_namespaced_secret("secure-tls", namespace, tls_secret("secure-tls", pair))
        sets = eventually(lambda: {s.metadata.name: s for s in api.apps.list_namespaced_stateful_set(namespace).items}
                          if len(api.apps.list_namespaced_stateful_set(namespace).items) == 2 else None,
                          timeout=30, what="both StatefulSets")
        for sts in sets.values():
            pod = sts.spec.template.spec
            volumes = {v.name: v for v in pod.volumes}
            assert volumes["tls"].secret.secret_name == "secure-tls"
            for c in pod.containers:  # redis/sentinel and the exporter all mount it and speak TLS
                assert "/etc/redis-messaging-tls" in {m.mount_path for m in c.volume_mounts or []}, c.name
            env = {e.name: e.value for e in pod.containers[0].env}
            assert env["RMSG_TLS"] == "yes"
            exporter = {e.name: e.value for e in pod.containers[1].env}
            assert exporter["REDIS_ADDR"].startswith("rediss://$(POD_NAME).")
        revision = sets["secure-sentinel"].spec.template.metadata.annotations["redis-messaging.dev/tls-revision"]
        config = api.core.read_namespaced_config_map("secure-config", namespace).data
        assert "tls-port 6379" in config["redis.conf"]
        assert "port 0" in config["redis.conf"].splitlines()
        assert "tls-port 26379" in config["sentinel.conf"]
        connection = api.core.read_namespaced_secret("secure-connection", namespace).data
        assert base64.b64decode(connection["ca.crt"]).decode() == pair.ca.read_text()
        assert base64.b64decode(connection["url"]).decode().startswith("rediss://")
        assert "BEGIN" not in str(config), "no certificate or key in the ConfigMap"

        # A renewed certificate: the Sentinels' template carries the new revision (they roll).
        renewed = Authority(pair.ca.parent).issue("secure-renewed")
        api.core.replace_namespaced_secret("secure-tls", namespace, tls_secret("secure-tls", renewed))
        eventually(lambda: api.apps.read_namespaced_stateful_set("secure-sentinel", namespace)
                   .spec.template.metadata.annotations["redis-messaging.dev/tls-revision"] != revision,
                   timeout=30, what="the Sentinel template follows the renewal")


def _certificate_crd() -> dict[str, Any]:
    """A stand-in for cert-manager's Certificate CRD: same group, version and names, open schema."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"certificates.{CERT_MANAGER}"},
        "spec": {
            "group": CERT_MANAGER,
            "scope": "Namespaced",
            "names": {"kind": "Certificate", "plural": "certificates", "singular": "certificate",
                      "listKind": "CertificateList"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


@pytest.fixture
def certificate_crd(kube_api: client.ApiClient) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(kube_api)

    def served() -> bool:
        try:
            found = Api(kube_api).raw("GET", f"/apis/{CERT_MANAGER}/v1")
        except (ApiException, AssertionError):
            return False
        return "Certificate" in {r["kind"] for r in found["resources"]}

    ext.create_custom_resource_definition(_certificate_crd())
    eventually(served, what="cert-manager.io/v1 served")
    try:
        yield
    finally:
        try:
            ext.delete_custom_resource_definition(f"certificates.{CERT_MANAGER}")
        except ApiException as exc:
            if exc.status != 404:
                raise
        eventually(lambda: not served(), timeout=60, what="Certificate CRD removed")


def test_issuer_ref_without_cert_manager_is_refused(api: Api, namespace: str, operator_kubeconfig: Any) -> None:
    with operator_running(namespace):
        api.create(namespace, rmsg("issued", {"tls": {"enabled": True, "issuerRef": {"name": "ca-issuer"}}}))
        cond = reason_becomes(api, namespace, "issued", "CertManagerMissing")
        assert "install cert-manager" in cond["message"]
        warned(api, namespace, "issued", "CertManagerMissing")
        assert not api.apps.list_namespaced_stateful_set(namespace).items


def test_issuer_ref_applies_the_certificate_and_waits_for_its_secret(
        api: Api, namespace: str, operator_kubeconfig: Any, certificate_crd: None, pair: KeyPair) -> None:
    with operator_running(namespace):
        api.create(namespace, rmsg("issued", {"mode": "cluster", "tls": {
            "enabled": True, "issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}}}))
        cond = reason_becomes(api, namespace, "issued", "TLSSecretMissing")
        assert "waiting for cert-manager" in cond["message"]
        (cert,) = api.custom.list_namespaced_custom_object(CERT_MANAGER, "v1", namespace, "certificates")["items"]
        assert cert["metadata"]["name"] == "issued-tls"
        assert cert["metadata"]["ownerReferences"][0]["kind"] == "RedisMessaging"
        spec = cert["spec"]
        assert spec["secretName"] == "issued-tls"
        assert spec["issuerRef"] == {"name": "ca-issuer", "kind": "ClusterIssuer", "group": CERT_MANAGER}
        assert f"*.issued-redis-headless.{namespace}.svc.cluster.local" in spec["dnsNames"]
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert not api.apps.list_namespaced_stateful_set(namespace).items

        # cert-manager issues the Secret: the shards come up mounting it
        api.core.create_namespaced_secret(namespace, tls_secret("issued-tls", pair))
        eventually(lambda: len(api.apps.list_namespaced_stateful_set(namespace).items) == 3, timeout=30,
                   what="three shard StatefulSets")
        conf = api.core.read_namespaced_config_map("issued-config", namespace).data["redis.conf"]
        assert "tls-cluster yes" in conf.splitlines()
        eventually(lambda: ready(api, namespace, "issued")["reason"] == "WaitingForPods", timeout=30,
                   what="waiting for its pods, no longer for TLS")

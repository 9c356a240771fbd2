"""spec.tls in the builders: TLS-only configuration, the Secret mounted by every container that talks
to Redis, the exporter verifying by name, the cert-manager Certificate, the CA for applications."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from redis_messaging.api import models
from redis_messaging.builders import names, tls
from redis_messaging.builders.names import Owner
from redis_messaging.modes import build

OWNER = Owner(name="secure", namespace="shop", uid="u1")
FACTS = tls.Facts(ca="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n", revision="r1")


def spec(mode: str = "sentinel", **tls_spec: Any) -> models.RedisMessagingSpec:
    return models.parse_spec({"mode": mode, "tls": {"enabled": True, **tls_spec} if tls_spec else {}})


def objects(s: models.RedisMessagingSpec, facts: tls.Facts | None = FACTS) -> dict[tuple[str, str], Any]:
    return {(o["kind"], o["metadata"]["name"]): o for o in build(s, OWNER, password="pw", tls_facts=facts)}


def pod_specs(found: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return {name: o["spec"]["template"]["spec"] for (kind, name), o in found.items() if kind == "StatefulSet"}


def test_without_tls_nothing_changes() -> None:
    found = objects(spec(), None)
    conf = found[("ConfigMap", "secure-config")]["data"]
    assert "port 6379" in conf["redis.conf"].splitlines()
    assert "tls-port" not in conf["redis.conf"] + conf["sentinel.conf"]
    for pod in pod_specs(found).values():
        assert "tls" not in {v["name"] for v in pod["volumes"]}
    assert "ca.crt" not in found[("Secret", "secure-connection")]["data"]
    assert not any(kind == "Certificate" for kind, _ in found)


@pytest.mark.parametrize("mode", ["sentinel", "cluster"])
def test_tls_only_every_link(mode: str) -> None:
    found = objects(spec(mode, secretName="own-tls"))
    conf = found[("ConfigMap", "secure-config")]["data"]
    redis_conf = conf["redis.conf"].splitlines()
    assert {"port 0", "tls-port 6379", "tls-replication yes", "tls-auth-clients optional"} <= set(redis_conf)
    assert ("tls-cluster yes" in redis_conf) == (mode == "cluster")
    if mode == "sentinel":
        assert {"port 0", "tls-port 26379", "tls-replication yes"} <= set(conf["sentinel.conf"].splitlines())
    # the file paths are the mount's, added at start-up; no certificate material in the ConfigMap
    assert "tls-cert-file" not in conf["redis.conf"]
    assert 'tls-cert-file %s' in conf["common.sh"]
    assert "BEGIN" not in str(conf)
    for name, pod in pod_specs(found).items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "own-tls", name
        assert volumes["tls"]["secret"]["defaultMode"] == 0o400
        assert [i["key"] for i in volumes["tls"]["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
        main, exporter = pod["containers"]
        assert {"name": "RMSG_TLS", "value": "yes"} in main["env"]
        assert {"name": "tls", "mountPath": names.TLS_MOUNT, "readOnly": True} in main["volumeMounts"]
        env = {e["name"]: e.get("value") for e in exporter["env"]}
        port = 26379 if "sentinel" in name else 6379
        headless = "secure-sentinel-headless" if "sentinel" in name else "secure-redis-headless"
        # by the pod's own name, which the certificate carries: verification is never skipped
        assert env["REDIS_ADDR"] == f"rediss://$(POD_NAME).{headless}.shop.svc.cluster.local:{port}"
        assert list(env)[:1] == ["POD_NAME"], "POD_NAME must come before the variable that expands it"
        assert env["REDIS_EXPORTER_TLS_CA_CERT_FILE"] == f"{names.TLS_MOUNT}/ca.crt"
        assert "REDIS_EXPORTER_SKIP_TLS_VERIFICATION" not in env
        assert {"name": "tls", "mountPath": names.TLS_MOUNT, "readOnly": True} in exporter["volumeMounts"]
        # its password file is keyed by that same address, expanded the same way in its init container
        init = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
        assert list(init)[:1] == ["POD_NAME"]
        assert init["REDIS_ADDR"] == env["REDIS_ADDR"]
    connection = {k: base64.b64decode(v).decode() for k, v in found[("Secret", "secure-connection")]["data"].items()}
    assert connection["ca.crt"] == FACTS.ca
    assert connection["url"].startswith("rediss://")


def test_auth_clients_asks_every_client_for_a_certificate() -> None:
    conf = objects(spec(secretName="own-tls", authClients=True))[("ConfigMap", "secure-config")]["data"]
    assert "tls-auth-clients yes" in conf["redis.conf"].splitlines()
    assert "tls-auth-clients yes" in conf["sentinel.conf"].splitlines()


def test_only_the_sentinels_roll_on_a_renewal() -> None:
    before = objects(spec(secretName="own-tls"))
    after = objects(spec(secretName="own-tls"), tls.Facts(ca=FACTS.ca, revision="r2"))
    sentinel = ("StatefulSet", "secure-sentinel")
    redis = ("StatefulSet", "secure-redis")
    annotation = tls.ANNOTATION_REVISION
    assert before[sentinel]["spec"]["template"]["metadata"]["annotations"][annotation] == "r1"
    assert after[sentinel]["spec"]["template"]["metadata"]["annotations"][annotation] == "r2"
    assert before[redis] == after[redis], "redis-server reloads its certificate in place"


@pytest.mark.parametrize("mode", ["sentinel", "cluster"])
def test_issuer_ref_builds_a_certificate_for_every_name(mode: str) -> None:
    found = objects(spec(mode, issuerRef={"name": "ca", "kind": "ClusterIssuer"}))
    cert = found[("Certificate", "secure-tls")]
    assert next(iter(found)) == ("Certificate", "secure-tls"), "applied first"
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["metadata"]["ownerReferences"][0]["uid"] == "u1"
    s = cert["spec"]
    assert s["secretName"] == "secure-tls"
    assert s["issuerRef"] == {"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert "*.secure-redis-headless.shop.svc.cluster.local" in s["dnsNames"]
    assert ("*.secure-sentinel-headless.shop.svc.cluster.local" in s["dnsNames"]) == (mode == "sentinel")
    service = "secure-master" if mode == "sentinel" else "secure-cluster"
    assert f"{service}.shop.svc.cluster.local" in s["dnsNames"]
    assert s["privateKey"]["rotationPolicy"] == "Always"
    for pod in pod_specs(found).values():
        assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "secure-tls"

"""No password in any rendered object but the connection Secret.

For a set of specs (generated password, a named Secret, ACL users, exporter on and off, cluster
mode when this version builds it), every object the operator would apply is searched, keys and
values, for the password in every form it could take (as is, base64, URL-quoted, as a redis.conf
literal): ConfigMap files, environment values, commands and arguments, probes, annotations and
labels. The connection Secret's ``data`` is the one place it belongs, and it must be there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from redis_messaging.api import models
from redis_messaging.builders import UnsupportedSpec, common
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import needs_apply, with_applied_hash
from redis_messaging.modes import build

OWNER = Owner(name="orders", namespace="shop", uid="uid-1")
PASSWORD = "Zq7-secret/pass+word=with%chars\"and\\slashes"

SPECS: dict[str, dict[str, Any]] = {
    "generated password": {},
    "named secret": {"auth": {"secretName": "orders-password"}},
    "ACL users": {"auth": {"users": [
        {"name": "billing", "secretName": "billing-password", "rules": "~orders* +@stream"},
        {"name": "audit", "secretName": "audit-password", "rules": "~* +@read"},
    ]}},
    "exporter off, no persistence": {"monitoring": {"exporter": {"enabled": False}},
                                     "persistence": {"mode": "none"}},
    "monitoring objects on": {"monitoring": {"serviceMonitor": {"enabled": True},
                                             "prometheusRule": {"enabled": True}}},
    "streams and autoscale": {"streams": [{"name": "orders", "groups": [
        {"name": "billing", "autoscale": {"target": {"name": "billing-worker"}}}]}]},
    "cluster mode": {"mode": "cluster"},
}


def forms(secret: str) -> set[str]:
    """Every spelling under which ``secret`` could end up in an object."""
    raw = secret.encode()
    return {
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        quote(secret, safe=""),
        quote(secret),
        json.dumps(secret)[1:-1],
        secret.replace("\\", "\\\\").replace('"', '\\"'),  # a redis.conf string literal
    }


def strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string (dict keys too) inside ``obj``, with where it is."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{path}.{key}[key]", str(key)
            yield from strings(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(obj, str | bytes):
        yield path, obj.decode(errors="replace") if isinstance(obj, bytes) else obj


def rendered(spec: models.RedisMessagingSpec) -> list[dict[str, Any]]:
    """What the reconcile pass applies (with the applied-hash annotation the kube layer adds),
    plus the generated auth Secret's shape and the monitoring objects, when this version has them."""
    objects = [with_applied_hash(o) for o in build(spec, OWNER, password=PASSWORD)]
    objects.append(common.generated_auth_secret(OWNER))
    try:
        from redis_messaging.builders import monitoring
    except ImportError:
        return objects
    objects += [with_applied_hash(o) for o in monitoring.build(spec, OWNER)]
    return objects


def is_connection_data(obj: dict[str, Any], path: str) -> bool:
    return (obj["kind"], obj["metadata"]["name"]) == ("Secret", OWNER.connection_secret) and \
        path.startswith(".data.")


def _specs() -> list[str]:
    out = []
    for title, raw in SPECS.items():
        try:
            build(models.parse_spec(raw), OWNER, password=PASSWORD)
        except UnsupportedSpec:
            continue
        out.append(title)
    return out


def test_the_search_finds_a_leak() -> None:
    """The search itself works: a password put into an env value, an annotation or a file is found."""
    leaky = [
        {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"env": [{"value": PASSWORD}]}]}},
        {"kind": "Pod", "metadata": {"name": "p", "annotations": {"x": base64.b64encode(PASSWORD.encode()).decode()}}},
        {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"redis.conf": f'requirepass "{PASSWORD}"'}},
    ]
    for obj in leaky:
        assert any(f in text for _, text in strings(obj) for f in forms(PASSWORD)), obj


def test_specs_cover_the_modes_built() -> None:
    assert {"generated password", "named secret", "ACL users"} <= set(_specs())


@pytest.mark.parametrize("title", _specs())
def test_password_only_in_the_connection_secret(title: str) -> None:
    spec = models.parse_spec(SPECS[title])
    found_in_connection = []
    for obj in rendered(spec):
        for path, text in strings(obj):
            hits = [f for f in forms(PASSWORD) if f in text]
            if not hits:
                continue
            where = f"{obj['kind']} {obj['metadata']['name']} {path}"
            assert is_connection_data(obj, path), f"{title}: password found in {where}"
            found_in_connection.append(path)
    # The one place it belongs (decoded: Secret data is base64).
    connection = next(o for o in build(spec, OWNER, password=PASSWORD)
                      if (o["kind"], o["metadata"]["name"]) == ("Secret", OWNER.connection_secret))
    assert base64.b64decode(connection["data"]["password"]).decode() == PASSWORD
    assert ".data.password" in found_in_connection


@pytest.mark.parametrize("title", _specs())
def test_secrets_reach_containers_as_mounted_files_only(title: str) -> None:
    """Environment values are literals of non-secret settings only; secrets come as mounted files, never
    as an environment variable (not even by secretKeyRef: a process's environment is shown to whoever
    may inspect it), a command or an argument. A variable named for a password names its file."""
    spec = models.parse_spec(SPECS[title])
    for obj in build(spec, OWNER, password=PASSWORD):
        template = (obj.get("spec") or {}).get("template")
        if not template:
            continue
        pod = template["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = (obj["metadata"]["name"], container["name"])
            for var in container.get("env", []):
                assert "secretKeyRef" not in (var.get("valueFrom") or {}), (*where, var)
                if "PASSWORD" in var["name"] or ("AUTH" in var["name"] and "DIR" not in var["name"]):
                    assert var["name"].endswith("_FILE"), (*where, var)
                    assert var["value"].startswith("/"), (*where, var)
            assert "envFrom" not in container, where
            words = " ".join(container.get("command", []) + container.get("args", []))
            assert not any(f in words for f in forms(PASSWORD))
        secret_volumes = [v for v in pod.get("volumes", []) if "secret" in v]
        for volume in secret_volumes:
            assert volume["secret"]["defaultMode"] & 0o077 == 0, volume  # readable by the owner only


def _applied(spec: models.RedisMessagingSpec, password: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): with_applied_hash(o) for o in build(spec, OWNER, password=password)}


@pytest.mark.parametrize("title", _specs())
def test_applied_hash_holds_nothing_of_a_secret_value(title: str) -> None:
    """The applied-hash annotation is computed without secret values: another password changes no
    annotation of any object (a hash of the password would let whoever reads annotations test guesses)."""
    spec = models.parse_spec(SPECS[title])
    one, other = _applied(spec, PASSWORD), _applied(spec, "another-" + PASSWORD)
    assert one.keys() == other.keys()
    for key, obj in one.items():
        assert obj["metadata"]["annotations"] == other[key]["metadata"]["annotations"], key
    connection = one[("Secret", OWNER.connection_secret)]
    assert connection["data"] != other[("Secret", OWNER.connection_secret)]["data"]  # the data does differ


def test_a_changed_password_is_applied_all_the_same() -> None:
    """What the annotation leaves out, the comparison with the live Secret sees: a new password (a rotation
    publishing it) is applied; a key no longer desired (TLS turned off: ca.crt) changes the hash."""
    spec = models.parse_spec({})

    def desired(password: str) -> dict[str, Any]:
        return next(o for o in build(spec, OWNER, password=password)
                    if (o["kind"], o["metadata"]["name"]) == ("Secret", OWNER.connection_secret))

    live = with_applied_hash(desired(PASSWORD))  # as the API server keeps it after the apply
    same, rotated = desired(PASSWORD), desired("rotated-" + PASSWORD)
    assert needs_apply(same, live) is None
    assert needs_apply(rotated, live) == "its data changed"
    fewer = {**same, "data": {k: v for k, v in same["data"].items() if k != "sentinelUrl"}}
    assert needs_apply(fewer, live) == "desired state changed"

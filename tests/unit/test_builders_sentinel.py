"""Sentinel-mode builders: what a user would inspect in the rendered objects."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from redis_messaging.api import models
from redis_messaging.builders import common, config, names
from redis_messaging.builders.names import Owner
from redis_messaging.modes import build

ROOT = Path(__file__).parents[2]
OWNER = Owner(name="orders", namespace="shop", uid="uid-1")
PASSWORD = "s3cr3t-Pa55word-that-must-not-leak"


def objects(**spec: Any) -> dict[tuple[str, str], dict[str, Any]]:
    built = build(models.parse_spec(spec), OWNER, password=PASSWORD)
    return {(o["kind"], o["metadata"]["name"]): o for o in built}


def conf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_builders_are_deterministic() -> None:
    spec = models.parse_spec({"redis": {"config": {"maxmemory": "1gb", "hz": "20"}}})
    one = build(spec, OWNER, password=PASSWORD)
    two = build(spec, OWNER, password=PASSWORD)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_every_child_is_owned_and_labelled() -> None:
    for (kind, name), obj in objects().items():
        meta = obj["metadata"]
        assert meta["namespace"] == "shop", name
        ref = meta["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("RedisMessaging", "orders", "uid-1", True)
        assert meta["labels"][names.LABEL_INSTANCE] == "orders", (kind, name)
        assert meta["labels"][names.LABEL_MANAGED_BY] == names.MANAGER


def test_redis_statefulset_has_volumes_ondelete_and_probes() -> None:
    built = objects(persistence={"storage": {"size": "20Gi", "storageClassName": "fast"}})
    sts = built[("StatefulSet", "orders-redis")]
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["serviceName"] == "orders-redis-headless"
    claim = spec["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    redis = spec["template"]["spec"]["containers"][0]
    assert redis["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
    assert redis["readinessProbe"]["exec"]["command"][-1] == "readiness"
    assert redis["livenessProbe"]["exec"]["command"][-1] == "liveness"
    assert redis["lifecycle"]["preStop"]["exec"]["command"][-1].endswith("prestop.sh")
    mounts = {m["mountPath"]: m["name"] for m in redis["volumeMounts"]}
    assert mounts["/data"] == "data"
    assert mounts["/etc/redis-messaging-auth"] == "auth"


def test_no_persistence_means_no_volume_claims() -> None:
    sts = objects(persistence={"mode": "none"})[("StatefulSet", "orders-redis")]
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


@pytest.mark.parametrize(
    ("mode", "appendonly", "save"),
    [("aof", "yes", '""'), ("rdb", "no", '"3600 1 300 100 60 10000"'), ("both", "yes", '"3600 1 300 100 60 10000"'),
     ("none", "no", '""')],
)
def test_persistence_mode_in_redis_conf(mode: str, appendonly: str, save: str) -> None:
    cm = objects(persistence={"mode": mode})[("ConfigMap", "orders-config")]
    lines = conf_lines(cm["data"]["redis.conf"])
    assert f"appendonly {appendonly}" in lines
    assert f"save {save}" in lines


def test_redis_conf_has_safety_defaults_and_user_config() -> None:
    cm = objects(redis={"replicas": 3, "config": {"maxmemory": "2gb", "maxmemory-policy": "allkeys-lru"}})
    lines = conf_lines(cm[("ConfigMap", "orders-config")]["data"]["redis.conf"])
    assert "min-replicas-to-write 1" in lines
    assert "min-replicas-max-lag 10" in lines
    assert "maxmemory 2gb" in lines
    assert "maxmemory-policy allkeys-lru" in lines  # the user's choice wins over the default
    assert "maxmemory-policy noeviction" not in lines


def test_single_redis_does_not_require_replicas_to_write() -> None:
    cm = objects(redis={"replicas": 1}, sentinel={"replicas": 1, "quorum": 1})
    assert "min-replicas-to-write 0" in conf_lines(cm[("ConfigMap", "orders-config")]["data"]["redis.conf"])


def test_sentinel_conf_uses_hostnames_and_the_spec_timings() -> None:
    cm = objects(sentinel={"replicas": 5, "quorum": 3, "downAfterMilliseconds": 3000, "failoverTimeout": 20000})
    data = cm[("ConfigMap", "orders-config")]["data"]
    assert "sentinel resolve-hostnames yes" in data["sentinel.conf"]
    assert "sentinel announce-hostnames yes" in data["sentinel.conf"]
    monitor = conf_lines(data["sentinel-monitor.conf"])
    assert monitor[0] == "sentinel monitor orders @MASTER@ 6379 3"
    assert "sentinel down-after-milliseconds orders 3000" in monitor
    assert "sentinel failover-timeout orders 20000" in monitor


def test_pods_announce_stable_hostnames() -> None:
    sts = objects()[("StatefulSet", "orders-redis")]
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RMSG_HEADLESS_SERVICE"] == "orders-redis-headless"
    assert env["RMSG_SEED_HOST"] == "orders-redis-0.orders-redis-headless.shop.svc.cluster.local"
    assert env["RMSG_SENTINEL_HOSTS"].split()[2] == "orders-sentinel-2.orders-sentinel-headless.shop.svc.cluster.local"
    start = objects()[("ConfigMap", "orders-config")]["data"]["redis-role.sh"]  # what redis-start.sh adds in this mode
    assert "replica-announce-ip $RMSG_SELF_HOST" in start


def test_services_select_roles() -> None:
    objs = objects()
    master = objs[("Service", "orders-master")]["spec"]
    assert master["selector"][names.LABEL_ROLE] == "master"
    assert objs[("Service", "orders-replicas")]["spec"]["selector"][names.LABEL_ROLE] == "replica"
    headless = objs[("Service", "orders-redis-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert objs[("Service", "orders-sentinel")]["spec"]["ports"][0]["port"] == 26379


def test_pdbs_allow_one_disruption_at_a_time() -> None:
    objs = objects()
    for name in ("orders-redis", "orders-sentinel"):
        assert objs[("PodDisruptionBudget", name)]["spec"]["maxUnavailable"] == 1


def test_default_placement_spreads_pods() -> None:
    pod = objects()[("StatefulSet", "orders-redis")]["spec"]["template"]["spec"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def test_user_placement_replaces_defaults() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    pod = objects(pod={"affinity": affinity, "tolerations": [{"key": "redis", "operator": "Exists"}],
                       "nodeSelector": {"pool": "redis"}, "priorityClassName": "critical"})
    spec = pod[("StatefulSet", "orders-sentinel")]["spec"]["template"]["spec"]
    assert spec["affinity"] == affinity
    assert spec["tolerations"] == [{"key": "redis", "operator": "Exists"}]
    assert spec["nodeSelector"] == {"pool": "redis"}
    assert spec["priorityClassName"] == "critical"


def test_containers_are_locked_down() -> None:
    for kind, name in (("StatefulSet", "orders-redis"), ("StatefulSet", "orders-sentinel")):
        pod = objects()[(kind, name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}


def test_config_change_changes_the_pod_template_hash() -> None:
    a = objects()[("StatefulSet", "orders-redis")]["spec"]["template"]["metadata"]["annotations"]
    b = objects(redis={"config": {"hz": "50"}})[("StatefulSet", "orders-redis")]["spec"]["template"]["metadata"]
    assert a[names.ANNOTATION_CONFIG_HASH] != b["annotations"][names.ANNOTATION_CONFIG_HASH]


def test_connection_secret_carries_addresses_and_urls() -> None:
    secret = objects()[("Secret", "orders-connection")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["host"] == "orders-master.shop.svc.cluster.local"
    assert data["port"] == "6379"
    assert data["masterName"] == "orders"
    assert data["sentinelUrl"].startswith("redis+sentinel://:")
    assert data["sentinelUrl"].endswith("@orders-sentinel.shop.svc.cluster.local:26379/orders/0")
    assert data["password"] == PASSWORD


def test_password_is_nowhere_but_the_connection_secret() -> None:
    for (kind, name), obj in objects(monitoring={"exporter": {"enabled": True}}).items():
        if (kind, name) == ("Secret", "orders-connection"):
            continue
        text = json.dumps(obj)
        assert PASSWORD not in text, (kind, name)
        assert base64.b64encode(PASSWORD.encode()).decode() not in text, (kind, name)


def test_env_never_carries_a_secret_value() -> None:
    for key in (("StatefulSet", "orders-redis"), ("StatefulSet", "orders-sentinel")):
        pod = objects()[key]["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            for e in c.get("env", []):
                assert "secretKeyRef" not in (e.get("valueFrom") or {}), e  # files, never the environment
                assert "PASS" not in e["name"] or e["name"].endswith("_FILE"), e
            assert not any(PASSWORD in a for a in c.get("command", []) + c.get("args", []))


def test_generated_auth_secret_has_no_data_in_the_build() -> None:
    secret = common.generated_auth_secret(OWNER)
    assert "data" not in secret
    assert "stringData" not in secret
    assert ("Secret", "orders-auth") not in objects()


def test_auth_disabled_mounts_no_secret() -> None:
    pod = objects(auth={"enabled": False}, monitoring={"exporter": {"enabled": False}})
    spec = pod[("StatefulSet", "orders-redis")]["spec"]["template"]["spec"]
    assert all(v["name"] != "auth" for v in spec["volumes"])


def test_exporter_sidecar_is_its_own_user_with_a_password_from_a_file() -> None:
    found = objects()
    for sts, port in (("orders-redis", 6379), ("orders-sentinel", 26379)):
        pod = found[("StatefulSet", sts)]["spec"]["template"]["spec"]
        exporter = next(c for c in pod["containers"] if c["name"] == "exporter")
        env = {e["name"]: e.get("value") for e in exporter["env"]}
        assert env["REDIS_USER"] == "rmsg-exporter"
        assert "REDIS_PASSWORD" not in env  # no password in its environment, not even by reference
        assert env["REDIS_PASSWORD_FILE"] == "/run/redis-messaging-exporter/password.json"
        assert env["REDIS_EXPORTER_CONFIG_COMMAND"] == "-"  # CONFIG GET would show it requirepass
        assert {"name": "exporter-auth", "mountPath": "/run/redis-messaging-exporter", "readOnly": True} \
            in exporter["volumeMounts"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["exporter-auth"]["emptyDir"]["medium"] == "Memory"
        # not the default user's password: a rotation of that one never locks the exporter out
        users = volumes["users"]["projected"]["sources"]
        assert {"secret": {"name": "orders-exporter", "items": [{"key": "password", "path": "exporter"}]}} in users
        # the init container writes the file from the mounted Secret, for the address the exporter scrapes
        (init,) = pod["initContainers"]
        assert init["command"] == ["sh", "/etc/redis-messaging/exporter-auth.sh"]
        init_env = {e["name"]: e.get("value") for e in init["env"]}
        assert init_env["REDIS_ADDR"] == env["REDIS_ADDR"] == f"redis://127.0.0.1:{port}"
        assert init_env["REDIS_PASSWORD_FILE"] == env["REDIS_PASSWORD_FILE"]
        assert {m["name"] for m in init["volumeMounts"]} == {"config", "users", "exporter-auth"}
        assert init["securityContext"] == exporter["securityContext"]
    data = found[("ConfigMap", "orders-config")]["data"]
    assert data["users.acl"].splitlines()[-2].startswith("exporter rmsg-exporter -@all +ping +info")
    assert data["users.acl"].splitlines()[-1] == "if-commandlog rmsg-exporter +commandlog|get +commandlog|len"
    assert data["sentinel-users.acl"].startswith("exporter rmsg-exporter -@all +ping +info")
    assert "+sentinel|masters" in data["sentinel-users.acl"]
    assert "exporter-auth.sh" in data
    for rules in (config.EXPORTER_RULES_REDIS, config.EXPORTER_RULES_SENTINEL, config.EXPORTER_RULES_COMMANDLOG):
        granted = [r for r in rules.split() if r.startswith("+")]
        assert not [r for r in granted if r.split("|")[0] in ("+config", "+acl", "+monitor", "+sentinel|config")]
        assert "+sentinel|config" not in granted
        assert "+slowlog" not in granted  # SLOWLOG RESET writes


def test_no_exporter_no_init_container() -> None:
    for spec in ({"monitoring": {"exporter": {"enabled": False}}}, {"auth": {"enabled": False}}):
        found = objects(**spec)
        pod = found[("StatefulSet", "orders-redis")]["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        assert "exporter-auth.sh" not in found[("ConfigMap", "orders-config")]["data"]


def test_named_auth_secret_is_used() -> None:
    pod = objects(auth={"secretName": "my-redis-pw"})[("StatefulSet", "orders-redis")]["spec"]["template"]["spec"]
    auth = next(v for v in pod["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == "my-redis-pw"


def test_render_cli_prints_every_object_without_a_cluster() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "redis_messaging.cli", "render", "-f", str(ROOT / "examples" / "sentinel.yaml")],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT / "operator")},
    ).stdout
    docs = list(yaml.safe_load_all(out))
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Secret", "Service", "StatefulSet"]
    assert len(docs) == 13  # the generated auth and exporter Secrets included


def test_render_refuses_an_invalid_resource(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: redis-messaging.dev/v1alpha1\nkind: RedisMessaging\nmetadata: {name: x}\n"
                   "spec: {mode: sentinel, redis: {replicas: -1}}\n")
    proc = subprocess.run([sys.executable, "-m", "redis_messaging.cli", "render", "-f", str(bad)],
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "operator")})
    assert proc.returncode == 1
    assert "redis.replicas" in proc.stderr


def test_config_hash_is_stable() -> None:
    assert config.content_hash({"a": 1, "b": [1, 2]}) == config.content_hash({"b": [1, 2], "a": 1})

"""Cluster-mode builders: what a user would inspect in the rendered objects."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from redis_messaging.api import models
from redis_messaging.builders import config, names
from redis_messaging.builders.names import Owner
from redis_messaging.modes import build

ROOT = Path(__file__).parents[2]
OWNER = Owner(name="events", namespace="shop", uid="uid-1")
PASSWORD = "s3cr3t-Pa55word-that-must-not-leak"


def objects(**spec: Any) -> dict[tuple[str, str], dict[str, Any]]:
    built = build(models.parse_spec({"mode": "cluster", **spec}), OWNER, password=PASSWORD)
    return {(o["kind"], o["metadata"]["name"]): o for o in built}


def conf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_one_statefulset_and_one_pdb_per_shard_and_two_services() -> None:
    built = objects(cluster={"shards": 5, "replicasPerShard": 2})
    kinds = sorted(built)
    assert [k for k in kinds if k[0] == "StatefulSet"] == [("StatefulSet", f"events-shard-{i}") for i in range(5)]
    assert [k for k in kinds if k[0] == "PodDisruptionBudget"] == [
        ("PodDisruptionBudget", f"events-shard-{i}") for i in range(5)]
    assert {k for k in kinds if k[0] == "Service"} == {("Service", "events-redis-headless"),
                                                     ("Service", "events-cluster")}
    assert ("StatefulSet", "events-sentinel") not in built
    assert ("StatefulSet", "events-redis") not in built


def test_builders_are_deterministic() -> None:
    spec = models.parse_spec({"mode": "cluster", "redis": {"config": {"maxmemory": "1gb"}}})
    assert json.dumps(build(spec, OWNER, password=PASSWORD), sort_keys=True) == json.dumps(
        build(spec, OWNER, password=PASSWORD), sort_keys=True)


def test_every_child_is_owned_and_labelled() -> None:
    for (kind, name), obj in objects().items():
        meta = obj["metadata"]
        assert meta["namespace"] == "shop", name
        ref = meta["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("RedisMessaging", "events", "uid-1", True)
        assert meta["labels"][names.LABEL_INSTANCE] == "events", (kind, name)


def test_shard_statefulset_has_master_and_replicas_volumes_and_ondelete() -> None:
    sts = objects(cluster={"replicasPerShard": 2}, persistence={"storage": {"size": "20Gi"}})[
        ("StatefulSet", "events-shard-1")]
    spec = sts["spec"]
    assert spec["replicas"] == 3  # the master and two replicas
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "events-redis-headless"
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert spec["selector"]["matchLabels"][names.LABEL_SHARD] == "1"
    assert spec["template"]["metadata"]["labels"][names.LABEL_SHARD] == "1"
    assert spec["template"]["metadata"]["labels"][names.LABEL_COMPONENT] == "shard"
    redis = spec["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in redis["ports"]} == {"redis": 6379, "cluster-bus": 16379}
    mounts = {m["mountPath"]: m["name"] for m in redis["volumeMounts"]}
    assert mounts["/data"] == "data"
    env = env_of(redis)
    assert env["RMSG_MODE"] == "cluster"
    assert env["RMSG_HEADLESS_SERVICE"] == "events-redis-headless"
    assert env["RMSG_SHARD"] == "1"
    assert redis["lifecycle"]["preStop"]["exec"]["command"][-1].endswith("prestop.sh")


def test_shard_selectors_do_not_overlap() -> None:
    built = objects()
    selectors = [json.dumps(built[("StatefulSet", f"events-shard-{i}")]["spec"]["selector"], sort_keys=True)
                 for i in range(3)]
    assert len(set(selectors)) == 3


def test_redis_conf_enables_cluster_with_nodes_conf_on_the_volume() -> None:
    data = objects(cluster={"nodeTimeout": 3000})[("ConfigMap", "events-config")]["data"]
    lines = conf_lines(data["redis.conf"])
    assert "cluster-enabled yes" in lines
    assert "cluster-config-file /data/nodes.conf" in lines
    assert "cluster-node-timeout 3000" in lines
    assert "cluster-preferred-endpoint-type hostname" in lines
    assert "dir /data" in lines
    assert not any(line.startswith("replicaof") for line in lines)
    start = data["redis-role.sh"]  # what redis-start.sh adds in this mode
    assert "cluster-announce-hostname $RMSG_SELF_HOST" in start
    assert "CLUSTER FAILOVER" in data["prestop.sh"]
    assert "sentinel.conf" not in data


def test_no_persistence_keeps_nodes_conf_on_an_empty_dir() -> None:
    sts = objects(persistence={"mode": "none"})[("StatefulSet", "events-shard-0")]
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_headless_service_publishes_pods_before_they_are_ready() -> None:
    built = objects()
    headless = built[("Service", "events-redis-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert headless["selector"][names.LABEL_COMPONENT] == "shard"
    assert {p["name"] for p in headless["ports"]} == {"redis", "cluster-bus"}
    client = built[("Service", "events-cluster")]["spec"]
    assert client["type"] == "ClusterIP"
    assert client["selector"][names.LABEL_COMPONENT] == "shard"
    assert names.LABEL_ROLE not in client["selector"]  # any node redirects a client to the right one


def test_pdb_per_shard_allows_one_pod_down() -> None:
    pdb = objects()[("PodDisruptionBudget", "events-shard-2")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"][names.LABEL_SHARD] == "2"


def test_connection_secret_lists_seed_addresses() -> None:
    secret = objects(cluster={"shards": 3, "replicasPerShard": 1})[("Secret", "events-connection")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["mode"] == "cluster"
    assert data["host"] == "events-cluster.shop.svc.cluster.local"
    assert data["port"] == "6379"
    seeds = data["seeds"].split(",")
    assert len(seeds) == 6
    assert seeds[0] == "events-shard-0-0.events-redis-headless.shop.svc.cluster.local:6379"
    assert data["url"].endswith("@events-cluster.shop.svc.cluster.local:6379")
    assert data["password"] == PASSWORD
    assert "sentinelHost" not in data


def test_password_is_nowhere_but_the_connection_secret() -> None:
    for (kind, name), obj in objects().items():
        if (kind, name) == ("Secret", "events-connection"):
            continue
        text = json.dumps(obj)
        assert PASSWORD not in text, (kind, name)
        assert base64.b64encode(PASSWORD.encode()).decode() not in text, (kind, name)


def test_scaling_adds_statefulsets_and_leaves_the_config_alone() -> None:
    three, four = objects(cluster={"shards": 3}), objects(cluster={"shards": 4})
    assert ("StatefulSet", "events-shard-3") in four
    assert ("StatefulSet", "events-shard-3") not in three
    assert three[("ConfigMap", "events-config")] == four[("ConfigMap", "events-config")]
    assert (three[("StatefulSet", "events-shard-0")]["spec"]["template"]
            == four[("StatefulSet", "events-shard-0")]["spec"]["template"])


def test_min_replicas_to_write_never_exceeds_the_replicas_of_a_shard() -> None:
    assert "min-replicas-to-write 0" in conf_lines(
        objects(cluster={"replicasPerShard": 0})[("ConfigMap", "events-config")]["data"]["redis.conf"])
    assert "min-replicas-to-write 1" in conf_lines(
        objects(cluster={"replicasPerShard": 2})[("ConfigMap", "events-config")]["data"]["redis.conf"])


def test_shard_names_parse_back() -> None:
    assert OWNER.shard_of_pod("events-shard-12-1") == (12, 1)
    assert OWNER.shard_of_pod("events-redis-0") is None
    assert OWNER.shard_of_pod("events-shard-x-1") is None
    assert OWNER.shard_of_object("events-shard-4") == 4
    assert OWNER.shard_of_object("events-shard-4-0") is None


def test_render_cli_prints_the_cluster_example() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "redis_messaging.cli", "render", "-f", str(ROOT / "examples" / "cluster.yaml")],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT / "operator")},
    ).stdout
    docs = list(yaml.safe_load_all(out))
    by_kind: dict[str, list[str]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d["metadata"]["name"])
    assert by_kind["StatefulSet"] == ["events-shard-0", "events-shard-1", "events-shard-2"]
    assert by_kind["PodDisruptionBudget"] == ["events-shard-0", "events-shard-1", "events-shard-2"]
    assert sorted(by_kind["Service"]) == ["events-cluster", "events-redis-headless"]
    assert sorted(by_kind["Secret"]) == ["events-auth", "events-connection", "events-exporter"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert "cluster-enabled yes" in cm["data"]["redis.conf"]


def test_config_hash_follows_redis_conf() -> None:
    a = objects()[("StatefulSet", "events-shard-0")]["spec"]["template"]["metadata"]["annotations"]
    b = objects(cluster={"nodeTimeout": 9000})[("StatefulSet", "events-shard-0")]["spec"]["template"]["metadata"]
    assert a[names.ANNOTATION_CONFIG_HASH] != b["annotations"][names.ANNOTATION_CONFIG_HASH]
    assert config.content_hash({"x": 1}) == config.content_hash({"x": 1})


def test_a_shard_pod_finds_its_siblings_by_ordinal_without_a_per_count_setting() -> None:
    """A pod whose volume was lost asks its shard's pods who follows its address: its StatefulSet's
    ordinals 0-5 on its headless Service. Nothing in the pod template depends on the count, so a change
    of replicasPerShard rolls no pod for it."""
    import re
    import subprocess

    data = objects()[("ConfigMap", "events-config")]["data"]
    function = re.search(r"^shard_hosts\(\) \{.*?^\}$", data["redis-role.sh"], re.M | re.S)
    assert function is not None
    env = {"PATH": "/usr/bin:/bin", "POD_NAME": "events-shard-1-2",
           "RMSG_SELF_HOST": "events-shard-1-2.events-redis-headless.shop.svc.cluster.local"}
    out = subprocess.run(["sh", "-c", function.group(0) + "\nshard_hosts"], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [f"events-shard-1-{j}.events-redis-headless.shop.svc.cluster.local" for j in range(6)]
    for replicas in (1, 2):
        sts = objects(cluster={"replicasPerShard": replicas})[("StatefulSet", "events-shard-0")]
        names = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "RMSG_SHARD_HOSTS" not in names

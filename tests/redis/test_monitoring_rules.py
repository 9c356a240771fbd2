"""The PrometheusRule the operator renders, run by Prometheus's own rule engine (promtool, built by
.ci/build-monitoring.sh): `promtool check rules` on its groups, and `promtool test rules` with, for every
alert it renders, one case where the alert fires (series that should trigger it, evaluated past its
``for``) and one where it stays quiet (the healthy state, or the condition held for less than ``for``, or
a value at the threshold). The input series, the labels each firing alert carries and its value are
written here per alert; the annotations expected are the rendered ones with those labels and that value
put in, so an annotation that prints a label the alert does not carry fails too.

No redis-server is needed, but the binaries are: the `redis` tier, where CI requires them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_tools import Binaries, alert_rules, binaries, rule_groups

from redis_messaging.api import models
from redis_messaging.builders import monitoring
from redis_messaging.builders.names import Owner

pytestmark = pytest.mark.redis

OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
ON = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}


def autoscaled(name: str, metric: str) -> dict[str, Any]:
    return {"name": name, "autoscale": {"target": {"name": f"{name}-worker"}, "metric": metric,
                                        "backlogPerReplica": 100, "maxReplicas": 10}}


STREAMS = [{"name": "orders", "groups": [autoscaled("billing", "backlog"), autoscaled("audit", "lag"),
                                         autoscaled("mail", "pending"), {"name": "manual", "maxDeliveries": 5}]}]
SPECS = {
    "sentinel": models.parse_spec({"monitoring": ON, "redis": {"replicas": 3}, "sentinel": {"replicas": 3},
                                   "streams": STREAMS}),
    "cluster": models.parse_spec({"mode": "cluster", "monitoring": ON, "streams": STREAMS}),
}

# The selectors of the rendered expressions: redis_* series carry the scrape's namespace and Service,
# redis_messaging_* the operator's namespace and resource labels.
R = {"namespace": OWNER.namespace, "service": monitoring.metrics_service_name(OWNER)}
OP = {"namespace": OWNER.namespace, "resource": OWNER.name}
G = {**OP, "stream": "orders"}
MASTER = "orders-redis-0.orders-redis-headless.shop.svc.cluster.local"


def series(name: str, values: str, **labels: str) -> tuple[str, str]:
    text = ", ".join(f"{k}={monitoring.lit(v)}" for k, v in labels.items())
    return (f"{name}{{{text}}}", values)


@dataclass(frozen=True)
class Fires:
    """An alert expected at the evaluation time: the labels of its series (the rule's own are added) and
    its value, as the annotations print it."""

    labels: dict[str, str]
    value: float = 0.0


@dataclass(frozen=True)
class Case:
    series: list[tuple[str, str]]
    at: str  # evaluation time, past the alert's `for`
    fires: list[Fires] = field(default_factory=list)


# alert -> (the case where it fires, the case where it stays quiet). Intervals are one minute.
CASES: dict[str, tuple[Case, Case]] = {
    "RedisMessagingExporterDown": (
        Case([series("up", "1 0x10", **R, pod="orders-redis-1"), series("up", "1x10", **R, pod="orders-redis-0")],
             "7m", [Fires({**R, "pod": "orders-redis-1"})]),
        # down for 3 minutes of the 5 of its `for`, then scraped again
        Case([series("up", "1 0 0 0 1x10", **R, pod="orders-redis-1")], "7m"),
    ),
    "RedisMessagingRedisDown": (
        Case([series("redis_up", "1 0x5", **R, pod="orders-redis-2"),
              series("redis_up", "1x5", **R, pod="orders-redis-0")],
             "3m", [Fires({**R, "pod": "orders-redis-2"})]),
        Case([series("redis_up", "1x5", **R, pod="orders-redis-2")], "3m"),
    ),
    "RedisMessagingReplicationBroken": (
        Case([series("redis_master_link_up", "0x5", **R, pod="orders-redis-1", master_host=MASTER, master_port="6379"),
              series("redis_master_link_up", "1x5", **R, pod="orders-redis-2", master_host=MASTER, master_port="6379")],
             "3m", [Fires({**R, "pod": "orders-redis-1", "master_host": MASTER, "master_port": "6379"})]),
        # a link down for one minute (a replica restarting), up again before the 2 of its `for`
        Case([series("redis_master_link_up", "0 1x5", **R, pod="orders-redis-1", master_host=MASTER,
                     master_port="6379")], "3m"),
    ),
    "RedisMessagingReplicaLagging": (
        Case([series("redis_connected_slave_lag_seconds", "15x5", **R, pod="orders-redis-0", slave_ip="10.0.0.2",
                     slave_port="6379", slave_state="online")],
             "3m", [Fires({**R, "pod": "orders-redis-0", "slave_ip": "10.0.0.2", "slave_port": "6379",
                           "slave_state": "online"}, 15)]),
        # at min-replicas-max-lag (10 s), not above it
        Case([series("redis_connected_slave_lag_seconds", "10x5", **R, pod="orders-redis-0", slave_ip="10.0.0.2",
                     slave_port="6379", slave_state="online")], "3m"),
    ),
    "RedisMessagingNoMaster": (
        Case([series("redis_instance_info", "1x5", **R, pod="orders-redis-1", role="slave"),
              series("redis_instance_info", "1x5", **R, pod="orders-redis-2", role="slave")],
             "3m", [Fires({}, 0)]),
        Case([series("redis_instance_info", "1x5", **R, pod="orders-redis-0", role="master"),
              series("redis_instance_info", "1x5", **R, pod="orders-redis-1", role="slave")], "3m"),
    ),
    "RedisMessagingSplitBrain": (
        Case([series("redis_instance_info", "1x5", **R, pod="orders-redis-0", role="master"),
              series("redis_instance_info", "1x5", **R, pod="orders-redis-1", role="master"),
              series("redis_instance_info", "1x5", **R, pod="orders-redis-2", role="slave")],
             "3m", [Fires({}, 2)]),
        Case([series("redis_instance_info", "1x5", **R, pod="orders-redis-0", role="master"),
              series("redis_instance_info", "1x5", **R, pod="orders-redis-1", role="slave"),
              series("redis_instance_info", "1x5", **R, pod="orders-redis-2", role="slave")], "3m"),
    ),
    "RedisMessagingReplicasMissing": (
        Case([series("redis_connected_slaves", "1x10", **R, pod="orders-redis-0"),
              series("redis_connected_slaves", "0x10", **R, pod="orders-redis-1")], "7m", [Fires({}, 1)]),
        Case([series("redis_connected_slaves", "2x10", **R, pod="orders-redis-0"),
              series("redis_connected_slaves", "0x10", **R, pod="orders-redis-1")], "7m"),
    ),
    "RedisMessagingSentinelNotMonitoring": (
        Case([series("redis_sentinel_masters", "1x5", **R, pod="orders-sentinel-0"),
              series("redis_sentinel_master_status", "1x5", **R, pod="orders-sentinel-0", master_name=OWNER.master_name,
                     master_address=f"{MASTER}:6379", master_status="ok"),
              series("redis_sentinel_masters", "0x5", **R, pod="orders-sentinel-2")],
             "3m", [Fires({**R, "pod": "orders-sentinel-2"}, 0)]),
        Case([series("redis_sentinel_masters", "1x5", **R, pod="orders-sentinel-0"),
              series("redis_sentinel_master_status", "1x5", **R, pod="orders-sentinel-0", master_name=OWNER.master_name,
                     master_address=f"{MASTER}:6379", master_status="ok")], "3m"),
    ),
    "RedisMessagingSentinelDisagreement": (
        Case([series("redis_sentinel_master_status", "1x5", **R, pod="orders-sentinel-0", master_name=OWNER.master_name,
                     master_address=f"{MASTER}:6379", master_status="ok"),
              series("redis_sentinel_master_status", "1x5", **R, pod="orders-sentinel-1", master_name=OWNER.master_name,
                     master_address="orders-redis-1.orders-redis-headless.shop.svc.cluster.local:6379",
                     master_status="ok")],
             "3m", [Fires({}, 2)]),
        Case([series("redis_sentinel_master_status", "1x5", **R, pod=f"orders-sentinel-{i}",
                     master_name=OWNER.master_name, master_address=f"{MASTER}:6379", master_status="ok")
              for i in range(3)], "3m"),
    ),
    "RedisMessagingSentinelMasterDown": (
        Case([series("redis_sentinel_master_status", "0x5", **R, pod="orders-sentinel-0", master_name=OWNER.master_name,
                     master_address=f"{MASTER}:6379", master_status="sdown")],
             "3m", [Fires({**R, "pod": "orders-sentinel-0", "master_name": OWNER.master_name,
                           "master_address": f"{MASTER}:6379", "master_status": "sdown"})]),
        Case([series("redis_sentinel_master_status", "1x5", **R, pod="orders-sentinel-0", master_name=OWNER.master_name,
                     master_address=f"{MASTER}:6379", master_status="ok")], "3m"),
    ),
    "RedisMessagingSentinelQuorumLost": (
        Case([series("redis_sentinel_master_ckquorum_status", "0x5", **R, pod="orders-sentinel-1",
                     master_name=OWNER.master_name, message="NOQUORUM 1 usable Sentinels")],
             "3m", [Fires({**R, "pod": "orders-sentinel-1", "master_name": OWNER.master_name,
                           "message": "NOQUORUM 1 usable Sentinels"})]),
        Case([series("redis_sentinel_master_ckquorum_status", "1x5", **R, pod="orders-sentinel-1",
                     master_name=OWNER.master_name, message="OK 3 usable Sentinels")], "3m"),
    ),
    "RedisMessagingSentinelsMissing": (
        Case([series("redis_sentinel_master_ok_sentinels", "2x10", **R, pod=f"orders-sentinel-{i}",
                     master_name=OWNER.master_name, master_address=f"{MASTER}:6379") for i in range(2)],
             "7m", [Fires({}, 2)]),
        Case([series("redis_sentinel_master_ok_sentinels", "3x10", **R, pod=f"orders-sentinel-{i}",
                     master_name=OWNER.master_name, master_address=f"{MASTER}:6379") for i in range(3)], "7m"),
    ),
    "RedisMessagingMemoryNearMax": (
        Case([series("redis_memory_used_bytes", "900x10", **R, pod="orders-redis-0"),
              series("redis_memory_max_bytes", "1000x10", **R, pod="orders-redis-0")],
             "7m", [Fires({**R, "pod": "orders-redis-0"}, 0.9)]),
        # at 85 % exactly; and a pod without maxmemory (0: no ratio at all)
        Case([series("redis_memory_used_bytes", "850x10", **R, pod="orders-redis-0"),
              series("redis_memory_max_bytes", "1000x10", **R, pod="orders-redis-0"),
              series("redis_memory_used_bytes", "5000x10", **R, pod="orders-redis-1"),
              series("redis_memory_max_bytes", "0x10", **R, pod="orders-redis-1")], "7m"),
    ),
    "RedisMessagingMemoryFull": (
        Case([series("redis_memory_used_bytes", "970x5", **R, pod="orders-redis-0"),
              series("redis_memory_max_bytes", "1000x5", **R, pod="orders-redis-0")],
             "3m", [Fires({**R, "pod": "orders-redis-0"}, 0.97)]),
        Case([series("redis_memory_used_bytes", "940x5", **R, pod="orders-redis-0"),
              series("redis_memory_max_bytes", "1000x5", **R, pod="orders-redis-0")], "3m"),
    ),
    "RedisMessagingAutoscaleLimited": (
        Case([series("redis_messaging_group_desired_replicas", "5x12", **G, group="billing"),
              series("redis_messaging_group_current_replicas", "3x12", **G, group="billing")],
             "11m", [Fires({**G, "group": "billing"})]),
        Case([series("redis_messaging_group_desired_replicas", "3x12", **G, group="billing"),
              series("redis_messaging_group_current_replicas", "3x12", **G, group="billing")], "11m"),
    ),
    "RedisMessagingOrphanedPending": (
        Case([series("redis_messaging_group_orphaned_pending", "4x20", **G, group="billing")],
             "16m", [Fires({**G, "group": "billing"}, 4)]),
        Case([series("redis_messaging_group_orphaned_pending", "0x20", **G, group="billing")], "16m"),
    ),
    "RedisMessagingDeadLetters": (
        Case([series("redis_messaging_group_dead_lettered_total", "0x5 14x20", **G, group="manual")],
             "15m", [Fires({**G, "group": "manual"}, 14)]),
        # entries dead-lettered, but more than 15 minutes ago
        Case([series("redis_messaging_group_dead_lettered_total", "0x2 14x40", **G, group="manual")], "30m"),
    ),
    "RedisMessagingReconcileFailing": (
        Case([series("redis_messaging_reconcile_errors_total", "0+1x40", **OP)], "30m", [Fires(OP)]),
        # errors long ago, none in the last 10 minutes
        Case([series("redis_messaging_reconcile_errors_total", "0+1x5 5x40", **OP)], "30m"),
    ),
    "RedisMessagingClusterStateNotOk": (
        Case([series("redis_cluster_state", "0x5", **R, pod="orders-shard-1-0"),
              series("redis_cluster_state", "1x5", **R, pod="orders-shard-0-0")],
             "3m", [Fires({**R, "pod": "orders-shard-1-0"})]),
        # failing for less than its minute (a failover)
        Case([series("redis_cluster_state", "1 0 1x5", **R, pod="orders-shard-1-0")], "3m"),
    ),
    "RedisMessagingClusterSlotsUnserved": (
        # a shard lost with its replicas: its third of the slots is not served, the state stays ok
        Case([series("redis_cluster_slots_ok", "10923x5", **R, pod="orders-shard-0-0"),
              series("redis_cluster_state", "1x5", **R, pod="orders-shard-0-0")],
             "3m", [Fires({**R, "pod": "orders-shard-0-0"}, 10923)]),
        # every slot served; and slots lost for less than its minute (a replica took over)
        Case([series("redis_cluster_slots_ok", "16384x5", **R, pod="orders-shard-0-0"),
              series("redis_cluster_slots_ok", "16384 10923 16384x5", **R, pod="orders-shard-1-0")], "3m"),
    ),
}


def backlog(group: str, lag: int, pending: int, replicas: int) -> list[tuple[str, str]]:
    where = {**G, "group": group}
    return [series("redis_messaging_group_lag", f"{lag}x12", **where),
            series("redis_messaging_group_pending", f"{pending}x12", **where),
            series("redis_messaging_group_current_replicas", f"{replicas}x12", **where)]


# One rule per autoscaled group, each counting what its autoscaler counts (target 100 per replica).
BACKLOG_CASES: dict[str, tuple[Case, Case]] = {
    "billing": (  # backlog = lag + pending: 150 + 100 > 2 x 100
        Case(backlog("billing", 150, 100, 2), "11m", [Fires({**G, "group": "billing"})]),
        Case(backlog("billing", 150, 40, 2), "11m"),
    ),
    "audit": (  # lag only; no replica counts as one: 150 > 1 x 100
        Case(backlog("audit", 150, 5000, 0), "11m", [Fires({**G, "group": "audit"})]),
        Case(backlog("audit", 150, 5000, 2), "11m"),
    ),
    "mail": (  # pending only
        Case(backlog("mail", 5000, 250, 2), "11m", [Fires({**G, "group": "mail"})]),
        Case(backlog("mail", 5000, 150, 2), "11m"),
    ),
}


def go_value(value: float) -> str:
    """A float as Go's text/template prints $value (%v)."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def render(template: str, labels: dict[str, str], value: float) -> str:
    """An annotation as Prometheus renders it for an alert with these labels and this value."""

    def one(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        if inner == "$value":
            return go_value(value)
        if inner == "$value | humanize" and (value == 0 or 1 <= abs(value) < 1000):
            return f"{value:.4g}"  # no SI prefix in this range
        if inner == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        found = re.fullmatch(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", inner)
        if found is None:
            raise AssertionError(f"a template this test does not render: {{{{{inner}}}}}")
        if found.group(1) not in labels:
            raise AssertionError(f"the annotation prints $labels.{found.group(1)}, which the alert does not carry "
                                 f"({sorted(labels)}): {template}")
        return labels[found.group(1)]

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def promtool_tests(rule: dict[str, Any], fire: Case, quiet: Case) -> dict[str, Any]:
    """The promtool test file of one alert: its firing case, then its quiet one."""

    def group(case: Case, name: str) -> dict[str, Any]:
        expected = []
        for f in case.fires:
            labels = {**rule["labels"], **f.labels}  # the rule's own, and the values they render to
            annotations = {k: render(v, labels, f.value) for k, v in rule["annotations"].items()}
            expected.append({"exp_labels": labels, "exp_annotations": annotations})
        return {"name": name, "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series],
                "alert_rule_test": [{"eval_time": case.at, "alertname": rule["alert"], "exp_alerts": expected}]}

    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
            "tests": [group(fire, f"{rule['alert']} fires"), group(quiet, f"{rule['alert']} stays quiet")]}


def cases_of(rule: dict[str, Any]) -> tuple[Case, Case]:
    if rule["alert"] == "RedisMessagingConsumerBacklogAboveTarget":
        (group,) = set(re.findall(r'group="([^"]*)"', rule["expr"]))
        return BACKLOG_CASES[group]
    return CASES[rule["alert"]]


def single_rule(spec: models.RedisMessagingSpec, index: int) -> str:
    """The rules file with only the ``index``-th alert rule (its group kept)."""
    kept = []
    seen = 0
    for group in rule_groups(spec, OWNER):
        rules = [r for i, r in enumerate(group["rules"], start=seen) if i == index]
        seen += len(group["rules"])
        if rules:
            kept.append({**group, "rules": rules})
    return yaml.safe_dump({"groups": kept}, sort_keys=False)


def promtool(tools: Binaries, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tools.promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


def every_rule() -> list[Any]:
    out = []
    for title, spec in SPECS.items():
        for i, rule in enumerate(alert_rules(spec, OWNER)):
            out.append(pytest.param(title, i, id=f"{title}-{rule['alert']}-{i}"))
    return out


@pytest.fixture(scope="module")
def tools() -> Binaries:
    return binaries()


@pytest.mark.parametrize("title", list(SPECS))
def test_promtool_checks_the_rendered_rules(tools: Binaries, tmp_path: Path, title: str) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(SPECS[title], OWNER)}))
    done = promtool(tools, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(alert_rules(SPECS[title], OWNER))
    assert f"SUCCESS: {count} rules found" in done.stdout, done.stdout
    assert "FAILED" not in done.stdout + done.stderr, done.stdout + done.stderr  # lint: duplicate rules


def test_every_rendered_alert_has_a_case_that_fires_and_one_that_stays_quiet() -> None:
    for spec in SPECS.values():
        for rule in alert_rules(spec, OWNER):
            fire, quiet = cases_of(rule)
            assert fire.fires, rule["alert"]
            assert not quiet.fires, rule["alert"]
    rendered = {r["alert"] for spec in SPECS.values() for r in alert_rules(spec, OWNER)}
    assert set(CASES) | {"RedisMessagingConsumerBacklogAboveTarget"} == rendered, "cases of alerts no longer rendered"


@pytest.mark.parametrize(("title", "index"), every_rule())
def test_the_alert_fires_and_stays_quiet(tools: Binaries, tmp_path: Path, title: str, index: int) -> None:
    spec = SPECS[title]
    rule = alert_rules(spec, OWNER)[index]
    fire, quiet = cases_of(rule)
    (tmp_path / "rules.yaml").write_text(single_rule(spec, index))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(promtool_tests(rule, fire, quiet), sort_keys=False))
    done = promtool(tools, "test", "rules", "test.yaml", cwd=tmp_path)
    assert done.returncode == 0, f"{rule['alert']}: {rule['expr']}\n{done.stdout}{done.stderr}"
    assert "SUCCESS" in done.stdout, done.stdout


def test_a_wrong_expectation_fails(tools: Binaries, tmp_path: Path) -> None:
    """The test above can fail: for every alert, its firing case expected quiet and its quiet case
    expected to fire are refused by promtool."""
    spec = SPECS["sentinel"]
    for index, rule in enumerate(alert_rules(spec, OWNER)):
        fire, quiet = cases_of(rule)
        swapped = (Case(fire.series, fire.at), Case(quiet.series, quiet.at, fire.fires))
        (tmp_path / "rules.yaml").write_text(single_rule(spec, index))
        (tmp_path / "test.yaml").write_text(yaml.safe_dump(promtool_tests(rule, *swapped), sort_keys=False))
        done = promtool(tools, "test", "rules", "test.yaml", cwd=tmp_path)
        assert done.returncode != 0, rule["alert"]
        assert f"alertname: {rule['alert']}" in done.stdout + done.stderr, done.stdout + done.stderr


ODD_STREAM, ODD_GROUP = 'odd "stream" \\ {{ name }}', 'g"1 }}'


def test_a_group_alert_carries_its_names_exactly(tools: Binaries, tmp_path: Path) -> None:
    """Stream and group names are any string: the backlog alert of a group whose names hold quotes,
    a backslash and template delimiters fires with exactly those names as its labels (rule labels are
    templates: a ``{{`` left as is would be an action), and its annotations run no action of theirs."""
    spec = models.parse_spec({"monitoring": ON, "streams": [
        {"name": ODD_STREAM, "groups": [{**autoscaled("odd", "backlog"), "name": ODD_GROUP}]}]})
    rules = alert_rules(spec, OWNER)
    (index,) = [i for i, r in enumerate(rules) if r["alert"] == "RedisMessagingConsumerBacklogAboveTarget"]
    rule = rules[index]
    where = {**OP, "stream": ODD_STREAM, "group": ODD_GROUP}
    fire = Case([series("redis_messaging_group_lag", "150x12", **where),
                 series("redis_messaging_group_pending", "100x12", **where),
                 series("redis_messaging_group_current_replicas", "2x12", **where)], "11m", [Fires(where)])
    quiet = Case([series("redis_messaging_group_lag", "10x12", **where),
                  series("redis_messaging_group_pending", "10x12", **where),
                  series("redis_messaging_group_current_replicas", "2x12", **where)], "11m")
    (tmp_path / "rules.yaml").write_text(single_rule(spec, index))
    tests = promtool_tests(rule, fire, quiet)
    assert "{{ name }}" not in str(tests["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"])
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool(tools, "test", "rules", "test.yaml", cwd=tmp_path)
    assert done.returncode == 0, f"{rule['labels']}\n{done.stdout}{done.stderr}"

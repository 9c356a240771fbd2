"""The Helm chart, offline: `helm lint --strict`, what `helm template` renders, the values schema,
the CRD copy and the Artifact Hub metadata."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml
from helm_cli import CHART, ROOT, Helm, documents, find

from redis_messaging.settings import OperatorSettings

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
FULLNAME = "rmo-redis-messaging-operator"
NAMESPACES = ("rbac.scope=namespaces", "watchNamespaces={team-a,team-b}")
EVERYTHING_ON = (*NAMESPACES, "metrics.serviceMonitor.enabled=true")


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Deployment")


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# lint and schema


@pytest.mark.parametrize("values", [(), EVERYTHING_ON, ("rbac.create=false", "serviceAccount.create=false",
                                                        "serviceAccount.name=existing")],
                         ids=["defaults", "everything on", "bring your own service account"])
def test_chart_passes_helm_lint_strict(helm: Helm, values: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in values:
        args += ["--set", value]
    result = helm.run(*args)
    assert "0 chart(s) failed" in result.stdout, result.stdout


MISSPELLED = [
    ("replicaCont=2", "additional properties 'replicaCont' not allowed"),
    ("rbac.scop=namespaces", "additional properties 'scop' not allowed"),
    ("serviceAcount.create=false", "additional properties 'serviceAcount' not allowed"),
    ("metrics.serviceMonitor.enable=true", "additional properties 'enable' not allowed"),
    ("securityContext.readOnlyRootFileSystem=false", "additional properties 'readOnlyRootFileSystem' not allowed"),
    ("rbac.scope=namespace", "value must be one of 'cluster', 'namespaces'"),
    ("image.pullPolicy=Sometimes", "value must be one of"),
    ("metrics.port=0", "minimum"),
]


@pytest.mark.parametrize(("value", "message"), MISSPELLED, ids=[m[0] for m in MISSPELLED])
def test_misspelled_or_invalid_values_are_refused(helm: Helm, value: str, message: str) -> None:
    for command in (["template", "rmo", str(CHART)], ["lint", "--strict", str(CHART)]):
        result = helm.run(*command, "--set", value, check=False)
        assert result.returncode != 0, f"helm {command[0]} accepted --set {value}"
        assert message in result.stderr + result.stdout, result.stderr + result.stdout


def test_schema_refuses_unknown_keys_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    open_objects = []

    def walk(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(where)
            for key, child in node["properties"].items():
                walk(child, f"{where}.{key}")
        items = node.get("items")
        if isinstance(items, dict):
            walk(items, f"{where}[]")

    walk(schema, "values")
    assert open_objects == []
    # And every key of values.yaml is described by the schema (else the defaults would not lint).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_namespaces_scope_needs_namespaces(helm: Helm) -> None:
    result = helm.run("template", "rmo", str(CHART), "--set", "rbac.scope=namespaces", check=False)
    assert result.returncode != 0
    assert "watchNamespaces" in result.stderr


# ---------------------------------------------------------------------------------------------
# labels


@pytest.mark.parametrize("values", [(), EVERYTHING_ON], ids=["defaults", "everything on"])
def test_every_object_carries_the_standard_labels_from_one_helper(helm: Helm, values: tuple[str, ...]) -> None:
    docs = helm.template(*values)
    expected = {
        "app.kubernetes.io/name": "redis-messaging-operator",
        "app.kubernetes.io/instance": "rmo",
        "app.kubernetes.io/version": CHART_META["appVersion"],
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/part-of": "redis-messaging",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": f"redis-messaging-operator-{CHART_META['version']}",
    }
    for doc in docs:
        assert doc["metadata"]["labels"] == expected, (doc["kind"], doc["metadata"]["name"])
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == expected
    selector = deployment(docs)["spec"]["selector"]["matchLabels"]
    assert selector == {k: expected[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    # Only the helper spells the label keys.
    for template in (CHART / "templates").glob("*.yaml"):
        assert "app.kubernetes.io/" not in template.read_text(), template.name


# ---------------------------------------------------------------------------------------------
# the Deployment


def test_one_standalone_operator_replaced_by_recreate(helm: Helm) -> None:
    docs = helm.template()
    spec = deployment(docs)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    c = container(docs)
    assert c["image"] == f"redis-messaging-operator:{CHART_META['appVersion']}"
    assert c["args"] == ["run", "--standalone", "--liveness", "http://0.0.0.0:8080/healthz"]
    # The chart's endpoint is the operator's own default (settings.py), so running without the flag agrees.
    assert OperatorSettings().liveness_endpoint == "http://0.0.0.0:8080/healthz"


def test_liveness_probe_hits_kopfs_health_endpoint(helm: Helm) -> None:
    c = container(helm.template("health.port=8181"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == 8181
    assert "http://0.0.0.0:8181/healthz" in c["args"]
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["livenessProbe"]["timeoutSeconds"] >= 1
    assert "readinessProbe" not in c  # the operator serves no traffic a readiness gate would steer


def test_pod_meets_the_restricted_pod_security_standard(helm: Helm) -> None:
    docs = helm.template()
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged")
    # /tmp is the only writable place, and it is memory-backed and bounded.
    (mount,) = container(docs)["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["mountPath"] == "/tmp"
    assert volume["emptyDir"]["medium"] == "Memory"
    resources = container(docs)["resources"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"]}


def test_watched_namespaces_reach_the_operator_settings(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(helm.template(*NAMESPACES, "operator.resyncSeconds=7"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.resync_seconds == 7
    assert settings.metrics_port == 9090


def test_every_environment_variable_is_an_operator_setting(helm: Helm) -> None:
    env = env_of(helm.template(*NAMESPACES))
    known = {f"REDIS_MESSAGING_{field.upper()}" for field in OperatorSettings.model_fields}
    assert set(env) <= known, set(env) - known


def test_whole_cluster_by_default(helm: Helm) -> None:
    assert "REDIS_MESSAGING_NAMESPACES" not in env_of(helm.template())


# ---------------------------------------------------------------------------------------------
# RBAC


def rules_of(doc: dict[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in doc["rules"]]


def test_cluster_scope_binds_one_cluster_role_to_the_service_account(helm: Helm) -> None:
    docs = helm.template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    binding = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": "redis-messaging"}]
    assert find(docs, "ServiceAccount")["metadata"]["name"] == FULLNAME
    assert deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME
    rules = rules_of(find(docs, "ClusterRole"))
    assert (("apiextensions.k8s.io",), ("customresourcedefinitions",), ("list", "watch")) in rules
    assert not any("namespaces" in r[1] for r in rules), "a cluster-wide operator does not watch namespaces"


def test_namespaces_scope_grants_roles_in_watched_namespaces_only(helm: Helm) -> None:
    docs = helm.template(*NAMESPACES)
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for ns in ("team-a", "team-b"):
        binding = find(docs, "RoleBinding", namespace=ns)
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "redis-messaging"
    cluster_role = find(docs, "ClusterRole")
    namespaces = (("",), ("namespaces",), ("list", "watch"))
    assert rules_of(cluster_role) == [
        (("apiextensions.k8s.io",), ("customresourcedefinitions",), ("list", "watch")),
        namespaces,
        (("storage.k8s.io",), ("storageclasses",), ("get", "list")),
    ]
    # Same grants as the cluster scope, only split.
    cluster_scope = rules_of(find(helm.template(), "ClusterRole"))
    split = rules_of(roles[0]) + [r for r in rules_of(cluster_role) if r != namespaces]
    assert sorted(split) == sorted(cluster_scope)


def test_rbac_create_false_creates_no_rbac_object(helm: Helm) -> None:
    docs = helm.template("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=mine")
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
    assert deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    result = helm.run("template", "rmo", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr


def test_every_rbac_rule_says_why(helm: Helm) -> None:
    text = helm.template_text(*NAMESPACES)
    for doc_text in text.split("\n---\n"):
        lines = doc_text.splitlines()
        rule_lines = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
        for i in rule_lines:
            assert lines[i - 1].startswith("# "), f"rule without a comment: {lines[i]} {lines[i + 1]}"
            assert not lines[i - 1].startswith("# --"), f"only a section header above: {lines[i + 1]}"
    assert "# -- What the framework (Kopf) needs" in text
    assert "# -- What the operator needs" in text


def test_no_rule_grants_everything(helm: Helm) -> None:
    for doc in helm.template(*NAMESPACES) + helm.template():
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


# ---------------------------------------------------------------------------------------------
# metrics


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    docs = helm.template("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom")
    service = find(docs, "Service")
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"] == "metrics"
    assert port["port"] == OperatorSettings().metrics_port == 9090
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container(docs)["ports"]
    assert service["spec"]["selector"] == deployment(docs)["spec"]["selector"]["matchLabels"]


def test_no_service_monitor_unless_asked(helm: Helm) -> None:
    assert not [d for d in helm.template() if d["kind"] == "ServiceMonitor"]
    docs = helm.template("metrics.enabled=false", "metrics.serviceMonitor.enabled=true")
    assert [d["kind"] for d in docs if d["kind"] in ("Service", "ServiceMonitor")] == []
    assert env_of(docs)["REDIS_MESSAGING_METRICS_PORT"] == "0"


# ---------------------------------------------------------------------------------------------
# CRD, versions, Artifact Hub


def test_chart_crd_is_the_generated_crd() -> None:
    generated = ROOT / "crds" / "redismessagings.redis-messaging.dev.yaml"
    copy = CHART / "crds" / generated.name
    assert [p.name for p in (CHART / "crds").iterdir()] == [generated.name]
    assert copy.read_bytes() == generated.read_bytes(), (
        f"{copy} differs from {generated}: cp {generated.relative_to(ROOT)} {copy.relative_to(ROOT)}")


def test_chart_app_version_is_the_package_version() -> None:
    assert CHART_META["apiVersion"] == "v2"
    assert CHART_META["appVersion"] == VERSION
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", CHART_META["version"])


def test_artifact_hub_annotations() -> None:
    annotations = CHART_META["annotations"]
    assert annotations["artifacthub.io/operator"] == "true"
    assert annotations["artifacthub.io/operatorCapabilities"] == "Full Lifecycle"
    assert annotations["artifacthub.io/license"] == PYPROJECT["project"]["license"]
    crd = yaml.safe_load((CHART / "crds" / "redismessagings.redis-messaging.dev.yaml").read_text())
    (listed,) = yaml.safe_load(annotations["artifacthub.io/crds"])
    assert listed["kind"] == crd["spec"]["names"]["kind"]
    assert listed["name"] == crd["metadata"]["name"]
    assert listed["version"] in [v["name"] for v in crd["spec"]["versions"]]
    assert listed["displayName"]
    assert listed["description"]
    examples = yaml.safe_load(annotations["artifacthub.io/crdsExamples"])
    assert examples == documents((ROOT / "examples" / "sentinel.yaml").read_text()), (
        "artifacthub.io/crdsExamples must be examples/sentinel.yaml")

"""The chart's RBAC, proven against a real kube-apiserver rather than guessed.

The ServiceAccount, (Cluster)Roles and bindings that `helm template` renders are created on the API
server; the operator runs in-process with a token of that ServiceAccount and nothing else, and
reconciles a small sentinel-mode resource to its full expected state (every child, the generated
password, status, Events, the master's role label, Kopf's own annotation) with no 403 in the audit
log. Then every single grant (API group, resource, verb) of the rendered rules is taken away in turn,
and the operator must hit a 403 that names exactly that grant: no grant is there for nothing.

The API server of this module also runs the OwnerReferencesPermissionEnforcement admission plugin
(OpenShift enables it), which is what makes `redismessagings/finalizers: update` necessary.

Pods are played by one real redis-server on loopback (through REDIS_MESSAGING_ADDRESS_MAP), so the
topology step finds a master and moves the role label, and the resource's two autoscaled stream
groups (one scaling a Deployment, one a StatefulSet) see a backlog and scale their targets.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from controlplane import AssetsNotFoundError, ControlPlane, locate_assets
from helpers import GROUP, PLURAL, VERSION, install_crd, rmsg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ship"))
from helm_cli import Helm, locate_helm, missing_helm_reason

# The periodic pass every second (as in test_operator.py), before redis_messaging.handlers is imported.
os.environ.setdefault("REDIS_MESSAGING_RESYNC_SECONDS", "1")

Grant = tuple[str, str, str]  # (API group, resource[/subresource], verb)

# Every grant the operator uses today, with what breaks without it.
PROVEN: dict[Grant, str] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "Kopf cannot follow CRD changes",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "Kopf cannot follow CRD changes",
    ("", "namespaces", "list"): "Kopf cannot see which watched namespaces exist",
    ("", "namespaces", "watch"): "Kopf cannot see watched namespaces appear",
    (GROUP, "redismessagings", "list"): "Kopf cannot list the resources: no pass ever runs",
    (GROUP, "redismessagings", "watch"): "Kopf cannot watch the resources: no pass ever runs",
    (GROUP, "redismessagings/status", "patch"): "no status",
    (GROUP, "redismessagings/finalizers", "update"): "no child may carry blockOwnerDeletion",
    **{(group, plural, verb): "the children are not indexed: no pass ever runs"
       for group, plural in (("", "pods"), ("", "configmaps"), ("", "secrets"), ("", "services"),
                             ("", "persistentvolumeclaims"), ("apps", "statefulsets"),
                             ("policy", "poddisruptionbudgets"), ("networking.k8s.io", "networkpolicies"),
                             ("autoscaling", "horizontalpodautoscalers"))
       for verb in ("list", "watch")},
    ("", "secrets", "create"): "no generated password, no connection Secret",
    ("", "secrets", "patch"): "the connection Secret cannot be applied",
    ("", "configmaps", "create"): "no redis.conf",
    ("", "configmaps", "patch"): "redis.conf cannot be applied",
    ("", "services", "create"): "no Services",
    ("", "services", "patch"): "Services cannot be applied",
    ("apps", "statefulsets", "create"): "no StatefulSets",
    ("apps", "statefulsets", "patch"): "StatefulSets cannot be applied",
    ("policy", "poddisruptionbudgets", "create"): "no PodDisruptionBudgets",
    ("policy", "poddisruptionbudgets", "patch"): "PodDisruptionBudgets cannot be applied",
    ("", "pods", "patch"): "the master Service never follows the master",
    ("", "events", "create"): "no Events",
    ("apps", "deployments/scale", "get"): "the autoscaler cannot read a Deployment's replicas",
    ("apps", "deployments/scale", "patch"): "the autoscaler cannot scale a Deployment",
    ("apps", "statefulsets/scale", "get"): "the autoscaler cannot read a StatefulSet's replicas",
    ("apps", "statefulsets/scale", "patch"): "the autoscaler cannot scale a StatefulSet",
    ("keda.sh", "scaledobjects", "list"): "no check for a conflicting KEDA ScaledObject",
}

# Granted by the chart for capabilities this test does not drive (volume expansion, cluster scale-in,
# monitoring objects with the Prometheus Operator's CRDs): the full-state run below cannot fail
# without them. Move a grant to PROVEN when a run here exercises its capability.
UPCOMING: dict[Grant, str] = {
    ("", "secrets", "get"): "Secrets named in the spec (auth.secretName, tls.secretName, ACL users)",
    ("", "persistentvolumeclaims", "patch"): "volume expansion",
    ("apps", "statefulsets", "delete"): "volume expansion (re-create, orphaning pods); cluster scale-in",
    ("", "pods", "delete"): "ordered rolling updates",
    ("policy", "poddisruptionbudgets", "delete"): "cluster scale-in",
    ("", "services", "delete"): "monitoring turned off",
    ("", "configmaps", "delete"): "monitoring turned off",
    ("storage.k8s.io", "storageclasses", "get"): "volume expansion",
    ("storage.k8s.io", "storageclasses", "list"): "volume expansion",
    **{("monitoring.coreos.com", r, v): "monitoring objects (needs the Prometheus Operator's CRDs)"
       for r in ("servicemonitors", "podmonitors", "prometheusrules") for v in ("list", "create", "patch", "delete")},
    **{("networking.k8s.io", "networkpolicies", v): "spec.networkPolicy" for v in ("create", "patch", "delete")},
    **{("cert-manager.io", "certificates", v): "TLS from a cert-manager issuer (needs cert-manager's CRDs)"
       for v in ("list", "create", "patch")},
}

NAME = "orders"
STREAM = "orders"
BACKLOG = 25  # entries waiting when the groups are created: 3 consumers at 10 per replica
WORKERS = {"Deployment": "billing-worker", "StatefulSet": "audit-worker"}


def _group(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "startId": "0", "autoscale": {
        "target": {"kind": kind, "name": WORKERS[kind]}, "minReplicas": 0, "maxReplicas": 3,
        "backlogPerReplica": 10, "scaleDownStabilizationSeconds": 0, "idleSecondsBeforeZero": 0}}


SPEC = {"mode": "sentinel", "redis": {"replicas": 1}, "sentinel": {"replicas": 1, "quorum": 1},
        "persistence": {"storage": {"size": "1Gi"}},
        "streams": [{"name": STREAM, "groups": [_group("billing", "Deployment"), _group("audit", "StatefulSet")]}]}
CHILDREN = {
    ("configmaps", "orders-config"), ("secrets", "orders-auth"), ("secrets", "orders-connection"),
    ("services", "orders-redis-headless"), ("services", "orders-master"), ("services", "orders-replicas"),
    ("services", "orders-sentinel-headless"), ("services", "orders-sentinel"),
    ("statefulsets", "orders-redis"), ("statefulsets", "orders-sentinel"),
    ("poddisruptionbudgets", "orders-redis"), ("poddisruptionbudgets", "orders-sentinel"),
}
KIND_PATHS = {
    "configmaps": "/api/v1", "secrets": "/api/v1", "services": "/api/v1", "pods": "/api/v1",
    "events": "/api/v1", "statefulsets": "/apis/apps/v1", "poddisruptionbudgets": "/apis/policy/v1",
}
RBAC_KINDS = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
}
FULL_RUN_TIMEOUT = 40.0
REMOVAL_TIMEOUT = 20.0


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def helm() -> Helm:
    binary = locate_helm()
    if binary is None:
        pytest.skip(missing_helm_reason())
    return Helm(binary)


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    """A control plane of this module's own, with OwnerReferencesPermissionEnforcement on."""
    try:
        assets = locate_assets()
    except AssetsNotFoundError as exc:
        pytest.skip(str(exc))
    with ControlPlane(assets, with_controller_manager=False,
                      extra_apiserver_args=["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]) as cp:
        with contextlib.closing(cp.api_client()) as api:
            install_crd(api)
        yield cp


@pytest.fixture(scope="module")
def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server not found: apt-get install -y redis-server (bash .ci/setup.sh does)")
    return found


# ---------------------------------------------------------------------------------------------
# the rendered RBAC


def render_rbac(helm: Helm, release: str, namespace: str, scope: str) -> list[dict[str, Any]]:
    values = ["rbac.scope=namespaces", f"watchNamespaces={{{namespace}}}"] if scope == "namespaces" else []
    docs = helm.template(*values, release=release, namespace=namespace)
    return [d for d in docs if d["kind"] in RBAC_KINDS]


def grants_of(rule: dict[str, Any]) -> list[Grant]:
    return [(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]]


def rendered_grants(docs: list[dict[str, Any]]) -> set[Grant]:
    return {g for d in docs if "rules" in d for rule in d["rules"] for g in grants_of(rule)}


def without(docs: list[dict[str, Any]], dropped: Grant | None) -> list[dict[str, Any]]:
    """The RBAC objects with one grant taken away (rules split into one grant each: same meaning)."""
    if dropped is None:
        return docs
    out = []
    for doc in docs:
        if "rules" in doc:
            kept = [g for rule in doc["rules"] for g in grants_of(rule) if g != dropped]
            doc = {**doc, "rules": [{"apiGroups": [g], "resources": [r], "verbs": [v]} for g, r, v in kept]}
        out.append(doc)
    return out


def post(plane: ControlPlane, path: str, obj: dict[str, Any]) -> None:
    """Create one object as admin."""
    result = plane.request("POST", path, body=obj)
    assert result.status == 201, (path, result.status, result.text)


def create_rbac(plane: ControlPlane, obj: dict[str, Any], namespace: str) -> None:
    base, plural, namespaced = RBAC_KINDS[obj["kind"]]
    ns = obj["metadata"].get("namespace") or namespace
    post(plane, f"{base}/namespaces/{ns}/{plural}" if namespaced else f"{base}/{plural}", obj)


def get(plane: ControlPlane, path: str) -> dict[str, Any] | None:
    result = plane.request("GET", path)
    if result.status == 404:
        return None
    assert result.status == 200, (path, result.status, result.text)
    return result.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# one run of the operator under the chart's identity


@dataclass
class Run:
    namespace: str
    user: str
    started: float
    forbidden: list[dict[str, Any]] = field(default_factory=list)
    reached: bool = False
    missing: list[str] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0

    def forbidden_lines(self) -> list[str]:
        return [f"{e.get('verb')} {e.get('requestURI')}: {(e.get('responseStatus') or {}).get('message', '')}"
                for e in self.forbidden]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_with_password(binary: str, port: int, password: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password, "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not listen"
            time.sleep(0.02)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def backlog(port: int, password: str) -> None:
    """Entries in the stream before the operator creates its groups (from id 0): lag for both groups."""
    from redis.client import Redis

    client = Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
    try:
        for i in range(BACKLOG):
            client.xadd(STREAM, {"n": str(i)})
    finally:
        client.close()


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """What the `operator_kubeconfig` fixture of conftest.py does, for another identity."""
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    for module_name in ("kubernetes.config", "kubernetes.config.kube_config"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "KUBE_CONFIG_DEFAULT_LOCATION"):
            monkeypatch.setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def redis_pod_labels(namespace: str) -> dict[str, str]:
    """The labels the redis StatefulSet gives its pods, from the builders."""
    from redis_messaging.api.models import parse_spec
    from redis_messaging.builders.names import Owner
    from redis_messaging.modes import build

    objects = build(parse_spec(SPEC), Owner(NAME, namespace), password=None)
    sts = next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == f"{NAME}-redis")
    return dict(sts["spec"]["template"]["metadata"]["labels"])


def expected_state(plane: ControlPlane, ns: str) -> list[str]:
    """What is still missing of the state the operator must reach (empty: all of it is there)."""
    missing = []
    found = set()
    for plural, base in KIND_PATHS.items():
        if plural in ("pods", "events"):
            continue
        items = (get(plane, f"{base}/namespaces/{ns}/{plural}?labelSelector=app.kubernetes.io/instance%3D{NAME}")
                 or {}).get("items") or []
        found |= {(plural, i["metadata"]["name"]) for i in items}
    if CHILDREN - found:
        missing.append(f"children {sorted(CHILDREN - found)}")
    body = get(plane, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{NAME}") or {}
    status = body.get("status") or {}
    if not status.get("connection") or status.get("observedGeneration") != body["metadata"]["generation"]:
        missing.append("status with connection and observedGeneration")
    if status.get("master") != f"{NAME}-redis-0":
        missing.append("status.master")
    pod = get(plane, f"/api/v1/namespaces/{ns}/pods/{NAME}-redis-0") or {}
    if (pod.get("metadata", {}).get("labels") or {}).get(f"{GROUP}/role") != "master":
        missing.append("role=master label on the redis pod")
    if not status.get("streams"):
        missing.append("status.streams")
    for kind, worker in WORKERS.items():
        scale = get(plane, f"/apis/apps/v1/namespaces/{ns}/{kind.lower()}s/{worker}/scale") or {}
        if (scale.get("spec") or {}).get("replicas") != 3:
            missing.append(f"{kind} {worker} scaled to 3 for a backlog of {BACKLOG}")
    events = (get(plane, f"/api/v1/namespaces/{ns}/events") or {}).get("items") or []
    if not any(e["involvedObject"]["name"] == NAME and e["reason"] == "Created" for e in events):
        missing.append("Created events")
    return missing


def run_operator(plane: ControlPlane, helm: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                 redis_binary: str, *, scope: str = "namespaces", dropped: Grant | None = None,
                 timeout: float = REMOVAL_TIMEOUT) -> Run:
    """Create the chart's RBAC (less ``dropped``) for a fresh namespace, run the operator with only
    that identity, create the resource, and follow it until the expected state or a 403 for
    ``dropped`` (or the timeout)."""
    from kopf.testing import KopfRunner

    from redis_messaging import handlers
    from redis_messaging.settings import OperatorSettings

    ns = f"rbac-{secrets.token_hex(4)}"
    post(plane, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    rbac = without(render_rbac(helm, f"rbac-{ns}", ns, scope), dropped)
    for doc in rbac:
        create_rbac(plane, doc, ns)
    (account,) = [d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"]
    token = plane.token_for_service_account(ns, account)
    use_kubeconfig(monkeypatch, plane.kubeconfig_for_token(token, f"sa-{ns}", namespace=ns))

    # The redis pod (no kubelet here: created by hand) and where its redis-server listens.
    post(plane, f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{NAME}-redis-0", "labels": redis_pod_labels(ns)},
        "spec": {"containers": [{"name": "redis", "image": "redis:7.2"}]}})
    for kind, worker in WORKERS.items():
        post(plane, f"/apis/apps/v1/namespaces/{ns}/{kind.lower()}s", {
            "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": worker},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": worker}},
                     "template": {"metadata": {"labels": {"app": worker}},
                                  "spec": {"containers": [{"name": "worker", "image": "busybox:1.36"}]}}}})
    port = free_port()
    address_map = tmp_path / f"addresses-{ns}.json"
    address_map.write_text(json.dumps({"redis": {f"{NAME}-redis-0": f"127.0.0.1:{port}"},
                                       "sentinel": {f"{NAME}-sentinel-0": f"127.0.0.2:{free_port()}"}}))
    # The operator reads its settings from the environment when it starts (older versions: at import).
    monkeypatch.setenv("REDIS_MESSAGING_ADDRESS_MAP", str(address_map))
    monkeypatch.setenv("REDIS_MESSAGING_METRICS_PORT", "0")
    monkeypatch.setenv("REDIS_MESSAGING_AUTOSCALE_TICK_SECONDS", "0.5")
    monkeypatch.setenv("REDIS_MESSAGING_STATUS_INTERVAL_SECONDS", "1")
    monkeypatch.setattr(handlers, "SETTINGS", OperatorSettings())

    user = f"system:serviceaccount:{ns}:{account}"
    run = Run(ns, user, time.time())
    watch = ["--namespace", ns] if scope == "namespaces" else ["--all-namespaces"]
    with contextlib.ExitStack() as stack:
        runner = KopfRunner(["run", "--standalone", *watch, "-m", "redis_messaging.handlers"], timeout=60)
        stack.enter_context(runner)
        post(plane, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", rmsg(NAME, SPEC))
        redis_started = False
        deadline = time.monotonic() + timeout
        while True:
            if not redis_started:
                secret = get(plane, f"/api/v1/namespaces/{ns}/secrets/{NAME}-auth")
                if secret is not None:
                    password = base64.b64decode(secret["data"]["password"]).decode()
                    stack.enter_context(redis_with_password(redis_binary, port, password, tmp_path / ns))
                    redis_started = True
                    backlog(port, password)
            run.forbidden = [e for e in plane.audit_events(run.started, user, stage=None)
                             if (e.get("responseStatus") or {}).get("code") == 403]
            run.missing = expected_state(plane, ns)
            run.reached = not run.missing
            if (dropped is not None and any(names_grant(e, dropped) for e in run.forbidden)) or run.reached \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if run.reached and dropped is None:
            # One more periodic pass: whatever it does must be allowed too.
            time.sleep(1.5)
            run.forbidden = [e for e in plane.audit_events(run.started, user, stage=None)
                             if (e.get("responseStatus") or {}).get("code") == 403]
        # Leave nothing for an operator watching the whole cluster in a later run.
        plane.request("DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{NAME}")
    run.output = runner.output
    run.seconds = time.time() - run.started
    return run


def names_grant(event: dict[str, Any], grant: Grant) -> bool:
    """Whether a 403 audit event is the API server refusing exactly ``grant``."""
    group, resource, verb = grant
    message = (event.get("responseStatus") or {}).get("message", "")
    if resource.endswith("/finalizers"):  # refused by OwnerReferencesPermissionEnforcement
        return "set finalizers on" in message
    ref = event.get("objectRef") or {}
    full = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (f'cannot {verb} resource "{resource}"' in message and full == resource
            and ref.get("apiGroup", "") == group)


# ---------------------------------------------------------------------------------------------
# tests


def test_rendered_grants_are_proven_or_listed_as_upcoming(helm: Helm) -> None:
    namespaced = rendered_grants(render_rbac(helm, "r", "team-a", "namespaces"))
    assert namespaced == set(PROVEN) | set(UPCOMING), (
        f"not in the chart: {sorted(set(PROVEN) | set(UPCOMING) - namespaced)}; "
        f"unexplained: {sorted(namespaced - set(PROVEN) - set(UPCOMING))}")
    cluster = rendered_grants(render_rbac(helm, "r", "team-a", "cluster"))
    assert cluster == namespaced - {("", "namespaces", "list"), ("", "namespaces", "watch")}


@pytest.mark.parametrize("scope", ["namespaces", "cluster"])
def test_operator_reaches_the_full_state_with_the_charts_rbac_only(
        plane: ControlPlane, helm: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        redis_server_binary: str, scope: str) -> None:
    run = run_operator(plane, helm, monkeypatch, tmp_path, redis_server_binary, scope=scope,
                       timeout=FULL_RUN_TIMEOUT)
    assert run.reached, f"after {run.seconds:.1f}s still missing: {run.missing}\n" + "\n".join(
        run.forbidden_lines()) + run.output[-3000:]
    assert run.forbidden == [], run.forbidden_lines()
    where = run.output.find("Traceback")
    assert where < 0, run.output[max(0, where - 1500):where + 3000]
    # The operator really ran as the ServiceAccount (and not, say, as a leftover admin kubeconfig).
    writes = plane.audit_events(run.started, run.user, run.namespace, {"create", "patch"})
    assert len(writes) >= len(CHILDREN)


@pytest.mark.parametrize("grant", sorted(PROVEN), ids=[f"{r}:{v}" for _, r, v in sorted(PROVEN)])
def test_every_grant_is_needed(plane: ControlPlane, helm: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                               redis_server_binary: str, grant: Grant) -> None:
    run = run_operator(plane, helm, monkeypatch, tmp_path, redis_server_binary, dropped=grant)
    refused = [e for e in run.forbidden if names_grant(e, grant)]
    assert refused, (
        f"without {grant} ({PROVEN[grant]}) the API server refused nothing of it in {run.seconds:.1f}s; "
        f"state reached: {run.reached}, missing: {run.missing}; other 403s: {run.forbidden_lines()}")

"""The operator installed as users install it (E2E_BACKEND=local only): the chart, installed with Helm,
whose Deployment's pod runs the operator with the chart's settings, identity and restrictions.
"""

from __future__ import annotations

import time
from typing import Any

from e2e_support import Cluster, eventually
from localcluster import OPERATOR_NAMESPACE, OPERATOR_RELEASE, OperatorPod

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def owner(obj: dict[str, Any]) -> tuple[str, str]:
    refs = obj["metadata"].get("ownerReferences") or []
    assert len(refs) == 1, refs
    return refs[0]["kind"], refs[0]["name"]


def test_the_operator_runs_as_the_pod_of_the_charts_deployment(cluster: Cluster, local_cluster: Any) -> None:
    operator = local_cluster.operator
    assert isinstance(operator, OperatorPod), "the local cluster runs the operator as a process, not a pod"
    pod = eventually(lambda: (p := cluster.get(OPERATOR_NAMESPACE, "pod", operator.name))
                     and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) and p,
                     timeout=60, interval=0.5, what="the operator's pod Ready (its startup probe on /healthz)")

    # the Deployment of a Helm release owns it
    kind, replica_set = owner(pod)
    assert kind == "ReplicaSet"
    assert owner(cluster.get(OPERATOR_NAMESPACE, "replicaset", replica_set)) == ("Deployment", OPERATOR_RELEASE)
    deployment = cluster.get(OPERATOR_NAMESPACE, "deployment", OPERATOR_RELEASE)
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    releases = cluster.kubectl("get", "secrets", "-n", OPERATOR_NAMESPACE, "-l", f"owner=helm,name={OPERATOR_RELEASE}",
                               "-o", "name")
    assert f"sh.helm.release.v1.{OPERATOR_RELEASE}.v" in releases

    # the chart's restrictions hold in the container: the image's UID, a read-only root, the token mounted
    runner = local_cluster.runner

    def run(*argv: str) -> Any:
        return runner.exec(OPERATOR_NAMESPACE, operator.name, list(argv), container="operator", timeout=30)

    status = run("cat", f"/proc/{operator.pid}/status")
    assert status.returncode == 0, status
    uids = next(line.split()[1:] for line in status.stdout.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}, uids
    written = run("touch", "/written-by-the-operator")
    assert written.returncode != 0, written
    assert "Read-only file system" in written.stdout + written.stderr, written
    assert run("cat", f"{TOKEN_DIR}/namespace").stdout == OPERATOR_NAMESPACE

    # it talks to the API server as the chart's ServiceAccount, through the `kubernetes` Service
    account = pod["spec"]["serviceAccountName"]
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"
    assert local_cluster.operator_user == user
    since = time.time() - 3600
    def verbs() -> set[str] | None:  # a watch is logged when it starts (and when it ends)
        seen = {e["verb"] for e in local_cluster.control_plane.audit_events(since=since, user=user, stage=None)}
        return seen if seen >= {"list", "watch"} else None

    eventually(verbs, timeout=60, interval=1, what=f"lists and watches of {user} in the audit log")
    assert local_cluster.relay.connections > 0, "nothing came through the `kubernetes` Service's relay"

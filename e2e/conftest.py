"""The e2e tier: a whole cluster with real pods (kind through e2e/run-kind.sh, or any cluster named
by E2E_KUBECONFIG with the operator installed by the chart).

Every test collected under e2e/ is marked `e2e`. Without a cluster the whole tier is skipped, with
the reason; nothing else is affected. On a failure, the test namespace's Events and the operator's
log are added to the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from e2e_support import Cluster, new_namespace_name

_HERE = Path(__file__).resolve().parent


def no_cluster_reason() -> str | None:
    """Why the e2e tier cannot run here, or None when it can."""
    path = os.environ.get("E2E_KUBECONFIG")
    if path:
        return None if Path(path).is_file() else f"E2E_KUBECONFIG={path} is not a file"
    missing = [tool for tool in ("docker", "kind") if shutil.which(tool) is None]
    if "docker" not in missing:
        engine = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
        if engine.returncode != 0:
            missing.append("running Docker engine")
    where = f"this machine has no {' and no '.join(missing)}" if missing else "Docker and kind are here"
    return (f"e2e tier needs a cluster: run `bash e2e/run-kind.sh` (Docker + kind; {where}), "
            "or set E2E_KUBECONFIG to a cluster where the chart is installed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if _HERE in item.path.resolve().parents]
    if not ours:
        return
    reason = no_cluster_reason()
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    return Cluster(Path(os.environ["E2E_KUBECONFIG"]))


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[str]:
    name = new_namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    request.node.e2e_namespace = name
    try:
        yield name
    finally:
        if os.environ.get("KEEP_E2E_NAMESPACES") != "1":
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when != "call" or not report.failed or "E2E_KUBECONFIG" not in os.environ:
        return report
    cluster = Cluster(Path(os.environ["E2E_KUBECONFIG"]))
    namespace = getattr(item, "e2e_namespace", None)
    if namespace:
        report.sections.append((f"events in {namespace}", cluster.events(namespace)))
        report.sections.append((f"pods in {namespace}", cluster.kubectl(
            "get", "pods,rmsg", "-n", namespace, "-o", "wide", check=False)))
    report.sections.append(("operator log", cluster.operator_log()))
    return report

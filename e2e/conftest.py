"""The e2e tier: a whole cluster with real pods, on one of two backends.

- kind (the default): kind through e2e/run-kind.sh, or any cluster named by E2E_KUBECONFIG with the
  operator installed by the chart.
- local (`E2E_BACKEND=local` or `--e2e-backend=local`): the local cluster of e2e/local, brought up
  once per session (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok's nodes, the
  pod runner playing the kubelet with the machine's redis-server and redis-sentinel), with the CRD,
  the chart installed with Helm: the operator runs as its Deployment's pod. No Docker needed; Linux and
  root are.

Every test collected under e2e/ is marked `e2e`. Without a cluster the whole tier is skipped, with
the reason (where RMSG_REQUIRE_TIERS names e2e, as in CI, each of its tests fails instead); nothing
else is affected. On a failure, the test namespace's Events and pods, and the operator's log, are
added to the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import required_tiers
from e2e_support import Cluster, LocalBackend, new_namespace_name

_HERE = Path(__file__).resolve().parent
_LOCAL = _HERE / "local"
BACKENDS = ("kind", "local")
_ACTIVE: dict[str, Cluster] = {}  # the session's cluster, for the report hook


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e-backend", choices=BACKENDS, default=None,
                     help="the cluster the e2e tier runs against: kind (E2E_KUBECONFIG, the default) or local "
                          "(e2e/local, no Docker); default from E2E_BACKEND")


def pytest_configure(config: pytest.Config) -> None:
    # With RMSG_REQUIRE_TIERS=...,e2e (bash .ci/run), a skipped scenario fails (tests/support/required_tiers.py).
    required_tiers.register(config)


def backend(config: pytest.Config) -> str:
    chosen = config.getoption("--e2e-backend", default=None) or os.environ.get("E2E_BACKEND") or "kind"
    if chosen not in BACKENDS:
        raise pytest.UsageError(f"E2E_BACKEND={chosen}: use one of {', '.join(BACKENDS)}")
    return str(chosen)


def _local_module() -> Any:
    if str(_LOCAL) not in sys.path:
        sys.path.insert(0, str(_LOCAL))
    import localcluster

    return localcluster


def no_cluster_reason(config: pytest.Config | None = None) -> str | None:
    """Why the e2e tier cannot run here, or None when it can."""
    if config is not None and backend(config) == "local":
        reason = _local_module().missing_requirements()
        return None if reason is None else f"e2e tier on the local cluster (E2E_BACKEND=local): {reason}"
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
            "set E2E_KUBECONFIG to a cluster where the chart is installed, "
            "or use the local cluster: E2E_BACKEND=local (bash .ci/local-cluster.sh)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if _HERE in item.path.resolve().parents]
    if not ours:
        return
    reason = no_cluster_reason(config)
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The local cluster with the operator running (E2E_BACKEND=local only)."""
    if backend(request.config) != "local":
        pytest.skip("needs the local cluster (E2E_BACKEND=local)")
    localcluster = _local_module()
    with localcluster.LocalCluster() as local:
        local.start_operator()
        try:
            yield local
        finally:
            timings = ", ".join(f"{k} {v:.1f}s" for k, v in local.timings.items())
            sys.stderr.write(f"\nlocal cluster: {timings}\n")
    # Stopped: nothing of it may be left (processes, pod namespaces, the bridge).
    left = local.leftovers()
    assert not left, "the local cluster left behind:\n" + "\n".join(left)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    if backend(request.config) == "local":
        local = request.getfixturevalue("local_cluster")
        found: Cluster = LocalBackend(local.kubeconfig, local=local)
    else:
        found = Cluster(Path(os.environ["E2E_KUBECONFIG"]))
    _ACTIVE["cluster"] = found
    return found


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
    if report.when != "call" or not report.failed:
        return report
    cluster = _ACTIVE.get("cluster")
    if cluster is None:
        if "E2E_KUBECONFIG" not in os.environ:
            return report
        cluster = Cluster(Path(os.environ["E2E_KUBECONFIG"]))
    namespace = getattr(item, "e2e_namespace", None)
    if namespace:
        report.sections.append((f"events in {namespace}", cluster.events(namespace)))
        report.sections.append((f"pods in {namespace}", cluster.kubectl(
            "get", "pods,rmsg", "-n", namespace, "-o", "wide", check=False)))
        if isinstance(cluster, LocalBackend):
            report.sections.append((f"container logs in {namespace}", cluster.container_logs(namespace)))
    report.sections.append(("operator log", cluster.operator_log()))
    return report


_FIGURES: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the figures a scenario prints (lines starting "[e2e]", "[chaos]" or, from a bench smoke,
    "[bench]"), passed or not."""
    if report.when == "call":
        _FIGURES.extend(line for line in report.capstdout.splitlines()
                        if line.startswith(("[e2e]", "[chaos]", "[bench]")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("figures the scenarios printed")
        for line in _FIGURES:
            terminalreporter.write_line(line)

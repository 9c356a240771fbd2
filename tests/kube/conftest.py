"""Fixtures of the `kube` tier: one real etcd + kube-apiserver per session (see controlplane.py).

Every test collected under tests/kube is marked `kube`. Without binaries (neither KUBEBUILDER_ASSETS
nor the cache of .ci/control-plane.sh holds them) the tests that need the control plane skip.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import AssetsNotFoundError, ControlPlane, locate_assets
from kubernetes import client
from kubernetes.client.exceptions import ApiException

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The hook sees every collected item of the session; mark only this directory's.
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.kube)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver, started once per session and stopped at its end."""
    try:
        assets = locate_assets()
    except AssetsNotFoundError as exc:
        pytest.skip(str(exc))
    with ControlPlane(assets) as cp:
        yield cp


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient authenticated as the `admin` identity (system:masters)."""
    with contextlib.closing(control_plane.api_client()) as api:
        yield api


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    base = base.removeprefix("test-")[:40].rstrip("-") or "test"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards.

    Without a controller-manager the namespace only goes Terminating and its contents stay in etcd;
    the random suffix keeps tests apart.
    """
    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def operator_kubeconfig(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The `operator` identity's kubeconfig, also set as KUBECONFIG for the duration of the test.

    The kubernetes client reads KUBECONFIG once, at import, into KUBE_CONFIG_DEFAULT_LOCATION (which
    load_kube_config() without a path, and so kopf's login, use): that default is patched as well.
    KUBERNETES_SERVICE_HOST/PORT are removed, so clients that try in-cluster config first (kopf,
    kubernetes.config.load_config) use this kubeconfig even when the tests run inside a pod.
    """
    path = control_plane.operator_kubeconfig
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    for module_name in _KUBE_CONFIG_MODULES:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "KUBE_CONFIG_DEFAULT_LOCATION"):
            monkeypatch.setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return path


# Modules imported later read the patched KUBECONFIG themselves.
_KUBE_CONFIG_MODULES = (
    "kubernetes.config",
    "kubernetes.config.kube_config",
    "kubernetes_asyncio.config",
    "kubernetes_asyncio.config.kube_config",
)


@pytest.fixture
def needs_controllers(control_plane: ControlPlane) -> None:
    """For tests that need the controllers of kube-controller-manager (StatefulSets, Deployments, PVs)."""
    if not control_plane.has_controller_manager:
        pytest.skip("needs kube-controller-manager (workload and volume controllers) from .ci/control-plane.sh")


_FIGURES: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the figures a test prints (lines starting "[runtime]"), passed or not."""
    if report.when == "call":
        _FIGURES.extend(line for line in report.capstdout.splitlines() if line.startswith("[runtime]"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("figures the kube tier printed")
        for line in _FIGURES:
            terminalreporter.write_line(line)

"""The Helm client of the chart tests: the version pinned in charts/build-helm.sh, from its cache.

Shared by tests/ship (offline: lint, template) and tests/kube/test_chart.py, test_rbac.py (install
into a real kube-apiserver), which put this directory on sys.path.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "redis-messaging-operator"
BUILD_SCRIPT = ROOT / "charts" / "build-helm.sh"


def pinned_version() -> str:
    match = re.search(r'^HELM_VERSION="\$\{HELM_VERSION:-(v[0-9.]+)\}"', BUILD_SCRIPT.read_text(), re.M)
    assert match, f"no HELM_VERSION pin in {BUILD_SCRIPT}"
    return match.group(1)


def cache_dir() -> Path:
    """Where charts/build-helm.sh (and .ci/control-plane.sh) cache what they build."""
    if os.environ.get("RMSG_CACHE"):
        return Path(os.environ["RMSG_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "redis-messaging-operator"


def locate_helm() -> Path | None:
    """$HELM if set, else the binary charts/build-helm.sh builds for the pinned version."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    candidate = cache_dir() / f"helm-{os.environ.get('HELM_VERSION') or pinned_version()}" / "helm"
    return candidate if os.access(candidate, os.X_OK) else None


def missing_helm_reason() -> str:
    return (f"no helm {pinned_version()} in {cache_dir()}: build it with `bash charts/build-helm.sh` "
            "(needs Go), or point HELM at a helm binary")


@dataclass(frozen=True)
class Helm:
    binary: Path

    def run(self, *args: str, check: bool = True, kubeconfig: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": "/tmp/rmsg-helm/cache",
               "HELM_CONFIG_HOME": "/tmp/rmsg-helm/config", "HELM_DATA_HOME": "/tmp/rmsg-helm/data"}
        env.pop("KUBECONFIG", None)  # only the kubeconfig a test passes, never the developer's cluster
        cmd = [str(self.binary), *args]
        if kubeconfig is not None:
            cmd += ["--kubeconfig", str(kubeconfig)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result

    def template_text(self, *values: str, release: str = "rmo", namespace: str = "redis-messaging") -> str:
        """`helm template` of the chart with `--set` values; the rendered text, comments included."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        for value in values:
            args += ["--set", value]
        return self.run(*args).stdout

    def template(self, *values: str, release: str = "rmo", namespace: str = "redis-messaging") -> list[dict[str, Any]]:
        return documents(self.template_text(*values, release=release, namespace=namespace))


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]

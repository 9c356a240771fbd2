"""The benches of the `kube` tier, as README gives them, at their --smoke size: each starts its own
control plane (tests/kube/controlplane.py) and redis-server processes on loopback. The commands cannot
rot unnoticed (tests/support/bench_smoke.py); the full runs stay out of CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench_smoke import run_smoke
from controlplane import AssetsNotFoundError, locate_assets
from helpers import redis_server_helper

_server = redis_server_helper()


def assets() -> Path:
    """The control plane's binaries and a redis-server; skips (with the way to get them) without."""
    _server.redis_server_binary()
    try:
        return locate_assets()
    except AssetsNotFoundError as exc:
        pytest.skip(str(exc))


def test_failover_bench_runs_as_readme_gives_it() -> None:
    assets()
    # the operator's share is measured only with the control plane: both figures of README's table
    run_smoke("failover", timeout=240, figures=[
        "kill -> first accepted write: median", "operator's share (+switch-master -> labels and status moved)"])


def test_autoscale_e2e_bench_runs_as_readme_gives_it() -> None:
    if not os.access(assets() / "kube-controller-manager", os.X_OK):
        pytest.skip("needs kube-controller-manager (workload and volume controllers) from .ci/control-plane.sh")
    run_smoke("autoscale_e2e", timeout=240, figures=["crossing -> patch (audit log):", "tick start -> patch answered:"])

"""bench/scale.py as README gives it, at its --smoke size (E2E_BACKEND=local only): N = 3 resources,
one with real Redis, on a local cluster of its own that runs next to the session's (several may run at
once, each on its own subnet and bridge). The command cannot rot unnoticed
(tests/support/bench_smoke.py); the full runs stay out of CI."""

from __future__ import annotations

import os

import pytest
from bench_smoke import run_smoke


def test_scale_bench_runs_as_readme_gives_it(request: pytest.FixtureRequest) -> None:
    chosen = request.config.getoption("--e2e-backend", default=None) or os.environ.get("E2E_BACKEND") or "kind"
    if chosen != "local":
        pytest.skip("needs the local cluster (E2E_BACKEND=local)")
    run_smoke("scale", timeout=420, figures=[
        "RSS while creating", "RSS at idle", "API requests at idle", "spec change -> StatefulSet",
        "+switch-master -> labels"])

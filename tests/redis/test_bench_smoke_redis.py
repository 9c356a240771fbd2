"""The benches of the `redis` tier, as README gives them, at their --smoke size (seconds each): the
commands cannot rot unnoticed (tests/support/bench_smoke.py). The full runs stay out of CI."""

from __future__ import annotations

import shutil

import engines
import pytest
from _server import redis_server_binary
from bench_smoke import run_smoke

pytestmark = pytest.mark.redis


def test_reshard_bench_runs_as_readme_gives_it() -> None:
    redis_server_binary()
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not found: apt-get install -y redis-tools")
    run_smoke("reshard", timeout=180, figures=[
        "operator, key by key:", "redis-cli --cluster rebalance:", "ratio key by key / redis-cli:",
        "longest client wait"])


def test_reshard_bench_runs_on_valkey_9_as_readme_gives_it() -> None:
    """On Valkey 9 the bench adds the engine's atomic migration (built by .ci/setup.sh on every machine)."""
    where = engines.engine_dir("valkey-9.1")
    if not (where / "redis-server").exists():
        pytest.skip(f"valkey-9.1 not built in {where}: bash .ci/build-engine.sh valkey-9.1")
    run_smoke("reshard", "--engine", "valkey-9.1", timeout=240, figures=[
        "operator, key by key:", "operator, atomic:", "valkey-cli --cluster rebalance:",
        "ratio atomic / valkey-cli:", "ratio atomic / key by key:"])


def test_autoscale_bench_runs_as_readme_gives_it() -> None:
    redis_server_binary()
    run_smoke("autoscale", timeout=120, figures=[
        "pipelined (collect):", "one round trip per group:", "ratio (median):", "collect + decide:"])

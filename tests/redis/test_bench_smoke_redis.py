"""The benches of the `redis` tier, as README gives them, at their --smoke size (seconds each): the
commands cannot rot unnoticed (tests/support/bench_smoke.py). The full runs stay out of CI."""

from __future__ import annotations

import shutil

import pytest
from _server import redis_server_binary
from bench_smoke import run_smoke

pytestmark = pytest.mark.redis


def test_reshard_bench_runs_as_readme_gives_it() -> None:
    redis_server_binary()
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not found: apt-get install -y redis-tools")
    run_smoke("reshard", timeout=180, figures=[
        "operator (pipelined batches) :", "redis-cli --cluster rebalance:", "ratio ours / redis-cli"])


def test_autoscale_bench_runs_as_readme_gives_it() -> None:
    redis_server_binary()
    run_smoke("autoscale", timeout=120, figures=[
        "pipelined (collect):", "one round trip per group:", "ratio (median):", "collect + decide:"])

"""The benches that need no binaries (no redis-server, no control plane), as README gives them, at their
--smoke size (seconds each): the commands cannot rot unnoticed (tests/support/bench_smoke.py). The full
runs stay out of CI."""

from __future__ import annotations

from bench_smoke import run_smoke


def test_autoscale_sim_bench_runs_as_readme_gives_it() -> None:
    run_smoke("autoscale_sim", timeout=120, figures=[
        "trace steady:", "trace spike:", "ours: p99 wait <= 0.25 x KEDA default:",
        "ours, drain 10s: replica-s <= KEDA fast:", "targets met"])

"""bench/autoscale_live.py as README gives it, at its --smoke size (E2E_BACKEND=local only): the step
trace 40 times shorter replayed on the session's local cluster with real consumers, and the simulator
on the same arrivals. The command cannot rot unnoticed (tests/support/bench_smoke.py); the figures of a
smoke mean nothing, so none is judged here beyond the run completing, every message added and the
comparison printed."""

from __future__ import annotations

import secrets
import sys
from typing import Any

import pytest
from bench_smoke import load_bench


@pytest.mark.usefixtures("cluster")  # the session's cluster: the operator's log joins a failure's report
def test_autoscale_live_bench_runs_as_readme_gives_it(local_cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--smoke", "--namespace", f"e2e-autoscale-live-{secrets.token_hex(3)}"]
    code = load_bench("autoscale_live").main(argv, local=local_cluster)
    out = capsys.readouterr().out
    sys.stdout.write(out)  # the run's own lines, in the report of a failure
    assert code == 0, f"bench/autoscale_live.py {' '.join(argv)} exited {code}:\n{out[-6000:]}"
    for figure in ("live start-up", "wait until delivered, p99", "replica-seconds", "most replicas asked for",
                   "the simulator agrees with the live run on"):
        assert figure in out, f"bench/autoscale_live.py printed no '{figure}':\n{out[-6000:]}"

"""Nothing acknowledged is lost under faults (E2E_BACKEND=local only): the nemesis of e2e/nemesis.py,
a few seeds per mode.

Each seed is one run: a fresh resource under load (writes acknowledged by ``WAIT 1``, stream entries,
a consumer group), the seed's faults one after the other, each healed and recovered from, then the
checker (every acknowledged write and entry on every Redis that should hold it, every entry delivered,
nothing pending on a consumer that is gone, one topology everybody agrees on). The seeds move on with
every commit (``nemesis.ci_seeds``), so the kinds of fault rotate; ``RMSG_NEMESIS_SEEDS`` names others
("3,7", or "sentinel:3;cluster:5,6"). ``.venv/bin/python bench/nemesis.py`` runs many more.

Each seed goes through bench/nemesis.py's entry point (``main(["--mode", M, "--seed", S, "--runs",
"1"])``) on the session's local cluster: the command README gives is what CI runs, one run per seed,
so it cannot rot unnoticed (tests/support/bench_smoke.py); the test fails when it exits non-zero or
prints no table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nemesis
import pytest
from bench_smoke import load_bench

CASES = [(mode, seed) for mode in nemesis.MODES for seed in nemesis.ci_seeds(mode)]


def case_id(mode: str, seed: int) -> str:
    return f"{mode}-seed-{seed}-{nemesis.make_plan(mode, seed).faults[0].kind}"


@pytest.fixture
def local(local_cluster: Any) -> Iterator[Any]:
    """The local cluster; its operator runs again after the test whatever happened to it."""
    yield local_cluster
    if local_cluster.operator is None or not local_cluster.operator.alive():
        local_cluster.start_operator()


@pytest.mark.usefixtures("cluster")  # the session's cluster: the operator's log joins a failure's report
@pytest.mark.parametrize(("mode", "seed"), CASES, ids=[case_id(m, s) for m, s in CASES])
def test_nothing_acknowledged_is_lost_under_faults(local: Any, mode: str, seed: int, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--mode", mode, "--seed", str(seed), "--runs", "1", "--keep", str(tmp_path)]
    code = load_bench("nemesis").main(argv, local=local)
    out = capsys.readouterr().out
    sys.stdout.write(out)  # the run's own lines, in the report of a failure
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines() if line.strip()]
    for r in records:
        recovered = ", ".join(f"{f['kind']} {f['recover_seconds']:.1f}s" for f in r["faults"]
                              if f["recover_seconds"] is not None) or "-"
        print(f"\n[chaos] nemesis {mode} seed {seed} ({r['plan']}): {r['acked_writes']} writes and "
              f"{r['acked_entries']} entries acknowledged, {r['lost']} lost; recovered after {recovered}; "
              f"{r['seconds']:.0f}s")
    assert f"{mode}: 1 runs" in out, f"bench/nemesis.py printed no table:\n{out[-3000:]}"
    assert "fault kind" in out, f"bench/nemesis.py printed no table:\n{out[-3000:]}"
    assert code == 0, (f"bench/nemesis.py {' '.join(argv)} exited {code}:\n{out[-6000:]}\n  or: "
                       f"RMSG_NEMESIS_SEEDS={mode}:{seed} E2E_BACKEND=local .venv/bin/python -m pytest -m e2e "
                       f"{Path(__file__).relative_to(nemesis.ROOT)}")
    assert [r["ok"] for r in records] == [True], records

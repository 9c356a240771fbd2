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
prints no table. The upgrades across engines (``--upgrade IMAGE``) run here too (below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engines
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


def run_nemesis(local: Any, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                what: str) -> tuple[int, str, list[dict[str, Any]]]:
    """bench/nemesis.py's entry point with ``argv`` (one run) on the session's local cluster: its exit
    code, its output and its record of the run; a line per run for the report."""
    code = load_bench("nemesis").main([*argv, "--runs", "1", "--keep", str(tmp_path)], local=local)
    out = capsys.readouterr().out
    sys.stdout.write(out)  # the run's own lines, in the report of a failure
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines() if line.strip()]
    for r in records:
        recovered = ", ".join(f"{f['kind']} {f['recover_seconds']:.1f}s" for f in r["faults"]
                              if f["recover_seconds"] is not None) or "-"
        notes = "; ".join(n for f in r["faults"] for n in f.get("notes", []))
        print(f"\n[chaos] {what} ({r['plan']}): {r['acked_writes']} writes and {r['acked_entries']} entries "
              f"acknowledged, {r['lost']} lost; recovered after {recovered}; {r['seconds']:.0f}s"
              + (f" ({notes})" if notes else ""))
    return code, out, records


@pytest.mark.usefixtures("cluster")  # the session's cluster: the operator's log joins a failure's report
@pytest.mark.parametrize(("mode", "seed"), CASES, ids=[case_id(m, s) for m, s in CASES])
def test_nothing_acknowledged_is_lost_under_faults(local: Any, mode: str, seed: int, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--mode", mode, "--seed", str(seed)]
    code, out, records = run_nemesis(local, argv, tmp_path, capsys, f"nemesis {mode} seed {seed}")
    assert f"{mode}: 1 runs" in out, f"bench/nemesis.py printed no table:\n{out[-3000:]}"
    assert "fault kind" in out, f"bench/nemesis.py printed no table:\n{out[-3000:]}"
    assert code == 0, (f"bench/nemesis.py {' '.join(argv)} exited {code}:\n{out[-6000:]}\n  or: "
                       f"RMSG_NEMESIS_SEEDS={mode}:{seed} E2E_BACKEND=local .venv/bin/python -m pytest -m e2e "
                       f"{Path(__file__).relative_to(nemesis.ROOT)}")
    assert [r["ok"] for r in records] == [True], records


# Upgrades across engines: a resource of each mode created on redis:7.2 (played by Debian's Redis 7.0),
# under the same load, has its spec.image changed to another engine; every pod rolls through the ordered
# rolling update, status.engine ends naming only the new engine, and the checker finds every acknowledged
# write and entry, the group's deliveries and one topology. The paths are those the operator supports
# (redis/engine.py): Redis 7.x to Valkey 8 and 9, and to Redis 8.
#
# Two runs per commit (about 70 s each): Valkey 9.1 in one mode, and the engine of this commit's rotation
# (.ci/build-engine.sh ci, which .ci/setup.sh builds) in the other, the modes swapping with the commits:
# every path in both modes within six commits. RMSG_UPGRADES=all runs every path whose engine is built,
# in both modes. A path whose engine is not built is not collected (nothing is skipped).
UPGRADES = {"valkey-9.1": "valkey/valkey:9.1", "valkey-8.1": "valkey/valkey:8.1", "redis-8.0": "redis:8.0"}


def upgrade_cases() -> list[tuple[str, str]]:
    built = [engine for engine in UPGRADES if (engines.engine_dir(engine) / "redis-server").exists()]
    if os.environ.get("RMSG_UPGRADES", "").strip() == "all":
        return [(mode, UPGRADES[engine]) for engine in built for mode in nemesis.MODES]
    rotation = subprocess.run(["bash", str(nemesis.ROOT / ".ci" / "build-engine.sh"), "ci"], capture_output=True,
                              text=True, timeout=60, check=False).stdout.strip()
    first = nemesis.ci_seeds("sentinel", count=1)[0] % 2  # moves on with the commits
    modes = (nemesis.MODES[first], nemesis.MODES[1 - first])
    chosen = [(modes[0], "valkey-9.1"), (modes[1], rotation if rotation in UPGRADES else "valkey-9.1")]
    return [(mode, UPGRADES[engine]) for mode, engine in chosen if engine in built]


UPGRADE_CASES = upgrade_cases()


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize(("mode", "image"), UPGRADE_CASES,
                         ids=[f"{m}-{i.rsplit('/', 1)[-1]}" for m, i in UPGRADE_CASES])
def test_an_upgrade_to_another_engine_loses_nothing_acknowledged(local: Any, mode: str, image: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--mode", mode, "--upgrade", image, "--seed", "0"]
    code, out, records = run_nemesis(local, argv, tmp_path, capsys, f"upgrade {mode} {nemesis.IMAGE} -> {image}")
    assert f"{mode}: 1 runs" in out, f"bench/nemesis.py printed no table:\n{out[-3000:]}"
    assert code == 0, f"bench/nemesis.py {' '.join(argv)} exited {code}:\n{out[-6000:]}"
    assert [r["ok"] for r in records] == [True], records
    assert records[0]["acked_writes"] > 0

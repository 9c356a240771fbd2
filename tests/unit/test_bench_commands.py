"""Every bench of bench/ runs as README gives it, and CI runs it.

What rots a bench unnoticed: its imports (it reuses the test tiers' helpers, which pytest's pythonpath
finds and a bare `python bench/x.py` did not), README's command, its ``--smoke``, and a smoke test in
CI. Checked here in seconds on any machine; the smokes themselves run in the tier whose binaries each
bench needs (tests/support/bench_smoke.py: tests/unit, tests/redis, tests/kube, e2e/local).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench_smoke import BENCH, README, ROOT, bench_names, load_bench, readme_commands


def test_readme_gives_each_bench_its_command_with_the_projects_interpreter() -> None:
    assert sorted(readme_commands()) == bench_names()
    # `python bench/...`: a fresh Debian machine has no `python`, and a bare python3 lacks the dependencies
    other = [m for m in re.findall(r"`[^`\n]*\bpython[0-9.]*\s[^`\n]*\bbench/[a-z0-9_]+\.py[^`\n]*`",
                                   README.read_text())
             if not m.startswith("`.venv/bin/python bench/")]
    assert other == [], f"README gives bench commands other than `.venv/bin/python bench/<name>.py`: {other}"


def test_ci_runs_each_bench() -> None:
    sources = "\n".join(p.read_text() for d in ("tests", "e2e") for p in (ROOT / d).rglob("test_*.py")
                        if p.resolve() != Path(__file__).resolve())
    unsmoked = [n for n in bench_names() if f'run_smoke("{n}"' not in sources and f'load_bench("{n}")' not in sources]
    assert unsmoked == [], f"benches no test runs (tests/support/bench_smoke.py: run_smoke): {unsmoked}"


def base_python() -> str:
    """An interpreter other than the project's virtualenv: the one it was made from (no dependencies)."""
    for candidate in (Path(sys.base_prefix) / "bin" / "python3", Path(sys.base_prefix) / "bin" / "python"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return sys.executable


def test_each_bench_starts_from_any_directory_with_any_python_and_has_a_smoke(tmp_path: Path) -> None:
    """`<python> /path/to/bench/x.py --help` from elsewhere: the bench re-executes on .venv's Python and
    imports what it needs relative to its own file (tests/support/tls_certs.py was missing)."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in the checkout (bash .ci/setup.sh makes it)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RMSG_BENCH_IN_VENV")}
    started = {name: subprocess.Popen([base_python(), str(BENCH / f"{name}.py"), "--help"], cwd=tmp_path, env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name in bench_names()}
    failed = {}
    for name, process in started.items():
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            failed[name] = f"no answer within 120 s: {err[-2000:]}"
            continue
        if process.returncode != 0:
            failed[name] = f"exit {process.returncode}: {err[-2000:]}"
        elif "--smoke" not in out:
            failed[name] = "no --smoke in its --help"
    assert failed == {}


@pytest.fixture
def bench_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench imported in-process puts the repository's directories on sys.path: undone afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.mark.usefixtures("bench_imports")
def test_the_nemesis_smoke_is_one_run_per_mode_whose_only_fault_kills_a_redis_server() -> None:
    bench = load_bench("nemesis")
    nemesis = sys.modules["nemesis"]
    smoke = bench.seeds(argparse.Namespace(mode="both", smoke=True, seed=None, runs=10))
    assert sorted(smoke) == sorted(nemesis.MODES)
    for mode, seeds in smoke.items():
        assert len(seeds) == 1
        assert [f.kind for f in nemesis.make_plan(mode, seeds[0]).faults] == ["kill-redis"]
    assert bench.seeds(argparse.Namespace(mode="cluster", smoke=False, seed=7, runs=3)) == {"cluster": [7, 8, 9]}


@pytest.mark.usefixtures("bench_imports")
def test_a_scale_run_that_does_not_settle_or_misses_a_figure_is_incomplete() -> None:
    scale = load_bench("scale")
    opts = scale.Options(count=3, real=1, resync=5.0, settle=5.0, idle=10.0, changes=3, failovers=1,
                         create_timeout=300.0)

    def figures(**values: object) -> object:
        fig = scale.Figures(3, 1, 5.0)
        fig.create_seconds, fig.idle_requests = 20.0, 4
        fig.spec, fig.failover = [0.05, 0.06, 0.07], [0.03]
        for key, value in values.items():
            setattr(fig, key, value)
        return fig

    assert scale.missing(figures(), opts) == []
    not_settled = "not settled within 304.5s of the creation (the figures below were taken anyway): {...}"
    assert scale.missing(figures(notes=[not_settled]), opts) == [
        "not settled within 304.5s of the creation (the figures below were taken anyway)"]
    assert scale.missing(figures(idle_requests=None), opts) == ["no idle figures"]
    assert scale.missing(figures(create_seconds=None), opts) == ["no creation figures"]
    assert scale.missing(figures(failover=[]), opts) == ["1 of 1 failovers not measured"]
    assert scale.missing(figures(spec=[0.05]), opts) == ["2 of 3 spec changes not measured"]
    assert scale.missing(figures(notes=["the operator exited during the run; its log's end:\n..."]), opts) == [
        "the operator exited during the run; its log's end"]

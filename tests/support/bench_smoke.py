"""The benchmarks of bench/ run in CI the way README gives them, at their --smoke size.

Each bench has a smoke test in the tier whose binaries it needs (tests/unit for a bench that needs none,
tests/redis, tests/kube, e2e/local):
:func:`run_smoke` takes the command README gives for the bench (``.venv/bin/python bench/<name>.py``),
adds ``--smoke`` and runs it from the repository's root as a subprocess with a timeout; the test fails
when it exits non-zero, times out, or does not print the figures the full run prints. bench/nemesis.py
goes through its entry point in-process instead (:func:`load_bench`, e2e/local/test_nemesis.py): it
needs the e2e session's local cluster. tests/unit/test_bench_commands.py checks that every bench has a
README command, a ``--smoke`` and one of these tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
README = ROOT / "README.md"
# a command README gives: in backquotes, the project's interpreter and a script of bench/
COMMAND = re.compile(r"`(\.venv/bin/python bench/([a-z0-9_]+)\.py)[ `]")
# what the smoke subprocess gets on SIGINT before it is killed: its context managers stop what it started
GRACE = 30.0


def bench_names() -> list[str]:
    """Every bench: the scripts of bench/ (a name starting with ``_`` is a helper)."""
    return sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def readme_commands() -> dict[str, str]:
    """bench name -> the first command README gives for it (interpreter and script)."""
    found: dict[str, str] = {}
    for command, name in COMMAND.findall(README.read_text()):
        found.setdefault(name, command)
    return found


def run_smoke(name: str, *options: str, timeout: float, figures: list[str]) -> str:
    """Run README's command for bench ``name`` with ``options`` (ones README names with it) and
    ``--smoke``; its stdout. Fails the test when the command is missing from README, exits non-zero,
    takes longer than ``timeout`` seconds, or prints none of one of ``figures`` (substrings of the lines
    the full run prints)."""
    command = readme_commands().get(name)
    if command is None:
        pytest.fail(f"README.md gives no `.venv/bin/python bench/{name}.py` command")
    argv = [*shlex.split(command), *options, "--smoke"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the bench finds its own imports
    began = time.monotonic()
    # a session of its own: on a timeout, SIGINT reaches the bench (and nothing of pytest), whose
    # cleanup stops the processes it started; what is left after GRACE is killed with the group
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            out, err = process.communicate(timeout=GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        pytest.fail(f"`{shlex.join(argv)}` did not finish within {timeout:g}s\n--- stdout\n{out[-6000:]}\n"
                    f"--- stderr\n{err[-6000:]}")
    took = time.monotonic() - began
    assert process.returncode == 0, (f"`{shlex.join(argv)}` exited {process.returncode} after {took:.0f}s\n"
                                     f"--- stdout\n{out[-6000:]}\n--- stderr\n{err[-6000:]}")
    absent = [f for f in figures if f not in out]
    assert not absent, f"`{shlex.join(argv)}` printed none of {absent}\n--- stdout\n{out[-6000:]}"
    print(f"[bench] {shlex.join(argv)}: {took:.1f}s")
    for line in out.splitlines():
        if any(f in line for f in figures):
            print(f"[bench]   {line.strip()}")
    return out


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as the module ``bench_<name>`` (e2e/nemesis.py, for one, already is ``nemesis``),
    to call its ``main`` in-process."""
    module_name = f"bench_{name}"
    if module_name not in sys.modules:
        if str(BENCH) not in sys.path:
            sys.path.append(str(BENCH))  # its `import _project`
        spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]

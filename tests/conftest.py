"""Shared by every tier under tests/: with RMSG_REQUIRE_TIERS set (`bash .ci/run` sets it), a skipped test
of a required tier fails (tests/support/required_tiers.py; e2e/conftest.py registers the same). RMSG_ENGINE
names the engine the `redis` tier runs on (tests/support/engines.py). The
figures the bench smokes print (lines starting "[bench]", tests/support/bench_smoke.py) are repeated at
the end of the run."""

from __future__ import annotations

from typing import Any

import engines
import pytest
import required_tiers


def pytest_configure(config: pytest.Config) -> None:
    required_tiers.register(config)
    engines.register(config)


def pytest_report_header(config: pytest.Config) -> str:
    return engines.header()


_BENCH: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _BENCH.extend(line for line in report.capstdout.splitlines() if line.startswith("[bench]"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _BENCH:
        terminalreporter.section("figures the bench smokes printed (--smoke sizes: not README's figures)")
        for line in _BENCH:
            terminalreporter.write_line(line)

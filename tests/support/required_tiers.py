"""Tiers that must run: a skip that CI does not accept.

The `redis`, `kube` and `e2e` tiers skip, with the reason, when their binaries or their cluster are
missing: on a laptop without them, that is what should happen. On a machine that .ci/setup.sh set up
(CI), the same skip means a tier silently stopped being tested. With RMSG_REQUIRE_TIERS naming tiers
(`bash .ci/run` sets `redis,kube,e2e`), a test of one of them that skips fails instead, saying why
it skipped; so does a module of a tier's directory that skips as a whole. Nothing else changes:
passes, failures, expected failures (xfail), and pytest's exit code 5 when nothing was collected.

A test belongs to the tier whose marker it carries (tests/kube and e2e/ mark theirs in their
conftest.py, tests/redis with `pytestmark`). A few skips say something true about the run, not
about the machine; they stay skips (ALLOWED_SKIPS, each with why).

Registered by the conftest.py of tests/ and of e2e/ (`register(config)` in `pytest_configure`).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

ENV = "RMSG_REQUIRE_TIERS"
PLUGIN_NAME = "rmsg-required-tiers"
# tier (its marker) -> its directory, for modules that skip before their items (and markers) exist
TIERS = {"redis": "tests/redis", "kube": "tests/kube", "e2e": "e2e"}

# The beginning of a skip reason -> why that skip is no missing binary and stays a skip.
ALLOWED_SKIPS = {
    "another test of this session left monitoring.coreos.com/v1 served":
        "tests/kube/test_monitoring_objects.py needs the Prometheus Operator's CRDs absent from the session's "
        "control plane, and a test that ran before it served them: the order of the run, not the machine",
    "kwok never handed the freed IP to the next pod":
        "e2e/local/test_local_network.py needs kwok to give a freed IP to the next pod, which it does only while "
        "pods of other namespaces free no lower one: the timing of the run, not the machine",
    "needs the local cluster (E2E_BACKEND=local)":
        "scenarios of e2e/local on another backend (kind, E2E_KUBECONFIG): chosen, not missing",
}


def required_tiers(value: str | None) -> frozenset[str]:
    """The tiers RMSG_REQUIRE_TIERS names (comma-separated); an unknown name is a usage error."""
    names = frozenset(n.strip() for n in (value or "").split(",") if n.strip())
    unknown = sorted(names - TIERS.keys())
    if unknown:
        raise pytest.UsageError(f"{ENV}={value}: unknown tier {', '.join(unknown)} (known: {', '.join(TIERS)})")
    return names


def allowed(reason: str) -> bool:
    return any(reason.startswith(prefix) for prefix in ALLOWED_SKIPS)


def _reason(longrepr: object) -> str:
    # a skip's longrepr is (path, line, "Skipped: <reason>")
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


class RequiredTiers:
    def __init__(self, tiers: frozenset[str], rootpath: Path) -> None:
        self.tiers = tiers
        self.dirs = {tier: rootpath / TIERS[tier] for tier in tiers}

    def _message(self, tier: str, reason: str) -> str:
        return (f"the {tier} tier must run here ({ENV}={','.join(sorted(self.tiers))}), but this was skipped: "
                f"{reason}\n(a skip that says nothing about the machine belongs in ALLOWED_SKIPS of "
                f"tests/support/required_tiers.py, with why)")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if not report.skipped or hasattr(report, "wasxfail"):
            return report
        tier = next((m.name for m in item.iter_markers() if m.name in self.tiers), None)
        reason = _reason(report.longrepr)
        if tier is not None and not allowed(reason):
            report.outcome = "failed"
            report.longrepr = self._message(tier, reason)
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector
                                   ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        if not report.skipped or not isinstance(collector, pytest.Module):
            return report
        path = collector.path.resolve()
        tier = next((t for t, d in self.dirs.items() if d.resolve() in path.parents), None)
        reason = _reason(report.longrepr)
        if tier is not None and not allowed(reason):
            report.outcome = "failed"
            report.longrepr = self._message(tier, reason)
        return report


def register(config: pytest.Config) -> None:
    """Make the tiers of RMSG_REQUIRE_TIERS required for this session (once, whichever conftest asks)."""
    if config.pluginmanager.has_plugin(PLUGIN_NAME):
        return
    tiers = required_tiers(os.environ.get(ENV))
    if tiers:
        config.pluginmanager.register(RequiredTiers(tiers, config.rootpath), PLUGIN_NAME)


"""Shared by every tier under tests/: with RMSG_REQUIRE_TIERS set (`bash .ci/run` sets it), a skipped test
of a required tier fails (tests/support/required_tiers.py; e2e/conftest.py registers the same)."""

from __future__ import annotations

import pytest
import required_tiers


def pytest_configure(config: pytest.Config) -> None:
    required_tiers.register(config)

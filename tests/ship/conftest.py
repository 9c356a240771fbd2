"""Fixtures of the packaging tests (chart, image): offline, part of the unit tier (no marker)."""

from __future__ import annotations

import pytest
from helm_cli import Helm, locate_helm, missing_helm_reason


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = locate_helm()
    if binary is None:
        pytest.skip(missing_helm_reason())
    return Helm(binary)

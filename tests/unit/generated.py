"""How many generated cases (hypothesis) a test tries: a few thousand per run by default, more on demand.

Use it on any property test of a pure planner::

    from generated import generated

    @generated()
    @given(case=...)
    def test_...(case): ...

``RMSG_GENERATED_CASES=50000 pytest tests/unit -k generated`` tries 50,000 cases per test instead. No
example database is written (nothing appears in the work tree); a failure prints the smallest case it
found and the ``@reproduce_failure`` line that replays it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

ENV = "RMSG_GENERATED_CASES"
DEFAULT_CASES = 2000


def cases(default: int = DEFAULT_CASES) -> int:
    """The number of cases per test: ``$RMSG_GENERATED_CASES``, else ``default``."""
    value = os.environ.get(ENV, "").strip()
    return int(value) if value else default


def generated(default: int = DEFAULT_CASES) -> settings:
    """Hypothesis settings for a generated-cases test: :func:`cases` examples, no deadline (CI machines
    vary), no example database, the failing case printed so that it can be replayed."""
    return settings(max_examples=cases(default), deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

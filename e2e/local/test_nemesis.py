"""Nothing acknowledged is lost under faults (E2E_BACKEND=local only): the nemesis of e2e/nemesis.py,
a few seeds per mode.

Each seed is one run: a fresh resource under load (writes acknowledged by ``WAIT 1``, stream entries,
a consumer group), the seed's faults one after the other, each healed and recovered from, then the
checker (every acknowledged write and entry on every Redis that should hold it, every entry delivered,
nothing pending on a consumer that is gone, one topology everybody agrees on). The seeds move on with
every commit (``nemesis.ci_seeds``), so the kinds of fault rotate; ``RMSG_NEMESIS_SEEDS`` names others
("3,7", or "sentinel:3;cluster:5,6"). ``python bench/nemesis.py`` runs many more.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nemesis
import pytest
from e2e_support import Cluster

CASES = [(mode, seed) for mode in nemesis.MODES for seed in nemesis.ci_seeds(mode)]


def case_id(mode: str, seed: int) -> str:
    return f"{mode}-seed-{seed}-{nemesis.make_plan(mode, seed).faults[0].kind}"


@pytest.fixture
def local(local_cluster: Any) -> Iterator[Any]:
    """The local cluster; its operator runs again after the test whatever happened to it."""
    yield local_cluster
    if local_cluster.operator is None or not local_cluster.operator.alive():
        local_cluster.start_operator()


@pytest.mark.parametrize(("mode", "seed"), CASES, ids=[case_id(m, s) for m, s in CASES])
def test_nothing_acknowledged_is_lost_under_faults(cluster: Cluster, namespace: str, local: Any, mode: str,
                                                   seed: int, tmp_path: Path) -> None:
    result = nemesis.run_seed(cluster, local, namespace, mode, seed, say=print, keep_dir=tmp_path)
    print(f"\n[chaos] nemesis {mode} seed {seed} ({result.plan}): {result.acked_writes} writes and "
          f"{result.acked_entries} entries acknowledged, {result.lost} lost; recovered after "
          + (", ".join(f"{f.kind} {f.recover_seconds:.1f}s" for f in result.faults if f.recover_seconds is not None)
             or "-") + f"; {result.seconds:.0f}s")
    assert result.ok, (f"{result.summary()}\n  or: RMSG_NEMESIS_SEEDS={mode}:{seed} E2E_BACKEND=local "
                       f".venv/bin/python -m pytest -m e2e {Path(__file__).relative_to(nemesis.ROOT)}")

"""The KEDA + HorizontalPodAutoscaler model of bench/autoscale_sim.py on small cases computed by hand, so
the model fails when it drifts from what KEDA and the HPA do; and the simulator end to end on cases whose
outcome is known (KEDA's activation, a removed pod's prefetched entries)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from bench_smoke import load_bench


@pytest.fixture(scope="module")
def sim() -> Iterator[ModuleType]:
    saved = list(sys.path)  # the bench puts the repository's directories on sys.path: undone afterwards
    try:
        yield load_bench("autoscale_sim")
    finally:
        sys.path[:] = saved


def no_stabilization(sim: ModuleType, **kw: object) -> object:
    return sim.HpaBehavior(scale_down_stabilization=0, **kw)


# -- the metric and activation --------------------------------------------------------------------------


def test_the_lag_is_the_metric_and_a_null_lag_is_minus_one(sim: ModuleType) -> None:
    assert sim.keda_lag_metric(250) == 250
    assert sim.keda_lag_metric(0) == 0
    assert sim.keda_lag_metric(None) == -1


def test_activation_is_strictly_greater_than_the_activation_lag_count(sim: ModuleType) -> None:
    assert not sim.keda_active(0, 0)
    assert sim.keda_active(1, 0)
    assert not sim.keda_active(10, 10)  # KEDA fast: ten entries wake nothing
    assert sim.keda_active(11, 10)
    assert not sim.keda_active(-1, 0)  # a NULL lag is never active


# -- the HPA's formula and tolerance --------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "replicas", "expected"), [
    (250, 1, 3),     # ceil(250 / 100)
    (105, 1, 1),     # ratio 1.05: within the 10 % tolerance, stays
    (109, 1, 1),     # ratio 1.09: still within (the exact boundary differs between Kubernetes versions)
    (111, 1, 2),     # ratio 1.11: ceil(1.11) = 2
    (290, 3, 3),     # ratio 0.97: stays
    (260, 3, 3),     # ratio 0.87: ceil(2.6) = 3
    (190, 3, 2),     # ratio 0.63: ceil(1.9) = 2
    (0, 4, 0),
    (-1, 4, 0),      # a NULL lag asks for nothing; minReplicas clamps it later
])
def test_hpa_replicas_are_ceil_of_metric_over_target_outside_the_tolerance(
        sim: ModuleType, metric: int, replicas: int, expected: int) -> None:
    assert sim.hpa_metric_replicas(metric, 100, replicas) == expected


def test_the_hpa_does_nothing_at_zero_replicas(sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, sim.HpaBehavior())
    assert hpa.sync(0.0, 5000, 0) == 0


# -- scale-up policies: max(+100 %, +4 pods) per 15 s ---------------------------------------------------


def test_scale_up_is_limited_to_the_larger_of_plus_4_pods_and_plus_100_percent_per_15_s(sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, sim.HpaBehavior())
    assert hpa.sync(0.0, 2000, 1) == 5      # wants 20: max(1 + 4, 2 * 1) = 5
    assert hpa.sync(5.0, 2000, 5) == 5      # same period: it started at 1, the limit is still 5
    assert hpa.sync(15.0, 2000, 5) == 10    # the event of t=0 is 15 s old (out): max(5 + 4, 2 * 5) = 10
    assert hpa.sync(30.0, 2000, 10) == 20   # max(14, 20), capped at maxReplicas 20
    assert hpa.sync(45.0, 5000, 20) == 20   # maxReplicas


def test_scale_up_happens_at_once_without_stabilization(sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, sim.HpaBehavior())
    assert hpa.sync(0.0, 100, 1) == 1
    assert hpa.sync(15.0, 300, 1) == 3


# -- scale-down: stabilization window and policy ---------------------------------------------------------


def test_a_fresh_hpa_counts_the_current_replicas_as_a_recommendation_and_never_drops_at_once(
        sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, sim.HpaBehavior())
    assert hpa.sync(0.0, 0, 10) == 10


def test_the_scale_down_stabilization_window_picks_the_highest_recommendation(sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, sim.HpaBehavior())  # 300 s window
    assert hpa.sync(0.0, 1000, 10) == 10    # recommendations: (0, 10) from the start, (0, 10)
    assert hpa.sync(15.0, 500, 10) == 10    # wants 5, the window holds 10
    assert hpa.sync(30.0, 300, 10) == 10    # wants 3
    assert hpa.sync(299.0, 300, 10) == 10   # t=0 still within (-1, 299]
    assert hpa.sync(300.0, 300, 10) == 5    # t=0 is out (strictly after the cutoff counts): max(5, 3, 3, 3)
    assert hpa.sync(315.0, 300, 5) == 3     # t=15 is out too


def test_scale_down_goes_to_min_replicas_never_to_zero(sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, no_stabilization(sim))
    assert hpa.sync(0.0, 1000, 10) == 10
    assert hpa.sync(15.0, -1, 10) == 1  # a NULL lag: down to minReplicas 1, 100 % per 15 s allows it


def test_a_pods_scale_down_policy_limits_the_step(sim: ModuleType) -> None:
    hpa = sim.Hpa(100, 1, 20, no_stabilization(sim, scale_down=(sim.ScalingPolicy("Pods", 2, 60.0),)))
    assert hpa.sync(0.0, 1000, 10) == 10
    assert hpa.sync(15.0, 100, 10) == 8
    assert hpa.sync(30.0, 100, 8) == 8      # 2 removed within the last 60 s: 10 - 2 = 8 is the floor
    assert hpa.sync(76.0, 100, 8) == 6      # the event of t=15 is out


# -- the KEDA operator: 0 -> 1, cooldown -> 0 -----------------------------------------------------------


def test_keda_wakes_from_zero_to_max_of_min_replica_count_and_one(sim: ModuleType) -> None:
    keda = sim.KedaOperator(activation_lag_count=10, min_replica_count=0, cooldown=300)
    assert keda.poll(0.0, 10, 0) == 0       # not active: 10 is not > 10
    assert keda.poll(30.0, 11, 0) == 1
    assert keda.poll(60.0, 500, 1) == 1     # from 1 on, the HPA scales
    assert sim.KedaOperator(0, 2, 300).poll(0.0, 1, 0) == 2


def test_keda_scales_to_zero_cooldown_after_the_last_active_poll(sim: ModuleType) -> None:
    keda = sim.KedaOperator(activation_lag_count=0, min_replica_count=0, cooldown=300)
    assert keda.poll(100.0, 5, 3) == 3      # active
    assert keda.poll(130.0, 0, 3) == 3
    assert keda.poll(400.0, 0, 3) == 3      # 100 + 300 is not before 400
    assert keda.poll(430.0, -1, 3) == 0     # inactive since 100, cooldown over (a NULL lag is inactive)
    assert sim.KedaOperator(0, 1, 300).poll(1000.0, 0, 3) == 3  # minReplicaCount 1: never to zero


def test_the_profiles_are_kedas_defaults_and_its_redis_e2e_tests_profile(sim: ModuleType) -> None:
    d, f = sim.KEDA_DEFAULT, sim.KEDA_FAST
    assert (d.polling_interval, d.cooldown_period, d.hpa_sync_period, d.behavior.scale_down_stabilization,
            d.activation_lag_count) == (30, 300, 15, 300, 0)
    assert (f.polling_interval, f.cooldown_period, f.behavior.scale_down_stabilization, f.lag_count,
            f.activation_lag_count) == (5, 10, 15, 12, 10)
    assert d.lag_count == sim.OURS_SPEC.backlog_per_replica


# -- the simulator end to end ----------------------------------------------------------------------------


def few_messages(sim: ModuleType, count: int) -> object:
    return sim.Trace("few", f"{count} messages", 10.0, lambda t: 0.0, 1.0, 0)


def test_ten_entries_never_wake_keda_fast_and_one_wakes_ours(sim: ModuleType) -> None:
    model = sim.ConsumerModel()
    trace = few_messages(sim, 10)
    drawn = ([1.0 + i * 0.1 for i in range(10)], [0.05] * 10)
    fast = sim.simulate(trace, lambda: sim.Keda(sim.KEDA_FAST), 1, model, 600.0, drawn)
    assert fast.never_delivered == 10
    assert fast.replica_seconds == 0
    default = sim.simulate(trace, lambda: sim.Keda(sim.KEDA_DEFAULT), 1, model, 600.0, drawn)
    assert default.unprocessed == 0
    one = ([1.0], [0.05])
    ours = sim.simulate(few_messages(sim, 1), lambda: sim.Ours(), 1, model, 600.0, one)
    assert ours.unprocessed == 0
    # a tick within 2 s, then the pod's 10 s start-up
    assert model.startup <= ours.wait_p50 <= model.startup + sim.TICK_SECONDS


def test_a_removed_pod_leaves_its_prefetched_entries_pending_until_our_reclaim_hands_them_over(
        sim: ModuleType) -> None:
    model = sim.ConsumerModel(prefetch=10)
    trace = sim.Trace("two-pods", "20 entries at once", 1.0, lambda t: 0.0, 1.0, 2)
    sim_run = sim.Sim(trace, [0.0] * 20, [1.0] * 20, model, horizon=100.0)
    sim_run.run(until=0.5)  # both pods read 10 entries each and work on the first
    assert sim_run.pending == 20
    sim_run.scale(1)  # the newest pod goes: it finishes its message in flight, 9 stay pending under its name
    sim_run.run(until=2.0)
    gone = [name for name in sim_run.pel if name not in sim_run.pods]
    assert [len(sim_run.pel[name]) for name in gone] == [9]
    # ours' reclaim sweep: the real policy.orphans picks the live consumer, which picks them up within 5 s
    ours = sim.Ours()
    ours.sim = sim_run
    ours.sweep(2.0)
    assert sim_run.reclaimed == 9
    assert gone[0] not in sim_run.pel  # the dead consumer, empty now, is deleted
    sim_run.run()
    assert sim_run.acked == 20

"""Scaling decisions for stream consumers: pure functions, the clock is the samples' timestamps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from redis_messaging.api.models import Autoscale, AutoscaleTarget
from redis_messaging.autoscale.decide import Decision, GroupState, Sample, decide, measure_rates


def spec(**kw: Any) -> Autoscale:
    base: dict[str, Any] = {
        "target": AutoscaleTarget(name="billing-worker"),
        "min_replicas": 0,
        "max_replicas": 10,
        "backlog_per_replica": 100,
        "scale_down_stabilization_seconds": 120,
        "idle_seconds_before_zero": 300,
    }
    base.update(kw)
    return Autoscale(**base)


@dataclass(frozen=True)
class Tick:
    at: float
    lag: int | None
    pending: int | None
    expect: int
    entries_read: int | None = None
    lag_estimated: bool = False
    lag_capped: bool = False


def run(
    ticks: list[Tick], autoscale: Autoscale, start: int, state: GroupState | None = None
) -> list[Decision]:
    """Feed the ticks in order, applying each decision (as a perfect kube layer would)."""
    current, st, out = start, state or GroupState(), []
    for tick in ticks:
        sample = Sample(
            at=tick.at, lag=tick.lag, pending=tick.pending,
            entries_read=tick.entries_read, lag_estimated=tick.lag_estimated, lag_capped=tick.lag_capped,
        )
        d = decide(sample, autoscale, current, st)
        assert d.desired == tick.expect, f"at t={tick.at}: {d.reason}"
        assert d.reason
        out.append(d)
        current, st = d.desired, d.state
    return out


SCENARIOS: dict[str, tuple[Autoscale, int, list[Tick]]] = {
    "one entry wakes a workload from zero": (
        spec(), 0, [Tick(0, 0, 0, 0), Tick(2, 1, 0, 1)],
    ),
    "one pending entry with no replica wakes it too (orphans need a claimer)": (
        spec(), 0, [Tick(0, 0, 1, 1)],
    ),
    "scale up at once": (
        spec(), 1, [Tick(0, 950, 50, 10)],
    ),
    "clamped to max": (
        spec(max_replicas=10), 2, [Tick(0, 1150, 50, 10)],
    ),
    "clamped to min even with nothing to do": (
        spec(min_replicas=2), 0, [Tick(0, 0, 0, 2)],
    ),
    "max step up limits each decision": (
        spec(max_step_up=2), 1, [Tick(0, 1000, 0, 3), Tick(2, 1000, 0, 5), Tick(4, 1000, 0, 7)],
    ),
    "max step up still wakes from zero": (
        spec(max_step_up=1), 0, [Tick(0, 900, 0, 1), Tick(2, 900, 0, 2)],
    ),
    "scale down only after the stabilization window, to the highest recommendation in it": (
        spec(scale_down_stabilization_seconds=120),
        8,
        [
            Tick(0, 800, 0, 8),     # recommendation 8
            Tick(30, 500, 0, 8),    # 5, held: 8 seen 30 s ago
            Tick(60, 300, 0, 8),    # 3, held
            Tick(119, 300, 0, 8),   # 8 (t=0) still within 120 s
            Tick(121, 300, 0, 5),   # t=0 left the window: highest left is 5 (t=30)
            Tick(151, 300, 0, 3),   # t=30 left: highest is 3
        ],
    ),
    "a fresh state never drops at once (operator restart)": (
        spec(scale_down_stabilization_seconds=60), 6, [Tick(1000, 0, 100, 6), Tick(1061, 0, 100, 1)],
    ),
    "no stabilization window: down at once": (
        spec(scale_down_stabilization_seconds=0), 6, [Tick(0, 200, 0, 2)],
    ),
    "unknown lag never scales down": (
        spec(scale_down_stabilization_seconds=0),
        5,
        [Tick(0, None, 0, 5), Tick(10, None, 20, 5), Tick(20, None, None, 5)],
    ),
    "unknown lag scales up on the pending entries that are known": (
        spec(), 1, [Tick(0, None, 450, 5)],
    ),
    "unknown lag at zero with nothing known holds zero": (
        spec(), 0, [Tick(0, None, 0, 0)],
    ),
    "an estimated lag counts as known": (
        spec(), 0, [Tick(0, 250, 0, 3, lag_estimated=True)],
    ),
    # A true lag of about 30,000 that the collector counted up to its cap of 10,000: 10 replicas is what
    # the count asks for, a lower bound of what the lag needs.
    "a lag counted up to the cap never scales down": (
        spec(backlog_per_replica=1000, max_replicas=50, scale_down_stabilization_seconds=0), 40,
        [Tick(0, 10_000, 0, 40, lag_estimated=True, lag_capped=True),
         Tick(10, 10_000, 300, 40, lag_estimated=True, lag_capped=True)],
    ),
    "a lag counted up to the cap scales up on the count": (
        spec(backlog_per_replica=1000, max_replicas=50, scale_down_stabilization_seconds=0), 2,
        [Tick(0, 10_000, 0, 10, lag_estimated=True, lag_capped=True),
         Tick(10, 10_000, 2000, 12, lag_estimated=True, lag_capped=True)],
    ),
    "a lag counted up to the cap wakes a workload from zero": (
        spec(backlog_per_replica=1000, max_replicas=50), 0,
        [Tick(0, 10_000, 0, 10, lag_estimated=True, lag_capped=True)],
    ),
    "a lag counted up to the cap is a lower bound for metric lag too": (
        spec(metric="lag", backlog_per_replica=1000, max_replicas=50, scale_down_stabilization_seconds=0), 40,
        [Tick(0, 10_000, 0, 40, lag_estimated=True, lag_capped=True)],
    ),
    "once the lag is known again the scale-down follows it": (
        spec(backlog_per_replica=1000, max_replicas=50, scale_down_stabilization_seconds=0), 40,
        [Tick(0, 10_000, 0, 40, lag_estimated=True, lag_capped=True), Tick(10, 9000, 0, 9)],
    ),
    "zero only after the idle period without backlog and without pending": (
        spec(scale_down_stabilization_seconds=0, idle_seconds_before_zero=300),
        2,
        [
            Tick(0, 0, 0, 1),      # idle starts now: keep one
            Tick(200, 0, 0, 1),
            Tick(250, 1, 0, 1),    # one entry: busy again, the idle clock restarts
            Tick(260, 0, 0, 1),
            Tick(559, 0, 0, 1),    # 299 s idle
            Tick(560, 0, 0, 0),    # 300 s idle
        ],
    ),
    "pending alone keeps replicas": (
        spec(scale_down_stabilization_seconds=0, idle_seconds_before_zero=0),
        4,
        [Tick(0, 0, 30, 1), Tick(1000, 0, 30, 1), Tick(2000, 0, 0, 0)],
    ),
    "pending alone keeps a replica when the metric is lag": (
        spec(metric="lag", scale_down_stabilization_seconds=0, idle_seconds_before_zero=0),
        3,
        [Tick(0, 0, 30, 1), Tick(10, 0, 0, 0)],
    ),
    "metric pending ignores the lag for the count": (
        spec(metric="pending", scale_down_stabilization_seconds=0), 1, [Tick(0, 5000, 250, 3)],
    ),
    # Nothing is delivered, so nothing is pending, while no consumer runs: the lag has to wake it.
    "metric pending: undelivered entries wake a workload from zero": (
        spec(metric="pending"), 0, [Tick(0, 0, 0, 0), Tick(2, 500, 0, 1), Tick(4, 300, 120, 2)],
    ),
    "metric pending: a lag counted up to the cap wakes a workload from zero": (
        spec(metric="pending"), 0, [Tick(0, 10_000, 0, 1, lag_estimated=True, lag_capped=True)],
    ),
    "metric pending: undelivered entries keep the last replica": (
        spec(metric="pending", scale_down_stabilization_seconds=0, idle_seconds_before_zero=0), 3,
        [Tick(0, 500, 0, 1), Tick(10, 500, 0, 1), Tick(20, 0, 0, 0)],
    ),
    "metric pending: an unknown lag at zero with nothing pending holds zero": (
        spec(metric="pending"), 0, [Tick(0, None, 0, 0)],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    autoscale, start, ticks = SCENARIOS[name]
    run(ticks, autoscale, start)


def test_reason_says_why_it_was_capped() -> None:
    d = decide(Sample(at=0, lag=1000, pending=200), spec(), 3, GroupState())
    assert d.desired == 10
    assert "backlog 1200 (lag 1000 + pending 200) / 100 per replica -> 12" in d.reason
    assert "capped at max 10" in d.reason


def test_reason_says_an_unknown_lag_held_the_count() -> None:
    d = decide(Sample(at=0, lag=None, pending=0), spec(), 4, GroupState())
    assert d.desired == 4
    assert d.metric is None
    assert "unknown lag never scales down" in d.reason


def test_reason_says_a_capped_lag_is_a_lower_bound() -> None:
    sample = Sample(at=0, lag=10_000, pending=50, lag_estimated=True, lag_capped=True)
    d = decide(sample, spec(backlog_per_replica=1000, max_replicas=50), 40, GroupState())
    assert d.desired == 40
    assert d.metric is None  # not known exactly
    assert "backlog at least 10050 (lag at least 10000 (counted up to the cap) + pending 50)" in d.reason
    assert "a lag counted up to the cap is a lower bound and never scales down" in d.reason


def test_drain_time_mode_neither_measures_nor_scales_down_on_a_capped_lag() -> None:
    autoscale = spec(target_drain_seconds=60, max_replicas=50, backlog_per_replica=1000,
                     scale_down_stabilization_seconds=0)
    st = decide(Sample(at=0, lag=6000, pending=0, entries_read=1000), autoscale, 40, GroupState()).state
    st = decide(Sample(at=10, lag=7000, pending=0, entries_read=1400), autoscale, 40, st).state
    assert st.per_replica_rate == pytest.approx(1.0)  # 400 acked in 10 s by 40 replicas
    # The count stops at its cap while the true lag grows: arrivals measured from it would be wrong.
    capped = Sample(at=20, lag=5000, pending=0, entries_read=1800, lag_estimated=True, lag_capped=True)
    rates, remembered = measure_rates(st.previous, capped, st.per_replica_rate)
    assert rates is None
    assert remembered == pytest.approx(1.0)
    d = decide(capped, autoscale, 40, st)
    assert d.desired == 40, d.reason
    assert d.state.previous is not None
    assert d.state.previous.lag is None  # the next interval has no exact lag to start from either
    assert d.state.per_replica_rate == pytest.approx(1.0)


def test_drain_time_mode_sizes_for_backlog_and_arrivals() -> None:
    autoscale = spec(target_drain_seconds=60, max_replicas=50, backlog_per_replica=1000)
    # t=0: 4 replicas, backlog 6000. t=10: 200 entries/s arrived (2000), 4 replicas acked 10/s each
    # (400 read, pending unchanged) -> backlog 7600: 7600/60 + 200 = 326.7/s needed, 10/s each -> 33.
    first = decide(Sample(at=0, lag=6000, pending=0, entries_read=1000), autoscale, 4, GroupState())
    assert first.desired == 6  # no rate yet: backlog rule 6000 / 1000
    assert "not measurable yet" in first.reason
    second = decide(Sample(at=10, lag=7600, pending=0, entries_read=1400), autoscale, 4, first.state)
    assert second.desired == 33, second.reason
    assert "arrivals 200.0/s" in second.reason
    assert "10.0/s per replica" in second.reason


def test_drain_time_mode_divides_by_the_consumers_not_by_the_replicas_asked_for() -> None:
    autoscale = spec(target_drain_seconds=60, max_replicas=100, backlog_per_replica=1000)
    # 200 entries/s arrive; the 4 consumers that run acknowledge 10/s each (400 entries per 10 s tick),
    # and the pods asked for by each scale-up are still starting: the group keeps 4 consumers.
    ticks = [  # (at, lag, entries read, replicas now -> expected)
        (0, 6000, 1000, 4, 6),      # no rate yet: backlog rule
        (10, 7600, 1400, 6, 33),    # 7600/60 + 200 = 326.7/s, 10/s each
        (20, 9200, 1800, 33, 36),   # 353.3/s: 10/s each still, not 400/10/6 (and then /33)
        (30, 10800, 2200, 36, 38),  # 380/s
    ]
    state, out = GroupState(), []
    for at, lag, read, replicas, expect in ticks:
        d = decide(Sample(at=at, lag=lag, pending=0, entries_read=read, consumers=4), autoscale, replicas, state)
        assert d.desired == expect, d.reason
        state = d.state
        out.append(d)
    assert state.per_replica_rate == pytest.approx(10.0)
    assert "10.0/s per replica (measured over 4 consumers)" in out[-1].reason


def test_drain_time_mode_counts_no_more_consumers_than_the_workload_had_pods() -> None:
    autoscale = spec(target_drain_seconds=60, max_replicas=100, backlog_per_replica=1000)
    # Scaled down from 10 to 4: the consumers of the 6 pods that are gone stay until reclaim deletes them.
    state = decide(Sample(at=0, lag=5000, pending=0, entries_read=0, consumers=10), autoscale, 4, GroupState()).state
    s1 = Sample(at=10, lag=4000, pending=0, entries_read=1000, consumers=10)
    rates, _ = measure_rates(state.previous, s1, None, 4)
    assert rates is not None
    assert rates.consuming == 4
    assert rates.per_replica == pytest.approx(25.0)


def test_drain_time_mode_counts_acks_not_deliveries() -> None:
    autoscale = spec(target_drain_seconds=100, max_replicas=50)
    s0 = Sample(at=0, lag=1000, pending=0, entries_read=0)
    # 2 replicas read 600 entries in 10 s but 400 of them are still pending: acked 200 -> 10/s each.
    s1 = Sample(at=10, lag=400, pending=400, entries_read=600)
    state = decide(s0, autoscale, 2, GroupState()).state
    d = decide(s1, autoscale, 2, state)
    rates, _ = measure_rates(state.previous, s1, None)
    assert rates is not None
    assert rates.per_replica == pytest.approx(10.0)
    assert rates.arrival == pytest.approx(0.0)
    # backlog 800 in 100 s = 8/s, 10/s each -> 1; a scale-down that the window then holds at 2
    assert d.recommendation == 1
    assert d.desired == 2


def test_drain_time_mode_does_not_trust_the_rate_of_idle_replicas() -> None:
    autoscale = spec(target_drain_seconds=30, scale_down_stabilization_seconds=0)
    s0 = Sample(at=0, lag=0, pending=0, entries_read=0)
    s1 = Sample(at=10, lag=0, pending=0, entries_read=50)  # 5 replicas acked 1/s each: no backlog
    state = decide(s0, autoscale, 5, GroupState()).state
    rates, remembered = measure_rates(state.previous, s1, None)
    assert rates is None
    assert remembered is None
    d = decide(s1, autoscale, 5, state)
    assert "backlog rule" in d.reason


def test_drain_time_mode_remembers_a_saturated_rate() -> None:
    autoscale = spec(target_drain_seconds=10, max_replicas=50, scale_down_stabilization_seconds=0)
    st = decide(Sample(at=0, lag=1000, pending=0, entries_read=0), autoscale, 2, GroupState()).state
    st = decide(Sample(at=10, lag=800, pending=0, entries_read=400), autoscale, 2, st).state
    assert st.per_replica_rate == pytest.approx(20.0)
    # backlog gone: the rate cannot be measured now, the remembered 20/s per replica is used
    d = decide(Sample(at=20, lag=0, pending=0, entries_read=1400), autoscale, 2, st)
    assert "remembered" in d.reason
    assert d.state.per_replica_rate == pytest.approx(20.0)


def test_state_survives_a_round_trip_through_json() -> None:
    import json

    d = decide(Sample(at=5, lag=300, pending=2, entries_read=7), spec(), 1, GroupState())
    again = GroupState.from_dict(json.loads(json.dumps(d.state.to_dict())))
    assert again == d.state


def test_decide_does_not_mutate_the_state() -> None:
    st = GroupState()
    d = decide(Sample(at=5, lag=300, pending=2), spec(), 1, st)
    assert st == GroupState()
    assert d.state is not st

"""The operator's Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

import re

import pytest

from redis_messaging.metrics import OperatorMetrics, Registry

# One sample line of the text format: name, optional labels, value.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
                    r"(-?[0-9.e+]+|NaN|[+-]Inf)$")


def test_gauges_counters_and_summaries_render_in_the_text_format() -> None:
    r = Registry()
    lag = r.gauge("rm_group_lag", "Entries not delivered.", ("stream", "group"))
    total = r.counter("rm_reconcile_total", "Passes.")
    poll = r.summary("rm_poll_seconds", "Poll time.", ("node",))
    lag.set(480, stream="orders", group="billing")
    lag.set(0.5, stream="orders", group="audit")
    total.inc()
    total.inc(2)
    poll.observe(0.25, node="a")
    poll.observe(0.5, node="a")
    assert r.render() == (
        "# HELP rm_group_lag Entries not delivered.\n"
        "# TYPE rm_group_lag gauge\n"
        'rm_group_lag{stream="orders",group="audit"} 0.5\n'
        'rm_group_lag{stream="orders",group="billing"} 480\n'
        "# HELP rm_reconcile_total Passes.\n"
        "# TYPE rm_reconcile_total counter\n"
        "rm_reconcile_total 3\n"
        "# HELP rm_poll_seconds Poll time.\n"
        "# TYPE rm_poll_seconds summary\n"
        'rm_poll_seconds_sum{node="a"} 0.75\n'
        'rm_poll_seconds_count{node="a"} 2\n'
    )


def test_label_values_are_escaped() -> None:
    r = Registry()
    g = r.gauge("rm_x", "Help with \\ and\nnewline.", ("stream",))
    g.set(1, stream='a"b\\c\nd')
    text = r.render()
    assert '# HELP rm_x Help with \\\\ and\\nnewline.' in text
    assert 'rm_x{stream="a\\"b\\\\c\\nd"} 1' in text


def test_series_of_a_deleted_resource_go_away() -> None:
    m = OperatorMetrics()
    m.group_lag.set(5, namespace="ns", resource="orders", stream="s", group="g")
    m.group_lag.set(6, namespace="ns", resource="other", stream="s", group="g")
    m.reconcile_total.inc(namespace="ns", resource="orders")
    m.forget_resource("ns", "orders")
    assert m.group_lag.value(namespace="ns", resource="orders", stream="s", group="g") is None
    assert m.group_lag.value(namespace="ns", resource="other", stream="s", group="g") == 6
    assert m.reconcile_total.value(namespace="ns", resource="orders") is None


def test_every_line_of_the_operator_metrics_parses() -> None:
    m = OperatorMetrics()
    m.group_lag.set(5, namespace="ns", resource="orders", stream="s", group="g")
    m.tick_to_patch_seconds.observe(0.012, namespace="ns", resource="orders")
    m.scales.inc(namespace="ns", resource="orders", stream="s", group="g", direction="up")
    for line in m.registry.render().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line


def test_wrong_labels_and_negative_increments_are_refused() -> None:
    r = Registry()
    c = r.counter("rm_total", "x", ("a",))
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(b="1")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, a="1")
    with pytest.raises(ValueError, match="_total"):
        r.counter("rm_count", "x")

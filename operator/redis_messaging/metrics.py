"""The operator's own Prometheus metrics: a small registry and a text-format 0.0.4 endpoint.

No client library: gauges, counters and summaries without quantiles (``_sum`` and ``_count``) are all
the operator needs, and the endpoint is an aiohttp server (aiohttp comes with Kopf) on
``REDIS_MESSAGING_METRICS_PORT``. Updates come from worker threads, scrapes from the event loop: one
lock guards every family.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Literal

from aiohttp import web

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Kind = Literal["gauge", "counter", "summary"]
LabelValues = tuple[str, ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Family:
    """One metric name with a fixed set of label names."""

    def __init__(self, name: str, help_: str, kind: Kind, labels: Sequence[str], lock: threading.Lock) -> None:
        self.name = name
        self.help = help_
        self.kind = kind
        self.labels = tuple(labels)
        self._lock = lock
        self._values: dict[LabelValues, float] = {}
        self._sums: dict[LabelValues, float] = {}  # summaries: sum; _values holds the count

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def set(self, value: float, /, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, /, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def observe(self, value: float, /, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def remove(self, **match: str) -> None:
        """Forget every series whose labels include ``match`` (e.g. a deleted resource's)."""
        where = [(self.labels.index(k), v) for k, v in match.items()]
        with self._lock:
            for key in [k for k in self._values if all(k[i] == v for i, v in where)]:
                self._values.pop(key, None)
                self._sums.pop(key, None)

    def value(self, **labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            items = sorted(self._values.items())
            sums = dict(self._sums)
        for key, value in items:
            labels = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(self.labels, key, strict=True))
            braces = f"{{{labels}}}" if labels else ""
            if self.kind == "summary":
                lines.append(f"{self.name}_sum{braces} {_number(sums.get(key, 0.0))}")
                lines.append(f"{self.name}_count{braces} {_number(value)}")
            else:
                lines.append(f"{self.name}{braces} {_number(value)}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}

    def _add(self, name: str, help_: str, kind: Kind, labels: Sequence[str]) -> Family:
        if name in self._families:
            raise ValueError(f"metric {name} registered twice")
        family = self._families[name] = Family(name, help_, kind, labels, self._lock)
        return family

    def gauge(self, name: str, help_: str, labels: Sequence[str] = ()) -> Family:
        return self._add(name, help_, "gauge", labels)

    def counter(self, name: str, help_: str, labels: Sequence[str] = ()) -> Family:
        if not name.endswith("_total"):
            raise ValueError("counter names end with _total")
        return self._add(name, help_, "counter", labels)

    def summary(self, name: str, help_: str, labels: Sequence[str] = ()) -> Family:
        return self._add(name, help_, "summary", labels)

    def families(self) -> list[Family]:
        return list(self._families.values())

    def render(self) -> str:
        lines: list[str] = []
        for family in self.families():
            lines.extend(family.render())
        return "\n".join(lines) + "\n"


RESOURCE = ("namespace", "resource")
GROUP = (*RESOURCE, "stream", "group")


class OperatorMetrics:
    """Every metric the operator exports, named in one place."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        p = "redis_messaging"
        self.group_lag = r.gauge(f"{p}_group_lag", "Entries of the stream not delivered to the group yet "
                                 "(absent while unknown).", GROUP)
        self.group_lag_estimated = r.gauge(f"{p}_group_lag_estimated", "1 when Redis reported a null lag "
                                           "and the operator counted it.", GROUP)
        self.group_lag_capped = r.gauge(f"{p}_group_lag_capped", "1 when that count reached its cap: the lag "
                                        "is at least redis_messaging_group_lag.", GROUP)
        self.group_pending = r.gauge(f"{p}_group_pending", "Entries delivered and not acknowledged.", GROUP)
        self.group_orphaned_pending = r.gauge(f"{p}_group_orphaned_pending", "Pending entries of consumers "
                                              "whose pod is gone that no live consumer could take.", GROUP)
        self.group_consumers = r.gauge(f"{p}_group_consumers", "Consumers of the group.", GROUP)
        self.group_desired_replicas = r.gauge(f"{p}_group_desired_replicas", "Replicas the autoscaler wants "
                                              "for the group's workload.", GROUP)
        self.group_current_replicas = r.gauge(f"{p}_group_current_replicas", "Replicas of the group's "
                                              "workload (its scale subresource).", GROUP)
        self.group_dead_lettered = r.counter(f"{p}_group_dead_lettered_total", "Entries delivered more than "
                                             "maxDeliveries times moved to the group's dead-letter stream.", GROUP)
        self.stream_length = r.gauge(f"{p}_stream_length", "Entries in the stream.", (*RESOURCE, "stream"))
        queue = (*RESOURCE, "queue")
        self.queue_length = r.gauge(f"{p}_queue_length", "Entries in the list queue (LLEN).", queue)
        self.queue_desired_replicas = r.gauge(f"{p}_queue_desired_replicas", "Replicas the autoscaler wants "
                                              "for the queue's workload.", queue)
        self.queue_current_replicas = r.gauge(f"{p}_queue_current_replicas", "Replicas of the queue's "
                                              "workload (its scale subresource).", queue)
        self.channel_subscribers = r.gauge(f"{p}_channel_subscribers", "Subscribers of the Pub/Sub channel; "
                                           "a message published while it is 0 is lost.", (*RESOURCE, "channel"))
        self.trimmed = r.counter(f"{p}_stream_trimmed_entries_total", "Entries removed by retention.",
                                 (*RESOURCE, "stream"))
        self.scales = r.counter(f"{p}_autoscale_scale_total", "Scale subresource patches.",
                                (*GROUP, "direction"))
        self.poll_seconds = r.summary(f"{p}_autoscale_poll_seconds", "Time to measure every group of one "
                                      "Redis node (one pipelined round trip).", RESOURCE)
        self.tick_to_patch_seconds = r.summary(f"{p}_autoscale_tick_to_patch_seconds", "From the start of "
                                               "the autoscaler tick to the scale patch answered.", RESOURCE)
        self.reconcile_total = r.counter(f"{p}_reconcile_total", "Reconcile passes.", RESOURCE)
        self.reconcile_errors = r.counter(f"{p}_reconcile_errors_total", "Reconcile passes that failed.",
                                          RESOURCE)
        self.reconcile_seconds = r.summary(f"{p}_reconcile_duration_seconds", "Duration of reconcile passes.",
                                           RESOURCE)

    def forget_group(self, namespace: str, resource: str, stream: str, group: str) -> None:
        for family in (self.group_lag, self.group_lag_estimated, self.group_lag_capped, self.group_pending,
                       self.group_orphaned_pending, self.group_consumers, self.group_desired_replicas,
                       self.group_current_replicas, self.group_dead_lettered):
            family.remove(namespace=namespace, resource=resource, stream=stream, group=group)

    def forget_resource(self, namespace: str, resource: str) -> None:
        for family in self.registry.families():
            if set(RESOURCE) <= set(family.labels):
                family.remove(namespace=namespace, resource=resource)


async def serve(registry: Registry, port: int, host: str | None = None) -> web.AppRunner | None:
    """Serve ``/metrics`` on ``port``; None (and a warning) when the port cannot be bound."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=registry.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.warning("metrics endpoint not served: cannot listen on port %d: %s", port, exc)
        await runner.cleanup()
        return None
    log.info("metrics on :%d/metrics", port)
    return runner

"""Kopf registrations only; each delegates to reconcile/ (or autoscale/)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from redis_messaging import metrics
from redis_messaging.api import models
from redis_messaging.autoscale.loop import Autoscaler, autoscale_forever
from redis_messaging.builders.names import Owner
from redis_messaging.kube.client import Kube
from redis_messaging.reconcile.acl import AclStep
from redis_messaging.reconcile.addresses import Addresses, DnsAddresses, MapAddresses
from redis_messaging.reconcile.cluster_rolling import ClusterRollingStep
from redis_messaging.reconcile.cluster_topology import ClusterTopology
from redis_messaging.reconcile.failover_watch import FailoverWatchers, Followed
from redis_messaging.reconcile.resync import PassOrder, Registry, resync_forever
from redis_messaging.reconcile.rolling import RollingStep
from redis_messaging.reconcile.sentinel_topology import SentinelTopology
from redis_messaging.reconcile.streams import StreamsStep
from redis_messaging.reconcile.sync import Context, Outcome, owner_of, sync
from redis_messaging.reconcile.tls import TlsStep
from redis_messaging.redis.nodes import Node, Placement, Pools
from redis_messaging.settings import OperatorSettings

SETTINGS = OperatorSettings()  # what `redis-messaging run` starts with; re-read at every operator start
RESOURCE = (models.GROUP, models.VERSION, models.PLURAL)
_state: dict[str, Any] = {}
REGISTRY = Registry()
METRICS = metrics.OperatorMetrics()


def _settings() -> OperatorSettings:
    found: OperatorSettings | None = _state.get("settings")
    return found if found is not None else SETTINGS


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{models.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=models.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events are posted by the reconcile pass
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    ours = _state["settings"] = OperatorSettings()
    kube = Kube.from_environment(ours.field_manager)
    addresses: Addresses = (MapAddresses.from_file(ours.address_map) if ours.address_map
                            else DnsAddresses())
    pools = _state["pools"] = Pools(timeout=ours.redis_timeout_seconds)
    _state["ctx"] = Context(
        kube=kube,
        cluster_domain=ours.cluster_domain,
        topologies={"sentinel": SentinelTopology(addresses, timeout=ours.redis_timeout_seconds),
                    "cluster": ClusterTopology(addresses, timeout=ours.redis_timeout_seconds)},
        streams=StreamsStep(kube, addresses, pools),
        acl=AclStep(kube, addresses, timeout=ours.redis_timeout_seconds),
        rolling=RollingStep(kube, addresses, timeout=ours.redis_timeout_seconds),
        cluster_rolling=ClusterRollingStep(kube, addresses, timeout=ours.redis_timeout_seconds),
        tls=TlsStep(kube, addresses, timeout=ours.redis_timeout_seconds),
        operator_peer=ours.operator_peer,
    )
    autoscaler = _state["autoscaler"] = Autoscaler(
        kube, pools, status_interval=ours.status_interval_seconds,
        reclaim_interval=ours.reclaim_interval_seconds, metrics=METRICS)

    def follow_master(owner: Owner, followed: Followed) -> None:
        # A whole pass at once: the old master, the Sentinels' view and the conditions need a look
        # that the next periodic pass would give up to a period later.
        REGISTRY.schedule((owner.namespace, owner.name), 0.0)
        if followed.new is not None:
            master = Node(followed.new, addresses.redis(owner, followed.new))
            autoscaler.follow(owner.namespace, owner.name, Placement(master))

    _state["watchers"] = FailoverWatchers(kube, addresses, on_followed=follow_master)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG as it is when the operator starts."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _context() -> Context:
    ctx = _state.get("ctx")
    if ctx is None:  # handlers before startup finished: never in practice, but never crash
        raise kopf.TemporaryError("operator is starting", delay=1)
    return ctx  # type: ignore[no-any-return]


def _after_pass(body: dict[str, Any], outcome: Outcome) -> None:
    """Keep the failover watch (sentinel mode) and the autoscaler fed with what they need."""
    if outcome.stale:  # nothing was done on an older body; the pass on the newest one follows
        return
    owner = owner_of(body, _settings().cluster_domain)
    autoscaler: Autoscaler | None = _state.get("autoscaler")
    if outcome.spec is None:
        if autoscaler is not None:  # nothing to scale while the spec cannot be served
            autoscaler.forget(owner.namespace, owner.name)
        return
    watchers: FailoverWatchers | None = _state.get("watchers")
    if watchers is not None and outcome.spec.mode == "sentinel":
        watchers.ensure(owner, redis_replicas=outcome.spec.redis.replicas,
                        sentinel_replicas=outcome.spec.sentinel.replicas, password=outcome.password)
    if autoscaler is not None:
        report = outcome.streams
        autoscaler.place(body, owner, outcome.spec, outcome.password,
                         placement=report.placement if report is not None else None,
                         conflicts=report.conflicts if report is not None else {},
                         trimmed=report.trimmed if report is not None else {}, tls=outcome.tls)


def _measured_sync(body: dict[str, Any]) -> Outcome:
    labels = Registry.key_of(body)
    started = time.monotonic()
    try:
        return sync(body, _context())
    except Exception:
        METRICS.reconcile_errors.inc(namespace=labels[0], resource=labels[1])
        raise
    finally:
        METRICS.reconcile_total.inc(namespace=labels[0], resource=labels[1])
        METRICS.reconcile_seconds.observe(time.monotonic() - started, namespace=labels[0], resource=labels[1])


def _run(body: kopf.Body) -> None:
    # A resource that needs another look soon gets it from the periodic loop, not from a Kopf retry:
    # retries write progress annotations, and waiting for pods or Sentinel is not an error.
    # The event's body, unless the watch has brought a newer one since (see PassOrder).
    newest = PassOrder.newest(body, REGISTRY.get(Registry.key_of(body)))
    outcome = _measured_sync(newest)
    _after_pass(newest, outcome)
    if outcome.retry_after is not None:
        REGISTRY.schedule(Registry.key_of(body), outcome.retry_after)


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
@kopf.on.resume(*RESOURCE)
def reconcile(body: kopf.Body, **_: Any) -> None:
    _run(body)


@kopf.on.event(*RESOURCE)
def remember(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Feed the registry of the periodic pass (watch events add no finalizer and write nothing)."""
    REGISTRY.observe(event.get("type"), body)
    if event.get("type") == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        ctx: Context | None = _state.get("ctx")
        if ctx is not None:  # the generations its passes handled
            ctx.passes.forget(body["metadata"].get("uid") or f"{namespace}/{name}")
        watchers: FailoverWatchers | None = _state.get("watchers")
        if watchers is not None:
            watchers.stop(namespace, name)
        autoscaler: Autoscaler | None = _state.get("autoscaler")
        if autoscaler is not None:
            autoscaler.forget(namespace, name)


def _periodic_pass(body: dict[str, Any]) -> float | None:
    outcome = _measured_sync(body)
    _after_pass(body, outcome)
    if outcome.actions:
        logging.getLogger(__name__).info("periodic pass of %s/%s: %s", body["metadata"]["namespace"],
                                         body["metadata"]["name"], "; ".join(outcome.actions))
    return outcome.retry_after


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    REGISTRY.clear()  # an operator restarted in the same process starts from what it watches now
    ours = _settings()
    stopped = asyncio.Event()
    task = asyncio.create_task(
        resync_forever(REGISTRY, _periodic_pass, ours.resync_seconds, stopped), name="resync")
    _state["resync"] = (task, stopped)
    autoscaler: Autoscaler = _state["autoscaler"]
    autoscale_task = asyncio.create_task(
        autoscale_forever(autoscaler, ours.autoscale_tick_seconds, stopped), name="autoscale")
    _state["autoscale"] = autoscale_task
    if ours.metrics_port:
        _state["metrics"] = await metrics.serve(METRICS.registry, ours.metrics_port)


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    task, stopped = _state.pop("resync", (None, None))
    if task is not None:
        stopped.set()
        await task
    autoscale_task: asyncio.Task[None] | None = _state.pop("autoscale", None)
    if autoscale_task is not None:
        await autoscale_task
    server = _state.pop("metrics", None)
    if server is not None:
        await server.cleanup()
    watchers: FailoverWatchers | None = _state.pop("watchers", None)
    if watchers is not None:
        await asyncio.to_thread(watchers.stop_all)
    autoscaler: Autoscaler | None = _state.pop("autoscaler", None)
    if autoscaler is not None:
        autoscaler.clear()
    pools: Pools | None = _state.pop("pools", None)
    if pools is not None:
        pools.close_all()
    _state.pop("settings", None)
    REGISTRY.clear()

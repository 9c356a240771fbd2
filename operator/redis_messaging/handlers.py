"""Kopf registrations only; each delegates to reconcile/ (or autoscale/)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from redis_messaging.api import models
from redis_messaging.kube.client import Kube
from redis_messaging.reconcile.addresses import Addresses, DnsAddresses, MapAddresses
from redis_messaging.reconcile.failover_watch import FailoverWatchers
from redis_messaging.reconcile.resync import Registry, resync_forever
from redis_messaging.reconcile.sentinel_topology import SentinelTopology
from redis_messaging.reconcile.sync import Context, Outcome, owner_of, sync
from redis_messaging.settings import OperatorSettings

SETTINGS = OperatorSettings()
RESOURCE = (models.GROUP, models.VERSION, models.PLURAL)
_state: dict[str, Any] = {}
REGISTRY = Registry()


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
    kube = Kube.from_environment(SETTINGS.field_manager)
    addresses: Addresses = (MapAddresses.from_file(SETTINGS.address_map) if SETTINGS.address_map
                            else DnsAddresses())
    _state["ctx"] = Context(
        kube=kube,
        cluster_domain=SETTINGS.cluster_domain,
        topologies={"sentinel": SentinelTopology(addresses, timeout=SETTINGS.redis_timeout_seconds)},
    )
    _state["watchers"] = FailoverWatchers(kube, addresses)


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
    """Keep the failover watch of a sentinel-mode resource running with what it needs."""
    watchers: FailoverWatchers | None = _state.get("watchers")
    if watchers is None or outcome.spec is None or outcome.spec.mode != "sentinel":
        return
    watchers.ensure(owner_of(body, SETTINGS.cluster_domain), redis_replicas=outcome.spec.redis.replicas,
                    sentinel_replicas=outcome.spec.sentinel.replicas, password=outcome.password)


def _run(body: kopf.Body) -> None:
    # A resource that needs another look soon gets it from the periodic loop, not from a Kopf retry:
    # retries write progress annotations, and waiting for pods or Sentinel is not an error.
    outcome = sync(dict(body), _context())
    _after_pass(dict(body), outcome)
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
    watchers: FailoverWatchers | None = _state.get("watchers")
    if watchers is not None and (event.get("type") == "DELETED" or body.get("metadata", {}).get("deletionTimestamp")):
        watchers.stop(body["metadata"]["namespace"], body["metadata"]["name"])


def _periodic_pass(body: dict[str, Any]) -> float | None:
    outcome = sync(body, _context())
    _after_pass(body, outcome)
    if outcome.actions:
        logging.getLogger(__name__).info("periodic pass of %s/%s: %s", body["metadata"]["namespace"],
                                         body["metadata"]["name"], "; ".join(outcome.actions))
    return outcome.retry_after


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    REGISTRY.clear()  # an operator restarted in the same process starts from what it watches now
    stopped = asyncio.Event()
    task = asyncio.create_task(
        resync_forever(REGISTRY, _periodic_pass, SETTINGS.resync_seconds, stopped), name="resync")
    _state["resync"] = (task, stopped)


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    task, stopped = _state.pop("resync", (None, None))
    if task is not None:
        stopped.set()
        await task
    watchers: FailoverWatchers | None = _state.pop("watchers", None)
    if watchers is not None:
        await asyncio.to_thread(watchers.stop_all)
    REGISTRY.clear()

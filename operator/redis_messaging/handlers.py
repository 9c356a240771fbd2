"""Kopf registrations only; each delegates to the :class:`~redis_messaging.runtime.operator.Operator`
handed to every handler through Kopf's ``memo``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from redis_messaging import metrics
from redis_messaging.api import models
from redis_messaging.builders import names
from redis_messaging.runtime.indices import CHILD_INDICES, entries
from redis_messaging.runtime.operator import Operator
from redis_messaging.settings import OperatorSettings

SETTINGS = OperatorSettings()  # what `redis-messaging run` starts with; re-read at every operator start
RESOURCE = (models.GROUP, models.VERSION, models.PLURAL)
CHILDREN = {names.LABEL_NAME: names.APP_NAME}  # every child of every resource carries it


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{models.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=models.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events are posted by the reconcile pass
    # Every watch event runs a handler; its "succeeded" line at INFO would be most of the log.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    selector = ",".join(f"{k}={v}" for k, v in CHILDREN.items())
    for _index, group, _version, plural in CHILD_INDICES.values():  # only the operator's children, selected by
        settings.watching.label_selectors[(group, plural) if group else plural] = selector  # the API server
    ours = OperatorSettings()
    operator = await asyncio.to_thread(Operator.from_settings, ours)
    operator.start()
    memo.operator = operator
    memo.metrics_server = (await metrics.serve(operator.metrics.registry, ours.metrics_port)
                           if ours.metrics_port else None)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG as it is when the operator starts."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.event(*RESOURCE)
def observe(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Every watch event of a RedisMessaging: created, changed, deleted, or listed at start. Passes run
    from the operator's scheduler, never in a Kopf handler: no finalizer, no progress annotation."""
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        operator.indices.attach(kwargs)
        operator.observe(event.get("type"), dict(body))


# -- the children: indexed (what a pass reads), and their changes wake their owner's pass ----------
# Both are coroutines: Kopf runs a plain function in its thread pool (a hop to another thread and back
# for each of the thousands of events that pods, StatefulSets and claims make at scale); these only
# copy a dict or put a wake-up in the scheduler's queue, which is quicker on the event loop itself.
async def child_entries(namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    """The index entries of one child: under its owner (instance label) and under its name."""
    return entries(namespace or "", name, labels, body, names.LABEL_INSTANCE)


for _index, _group, _version, _plural in CHILD_INDICES.values():
    kopf.index(_group, _version, _plural, labels=CHILDREN, id=_index)(child_entries)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")
def autoscalers_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> Any:
    """For the autoscaler: a HorizontalPodAutoscaler aimed at a workload it scales is a conflict."""
    return {("namespace", namespace or ""): dict(body)}


@kopf.on.event("", "v1", "pods", labels=CHILDREN)
@kopf.on.event("apps", "v1", "statefulsets", labels=CHILDREN)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILDREN)
async def owned_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pod, StatefulSet or claim of a resource changed (started, became Ready, died, grew): its
    owner's pass at once, instead of waiting for the safety net."""
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        operator.indices.attach(kwargs)
        operator.owned_changed(namespace or "", labels.get(names.LABEL_INSTANCE))


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    server = memo.get("metrics_server")
    if server is not None:
        await server.cleanup()
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        await asyncio.to_thread(operator.stop)

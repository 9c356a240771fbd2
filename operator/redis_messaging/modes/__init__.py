"""The two shapes a RedisMessaging takes. Everything that differs between Sentinel and Cluster mode
lives in one package per mode (:mod:`redis_messaging.modes.sentinel`,
:mod:`redis_messaging.modes.cluster`) behind the :class:`~redis_messaging.modes.base.Mode` protocol;
:mod:`redis_messaging.modes.rollout` holds what their rolling updates share."""

from __future__ import annotations

from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import UnsupportedSpec
from redis_messaging.builders.names import Owner
from redis_messaging.builders.tls import Facts
from redis_messaging.modes.base import Mode
from redis_messaging.modes.cluster.mode import ClusterMode
from redis_messaging.modes.sentinel.mode import SentinelMode

MODES: dict[str, Mode] = {"sentinel": SentinelMode(), "cluster": ClusterMode()}


def of(spec: RedisMessagingSpec) -> Mode:
    """The mode a spec declares; :class:`UnsupportedSpec` for one this version does not know."""
    found = MODES.get(spec.mode)
    if found is None:
        raise UnsupportedSpec(f"mode {spec.mode!r} is not available in this version of the operator")
    return found


def build(spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
          tls_facts: Facts | None = None) -> list[dict[str, Any]]:
    """Every child object of one resource, in apply order (the generated password Secrets excluded)."""
    return of(spec).objects(spec, owner, password=password, tls_facts=tls_facts)


def config_files(spec: RedisMessagingSpec, owner: Owner) -> dict[str, str]:
    """The files of the resource's ConfigMap, by key."""
    return of(spec).config_files(spec, owner)

"""Pure functions: spec -> Kubernetes objects and Redis configuration."""

from __future__ import annotations

from typing import Any

from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import cluster, sentinel, tls
from redis_messaging.builders.names import Owner


class UnsupportedSpec(ValueError):
    """A spec the schema accepts but this version of the operator cannot build."""


def build(spec: RedisMessagingSpec, owner: Owner, *, password: str | None,
          tls_facts: tls.Facts | None = None) -> list[dict[str, Any]]:
    """Every child object of one resource, in apply order (the generated auth Secret excluded)."""
    if spec.mode == "sentinel":
        return sentinel.build(spec, owner, password=password, tls_facts=tls_facts)
    if spec.mode == "cluster":
        return cluster.build(spec, owner, password=password, tls_facts=tls_facts)
    raise UnsupportedSpec(f"mode {spec.mode!r} is not available in this version of the operator")

"""Settings of the operator itself, read once from REDIS_MESSAGING_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Every knob of the operator process, typed and documented in one place."""

    model_config = SettingsConfigDict(env_prefix="REDIS_MESSAGING_", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means the whole cluster."
    )
    resync_seconds: float = Field(30.0, gt=0, description="Period of the safety-net reconcile pass.")
    autoscale_tick_seconds: float = Field(2.0, gt=0, description="How often lag is measured.")
    cluster_domain: str = Field("cluster.local", description="DNS suffix of Service names.")
    field_manager: str = Field("redis-messaging-operator", description="Server-side apply field manager.")
    address_mode: Literal["dns", "pod-ip"] = Field(
        "dns",
        description="How the operator reaches Redis pods: their stable DNS names (in-cluster) or "
        "their pod IPs (an operator running outside the cluster network).",
    )
    redis_timeout_seconds: float = Field(2.0, gt=0, description="Socket timeout of Redis commands.")
    liveness_endpoint: str = Field("http://0.0.0.0:8080/healthz", description="Kopf's liveness probe.")
    metrics_port: int = Field(9090, ge=0, description="Port of the operator's Prometheus metrics; 0 = off.")

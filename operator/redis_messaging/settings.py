"""Settings of the operator itself, read once from REDIS_MESSAGING_* environment variables."""

from __future__ import annotations

from typing import Any

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
    status_interval_seconds: float = Field(
        10.0, gt=0,
        description="status.streams is written at once when a replica count, a rule of a decision or an "
        "error changes, and otherwise (lag and pending only) at most this often.",
    )
    reclaim_interval_seconds: float = Field(
        10.0, gt=0,
        description="How often consumers whose pod is gone are looked for and their pending entries "
        "claimed back (one XINFO CONSUMERS round trip per node and one pod list per resource).",
    )
    cluster_domain: str = Field("cluster.local", description="DNS suffix of Service names.")
    field_manager: str = Field("redis-messaging-operator", description="Server-side apply field manager.")
    address_map: str | None = Field(
        None,
        description="A JSON file mapping pods to host:port, for an operator outside the cluster network "
        '(e.g. through port-forwards): {"redis": {"ns/pod": "host:port"}, "sentinel": {...}}. '
        "Without it, pods are reached by their stable DNS names.",
    )
    redis_timeout_seconds: float = Field(2.0, gt=0, description="Socket timeout of Redis commands.")
    operator_peer: dict[str, Any] | None = Field(
        None,
        description="A NetworkPolicyPeer (JSON) selecting the operator's own pods, which spec.networkPolicy "
        "admits to Redis and Sentinel. The chart sets it; without it the operator must reach the pods "
        "through a rule of spec.networkPolicy.clients.",
    )
    max_concurrent_passes: int = Field(
        8, ge=1,
        description="Reconcile passes of different resources that run at the same time (one at a time per "
        "resource). A pass mostly waits on Redis and the API server; a resource whose pods do not answer "
        "holds one of them for a Redis timeout per pod.",
    )
    autoscale_workers: int = Field(
        4, ge=1,
        description="Autoscaler ticks of different resources that run at the same time; each resource is "
        "ticked on its own schedule, so a slow one delays no other.",
    )
    liveness_endpoint: str = Field("http://0.0.0.0:8080/healthz", description="Kopf's liveness probe.")
    metrics_port: int = Field(9090, ge=0, description="Port of the operator's Prometheus metrics; 0 = off.")

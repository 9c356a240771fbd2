"""The operator's Sentinel topology controller acting on a :class:`SentinelEnv`, as the reconcile pass
runs it: pods listed as the API server would list them, one pass at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from redis.exceptions import RedisError
from redis.sentinel import Sentinel
from sentinel_env import SentinelEnv

from redis_messaging.api import models
from redis_messaging.builders.names import Owner
from redis_messaging.modes.base import TopologyReport
from redis_messaging.modes.sentinel.topology import SentinelTopology
from redis_messaging.redis.addresses import MapAddresses

PASSWORD = "topology-test-Pa55word"
OWNER = Owner(name="orders", namespace="shop", uid="uid-orders")
SPEC = models.parse_spec({
    "redis": {"replicas": 3},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
})


def deadline_loop(timeout: float, what: str, interval: float = 0.1) -> Iterator[int]:
    end = time.monotonic() + timeout
    i = 0
    while time.monotonic() < end:
        yield i
        i += 1
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:g}s")


class Harness:
    """The topology controller of the operator on ``env``'s processes. ``cut_off`` pods are out of the
    operator's reach (their addresses lead nowhere), while they still reach each other."""

    def __init__(self, env: SentinelEnv, *, spec: models.RedisMessagingSpec = SPEC, password: str | None = PASSWORD,
                 cut_off: frozenset[str] = frozenset(), nowhere: tuple[str, int] = ("127.0.0.1", 1)) -> None:
        self.env = env
        self.spec = spec
        self.password = password
        redis_map = {p: nowhere if p in cut_off else env.address(p) for p in env.redis_pods}
        sentinel_map = {p: nowhere if p in cut_off else env.address(p) for p in env.sentinel_pods}
        # what Redis and Sentinel announce still maps to the pod, wherever the operator connects
        announced = {env.address(p)[0]: p for p in env.pod_names}
        self.addresses = MapAddresses(redis_map, sentinel_map, announced)
        self.topology = SentinelTopology(self.addresses, timeout=0.5)

    def heal(self, spec: models.RedisMessagingSpec | None = None) -> TopologyReport:
        return self.topology.check_and_heal(spec or self.spec, OWNER, self.env.pod_objects(), self.password)

    def roles(self) -> dict[str, str]:
        out = {}
        for pod in self.env.redis_pods:
            if self.env.is_running(pod) and not self.env.is_stopped(pod):
                try:
                    out[pod] = str(self.env.info(pod)["role"])
                except RedisError:
                    out[pod] = "unreachable"
        return out

    def masters(self) -> list[str]:
        return sorted(p for p, r in self.roles().items() if r == "master")

    def sentinel_client(self) -> Sentinel:
        return Sentinel([self.env.address(p) for p in self.env.sentinel_pods], socket_timeout=0.5,
                        sentinel_kwargs={"password": self.password, "socket_timeout": 0.5}, password=self.password)


def wait_healthy(h: Harness, timeout: float = 30.0) -> TopologyReport:
    report = h.heal()
    for _ in deadline_loop(timeout, f"a healthy topology (last: {report.reason}: {report.message})", 0.3):
        report = h.heal()
        if report.healthy:
            return report
    raise AssertionError("unreachable")

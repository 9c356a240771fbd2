"""Where a pod's Redis or Sentinel listens: the one place that maps pods to reachable addresses.

In a cluster the operator reaches pods by the stable DNS names of their headless Service, which
are also the names they announce to each other and to Sentinel. An operator outside the cluster
network (a laptop with port-forwards, a test harness with processes on loopback) uses a map.

With spec.tls the address alone does not reach a process: the same object also keeps each
resource's client TLS settings (its CA, and its key pair when servers ask for client certificates),
which the reconcile pass sets from the TLS Secret and every component that connects reads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.redis import tls as rtls
from redis_messaging.redis.sentinel import Connections
from redis_messaging.redis.tls import ClientTls

Address = tuple[str, int]


class Addresses(Protocol):
    def redis(self, owner: Owner, pod: str) -> Address:
        """The address of the redis-server of ``pod``."""

    def sentinel(self, owner: Owner, pod: str) -> Address:
        """The address of the redis-sentinel of ``pod``."""

    def pod_of(self, owner: Owner, host: str) -> str | None:
        """The pod that announces ``host`` (what Redis and Sentinel report), if it is one of ours."""

    def tls(self, owner: Owner) -> ClientTls | None:
        """How to speak TLS to the resource's processes; None: plain text."""

    def set_tls(self, owner: Owner, tls: ClientTls | None) -> None:
        """Record the resource's client TLS settings (from its TLS Secret, at every pass)."""


class TlsSettings:
    """Client TLS settings by resource (namespace, name)."""

    def __init__(self) -> None:
        self._tls: dict[tuple[str, str], ClientTls] = {}
        self._tls_lock = threading.Lock()

    def tls(self, owner: Owner) -> ClientTls | None:
        with self._tls_lock:
            return self._tls.get((owner.namespace, owner.name))

    def set_tls(self, owner: Owner, tls: ClientTls | None) -> None:
        with self._tls_lock:
            key = (owner.namespace, owner.name)
            old = self._tls.get(key)
            if old == tls:
                return
            if tls is None:
                self._tls.pop(key, None)
            else:
                self._tls[key] = tls
                rtls.hold(tls)
        if old is not None:
            rtls.release(old)


C = TypeVar("C", bound=Connections)


class OwnerConnections(Generic[C]):
    """One :class:`Connections` per resource, reused across passes (their pools reconnect by
    themselves); each :meth:`get` brings it to the pass's password and to the resource's TLS
    settings as recorded on ``addresses``."""

    def __init__(self, addresses: Addresses, make: Callable[[str | None], C]) -> None:
        self.addresses = addresses
        self.make = make
        self._by_owner: dict[str, C] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(owner: Owner) -> str:
        """What identifies a resource across passes."""
        return owner.uid or f"{owner.namespace}/{owner.name}"

    def get(self, owner: Owner, password: str | None) -> C:
        with self._lock:
            conns = self._by_owner.get(self.key(owner))
            if conns is None:
                conns = self._by_owner[self.key(owner)] = self.make(password)
            conns.set_password(password)
            conns.set_tls(self.addresses.tls(owner))
            return conns

    def forget(self, owner: Owner) -> None:
        with self._lock:
            conns = self._by_owner.pop(self.key(owner), None)
        if conns is not None:
            conns.close()

    def close(self) -> None:
        """Close every client (the resource is gone, or the operator stops)."""
        with self._lock:
            held = list(self._by_owner.values())
            self._by_owner.clear()
        for conns in held:
            conns.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_owner)


class DnsAddresses(TlsSettings):
    """Stable hostnames through the headless Services (what the pods announce themselves)."""

    def redis(self, owner: Owner, pod: str) -> Address:
        return owner.pod_host(pod, owner.redis_headless), names.REDIS_PORT

    def sentinel(self, owner: Owner, pod: str) -> Address:
        return owner.pod_host(pod, owner.sentinel_headless), names.SENTINEL_PORT

    def pod_of(self, owner: Owner, host: str) -> str | None:
        pod, _, rest = host.partition(".")
        suffix = f".{owner.namespace}.svc.{owner.cluster_domain}"
        if rest in (owner.redis_headless + suffix, owner.sentinel_headless + suffix):
            return pod
        return None


class MapAddresses(TlsSettings):
    """Explicit addresses by pod name ("namespace/pod" or "pod"), and the hosts those pods announce."""

    def __init__(self, redis: dict[str, Address], sentinel: dict[str, Address] | None = None,
                 announced: dict[str, str] | None = None) -> None:
        """``announced``: host -> pod for pods that announce another host than the one reached here."""
        super().__init__()
        self._redis = dict(redis)
        self._sentinel = dict(sentinel or {})
        self._hosts = {addr[0]: pod.rsplit("/", 1)[-1] for pod, addr in {**self._redis, **self._sentinel}.items()}
        self._hosts.update(announced or {})

    @classmethod
    def from_file(cls, path: str | Path) -> MapAddresses:
        """``{"redis": {"ns/pod": "host:port"}, "sentinel": {...}}``"""
        raw = json.loads(Path(path).read_text())

        def parse(section: dict[str, str]) -> dict[str, Address]:
            out = {}
            for pod, hostport in section.items():
                host, _, port = hostport.rpartition(":")
                out[pod] = (host, int(port))
            return out

        return cls(parse(raw.get("redis", {})), parse(raw.get("sentinel", {})))

    def _lookup(self, table: dict[str, Address], owner: Owner, pod: str, default_port: int) -> Address:
        found = table.get(f"{owner.namespace}/{pod}") or table.get(pod)
        if found is None:
            return (f"unmapped-{pod}.invalid", default_port)
        return found

    def redis(self, owner: Owner, pod: str) -> Address:
        return self._lookup(self._redis, owner, pod, names.REDIS_PORT)

    def sentinel(self, owner: Owner, pod: str) -> Address:
        return self._lookup(self._sentinel, owner, pod, names.SENTINEL_PORT)

    def pod_of(self, owner: Owner, host: str) -> str | None:
        return self._hosts.get(host)

"""A small JSON client of the Kubernetes API for the local cluster's own controllers (the pod runner,
the volume provisioner, the hosts file): plain dicts, bounded timeouts, and list+watch reflectors.

Not the operator's client: the operator under test uses its own (kopf and the kubernetes package).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class KubeApi:
    """Bearer-token HTTPS to one apiserver."""

    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=64, cert_reqs="CERT_REQUIRED",
                                         ca_certs=str(ca_file), retries=False)

    def request(self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30.0) -> Any:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = dict(self._headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        response = self._pool.request(method, url, body=payload, headers=headers,
                                      timeout=urllib3.Timeout(connect=5, read=timeout))
        text = response.data.decode("utf-8", errors="replace")
        if not 200 <= response.status < 300:
            raise ApiError(method, path, response.status, text)
        return json.loads(text) if text else None

    def get(self, path: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            result: Obj = self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def create(self, path: str, body: Obj) -> Obj | None:
        """POST; None when it already exists."""
        try:
            result: Obj = self.request("POST", path, body)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return result

    def patch(self, path: str, body: Obj, *, kind: str = "strategic-merge-patch") -> Obj | None:
        """PATCH; None when the object is gone."""
        try:
            result: Obj = self.request("PATCH", path, body, content_type=f"application/{kind}+json")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def delete(self, path: str, body: Obj | None = None) -> None:
        """DELETE; a missing object or a failed precondition (another uid) is not an error."""
        try:
            self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise

    def watch(self, path: str, resource_version: str, timeout_seconds: int) -> Iterator[tuple[str, Obj]]:
        """One watch request: (type, object) events until the server ends it (after timeout_seconds)."""
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        url = f"{self.server}{path}?{urllib.parse.urlencode(query)}"
        response = self._pool.request("GET", url, headers=self._headers, preload_content=False,
                                      timeout=urllib3.Timeout(connect=5, read=timeout_seconds + 10))
        try:
            if response.status != 200:
                raise ApiError("WATCH", path, response.status, response.read().decode(errors="replace"))
            buffer = b""
            for chunk in response.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
        finally:
            response.release_conn()


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Reflector:
    """List, then watch, one collection; keeps a store of the objects and calls ``on_change(key, old,
    new)`` (None for a missing side) for every change, from its own thread. Re-lists after an expired
    watch or an error. ``stop()`` ends it within about one watch timeout."""

    WATCH_TIMEOUT = 5

    def __init__(self, api: KubeApi, path: str, on_change: Callable[[str, Obj | None, Obj | None], None],
                 *, name: str) -> None:
        self.api = api
        self.path = path
        self.on_change = on_change
        self.name = name
        self._store: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reflector-{name}", daemon=True)

    def start(self) -> Reflector:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end; it does at its next event or watch timeout (it is a daemon thread,
        holding no process)."""
        self._stop.set()
        self._thread.join(timeout)

    def wait_synced(self, timeout: float) -> None:
        if not self._synced.wait(timeout):
            raise TimeoutError(f"{self.name}: first list not done within {timeout:g}s")

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._store.values())

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._store.get(key)

    def _apply(self, key: str, new: Obj | None) -> None:
        with self._lock:
            old = self._store.get(key)
            if new is None:
                self._store.pop(key, None)
            else:
                self._store[key] = new
        if old is None and new is None:
            return
        try:
            self.on_change(key, old, new)
        except Exception:
            log.exception("%s: handling a change of %s failed", self.name, key)

    def _relist(self) -> str:
        listing = self.api.request("GET", self.path)
        items = {key_of(item): item for item in listing.get("items") or []}
        with self._lock:
            gone = [k for k in self._store if k not in items]
        for key in gone:
            self._apply(key, None)
        for key, item in items.items():
            with self._lock:
                old = self._store.get(key)
            if old is None or old["metadata"].get("resourceVersion") != item["metadata"].get("resourceVersion"):
                self._apply(key, item)
        self._synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                if not resource_version:
                    resource_version = self._relist()
                for type_, obj in self.api.watch(self.path, resource_version, self.WATCH_TIMEOUT):
                    if type_ == "ERROR":
                        resource_version = ""  # 410 Gone: the version expired, list again
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    if type_ == "BOOKMARK":
                        continue
                    self._apply(key_of(obj), None if type_ == "DELETED" else obj)
                    if self._stop.is_set():
                        break
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("%s: watch failed (%s); listing again in 1s", self.name, exc)
                resource_version = ""
                self._stop.wait(1)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"


def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service selector (equality only) against labels; an empty selector selects nothing."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


@contextlib.contextmanager
def reflectors(*items: Reflector) -> Iterator[None]:
    for r in items:
        r.start()
    try:
        yield
    finally:
        for r in items:
            r.stop()

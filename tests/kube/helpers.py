"""Helpers of the kube tier: waiting with deadlines, the CRD, raw API calls, the operator in-process."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "redismessagings.redis-messaging.dev.yaml"
GROUP, VERSION, PLURAL = "redis-messaging.dev", "v1alpha1", "redismessagings"

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.2,
               what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (ApiException, KeyError, IndexError, TypeError, AssertionError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s (last error: {last_error})")
        time.sleep(interval)


def install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD_FILE.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        live = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = live.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    eventually(established, what="CRD Established")


def rmsg(name: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RedisMessaging",
        "metadata": {"name": name, **meta},
        "spec": spec if spec is not None else {"mode": "sentinel"},
    }


class Api:
    """Thin conveniences over the admin ApiClient."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
        return result

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return result

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch)
        return result

    def delete(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def raw(self, method: str, path: str, *, accept: str = "application/json", body: Any = None,
            content_type: str | None = None) -> Any:
        headers = {"Accept": accept, "Content-Type": content_type or "application/json"}
        method_, url, headers, payload, _ = self.api.param_serialize(
            method=method, resource_path=path, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        response = self.api.call_api(method_, url, header_params=headers, body=payload)
        response.read()
        assert 200 <= response.status < 300, (response.status, response.data)
        return json.loads(response.data)

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
        for c in (self.get(namespace, name).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return c  # type: ignore[no-any-return]
        return None

    def events(self, namespace: str, involved: str) -> list[Any]:
        items = self.core.list_namespaced_event(namespace).items
        return [e for e in items if e.involved_object.name == involved]

    def mark_pods_ready(self, namespace: str, selector: str) -> int:
        """Play the kubelet: report the pods of ``selector`` Running and Ready."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        for pod in pods:
            status = {"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ]}}
            self.core.patch_namespaced_pod_status(pod.metadata.name, namespace, status)
        return len(pods)


@contextlib.contextmanager
def operator_running(namespace: str, *, extra_env: dict[str, str] | None = None) -> Iterator[Any]:
    """The operator in-process (Kopf's KopfRunner) watching one namespace; asserts a clean exit."""
    from kopf.testing import KopfRunner

    os.environ.update(extra_env or {})
    args = ["run", "--standalone", "--namespace", namespace, "--verbose", "-m", "redis_messaging.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    output = runner.output
    assert runner.exception is None, output[-4000:]
    assert runner.exit_code == 0, output[-4000:]
    where = output.find("Traceback")
    assert where < 0, output[max(0, where - 1500):where + 4000]


def redis_server_helper() -> ModuleType:
    """tests/redis/_server.py (real redis-server processes), imported by path: tests/redis is no package."""
    found = sys.modules.get("redis_test_server")
    if found is not None:
        return found
    path = Path(__file__).resolve().parents[1] / "redis" / "_server.py"
    spec = importlib.util.spec_from_file_location("redis_test_server", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

"""Password rotation and ACL users end to end: the operator runs in-process against the real API
server, real redis-server / redis-sentinel processes play the pods (SentinelEnv, reached through
REDIS_MESSAGING_ADDRESS_MAP). A user changes the password Secret; an application that follows the
connection Secret keeps writing without a single failure; afterwards only the new password works.
No password shows in an Event, a condition, the status or the operator's log."""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Api, eventually, install_crd, operator_running, rmsg
from kubernetes import client
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "redis"))
from sentinel_env import SentinelEnv

from redis_messaging.api import models
from redis_messaging.builders.names import Owner

pytestmark = pytest.mark.redis

OLD = "rotate-old-Pa55word"
NEW = "rotate-new-Pa55word"
APP = "rotate-app-Pa55word"
SPEC: dict[str, Any] = {
    "auth": {"secretName": "orders-password", "rotationGraceSeconds": 3,
             "users": [{"name": "billing", "secretName": "billing-password",
                        "rules": "~orders* resetchannels -@all +@stream +ping +hello +auth"}]},
    "redis": {"replicas": 3, "config": {"repl-diskless-sync-delay": "0"}},
    "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 1000, "failoverTimeout": 5000},
    "monitoring": {"exporter": {"enabled": False}},
}


@pytest.fixture
def api(kube_api: client.ApiClient) -> Api:
    install_crd(kube_api)
    return Api(kube_api)


@pytest.fixture
def pods(namespace: str, tmp_path: Path) -> Iterator[SentinelEnv]:
    owner = Owner(name="orders", namespace=namespace)
    with SentinelEnv(models.parse_spec(SPEC), owner, tmp_path / "pods", password=OLD) as env:
        env.start()
        env.wait_replication(timeout=30)
        env.sentinel_master(timeout=30)
        yield env


def secret_value(api: Api, namespace: str, name: str, key: str = "password") -> str | None:
    data = api.core.read_namespaced_secret(name, namespace).data or {}
    return base64.b64decode(data[key]).decode() if key in data else None


class App(threading.Thread):
    """An application that writes to the master and follows the connection Secret: when its password
    changes, it opens a new connection with it (what a pod re-reading a mounted Secret does)."""

    def __init__(self, api: Api, namespace: str, env: SentinelEnv, master: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace, self.env, self.master = api, namespace, env, master
        self.password = secret_value(api, namespace, "orders-connection")
        self.client = self._connect()
        self.acked = 0
        self.failures: list[str] = []
        self.moved_at: float | None = None
        self.stop = threading.Event()

    def _connect(self) -> redis.Redis:
        ip, port = self.env.address(self.master)
        return redis.Redis(host=ip, port=port, password=self.password, socket_timeout=2)

    def run(self) -> None:
        last_check = 0.0
        while not self.stop.is_set():
            if time.monotonic() - last_check > 0.2:
                last_check = time.monotonic()
                published = secret_value(self.api, self.namespace, "orders-connection")
                if published != self.password:
                    self.password, old = published, self.client
                    self.client = self._connect()
                    old.close()
                    self.moved_at = time.monotonic()
            try:
                self.client.xadd("orders-rotation", {"n": str(self.acked)})
                self.acked += 1
            except (RedisError, OSError) as exc:
                self.failures.append(type(exc).__name__)
            time.sleep(0.005)
        self.client.close()


def accepts(env: SentinelEnv, pod: str, password: str, user: str | None = None) -> bool:
    try:
        return bool(env.client(pod, password=password, username=user).ping())
    except RedisError:
        return False


def test_rotation_through_the_operator_loses_no_write_and_leaks_no_password(
        api: Api, namespace: str, pods: SentinelEnv, operator_kubeconfig: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env = pods
    address_map = tmp_path / "addresses.json"
    address_map.write_text(json.dumps({
        "redis": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.redis_pods},
        "sentinel": {f"{namespace}/{p}": "{}:{}".format(*env.address(p)) for p in env.sentinel_pods},
    }))
    monkeypatch.setenv("REDIS_MESSAGING_ADDRESS_MAP", str(address_map))
    # A Secret change reaches the operator with its periodic pass (default every 30 s): shorter here.
    monkeypatch.setenv("REDIS_MESSAGING_RESYNC_SECONDS", "1")
    for name, value in (("orders-password", OLD), ("billing-password", APP)):
        api.core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data={"password": value}))

    with operator_running(namespace) as runner:
        api.create(namespace, rmsg("orders", SPEC))
        ready = eventually(lambda: (c := api.condition(namespace, "orders", "AuthReady")) and c["status"] == "True"
                           and c, timeout=30, what="AuthReady (users applied)")
        assert ready["reason"] == "AsDeclared"
        assert all(accepts(env, p, APP, "billing") for p in env.redis_pods)
        assert secret_value(api, namespace, "orders-connection") == OLD

        master = env.wait_replication()
        app = App(api, namespace, env, master)
        app.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            api.core.patch_namespaced_secret("orders-password", namespace,
                                             {"data": {"password": base64.b64encode(NEW.encode()).decode()}})
            eventually(lambda: app.moved_at is not None, timeout=30, what="the application moved to the new password")
            assert app.moved_at is not None
            published_after = app.moved_at - started
            eventually(lambda: not any(accepts(env, p, OLD) for p in env.pod_names), timeout=30,
                       what="old password removed everywhere")
            removed_after = time.monotonic() - started
            time.sleep(0.5)
        finally:
            app.stop.set()
            app.join(10)
        assert app.failures == []
        assert all(accepts(env, p, NEW) for p in env.pod_names)
        assert env.client(master, password=NEW).xlen("orders-rotation") == app.acked
        assert removed_after >= 3  # rotationGraceSeconds
        eventually(lambda: (c := api.condition(namespace, "orders", "AuthReady")) and c["status"] == "True",
                   timeout=30, what="AuthReady again")
        reasons = [e.reason for e in api.events(namespace, "orders")]
        assert "PasswordAdded" in reasons
        assert "OldPasswordRemoved" in reasons
        status_text = json.dumps(api.get(namespace, "orders"))
        event_text = json.dumps([(e.reason, e.message) for e in api.core.list_namespaced_event(namespace).items])
        annotations = api.core.read_namespaced_secret("orders-connection", namespace).metadata.annotations
        assert "redis-messaging.dev/password-published-at" in annotations
    # After the operator stopped: KopfRunner redirects stdout while it runs.
    print(f"\nrotation through the operator: {app.acked} writes, {len(app.failures)} failed; "
          f"published after {published_after:.2f}s, old password gone after {removed_after:.2f}s")
    log_text = runner.output + "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for secret in (OLD, NEW, APP):
        assert secret not in status_text
        assert secret not in event_text
        assert secret not in log_text
        assert secret not in json.dumps(annotations)

"""Helpers of the e2e tier: kubectl and the API against the cluster under test, waiting with deadlines
(never fixed sleeps), and redis-cli inside the redis pods.

Two backends give a :class:`Cluster`: kind (or any cluster named by E2E_KUBECONFIG, the operator
installed by the chart) and the local cluster of e2e/local (:class:`LocalBackend`), where exec goes
through its pod runner and the operator's log is a file."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "redis-messaging.dev", "v1alpha1", "redismessagings"
LABEL_ROLE = f"{GROUP}/role"
AUTH_FILE = "/etc/redis-messaging-auth/password"
TLS_DIR = "/etc/redis-messaging-tls"

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float, interval: float = 1.0,
               what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (subprocess.CalledProcessError, KeyError, IndexError, TypeError, AssertionError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s (last error: {last_error})")
        time.sleep(interval)


def new_namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-").removeprefix("test-")[:40].rstrip("-")
    return f"e2e-{base or 'test'}-{secrets.token_hex(3)}"


def resource(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RedisMessaging", "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input_text,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result.stdout if result.returncode == 0 else result.stdout + result.stderr

    def apply(self, namespace: str, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), "apply", "-n", namespace,
                                 "-f", "-"], input=yaml.safe_dump(obj), capture_output=True, text=True,
                                timeout=60, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl apply failed: {result.stderr}")
        return result

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json"))  # type: ignore[no-any-return]

    def items(self, namespace: str, kind: str, selector: str) -> list[dict[str, Any]]:
        out = json.loads(self.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json"))
        return out["items"]  # type: ignore[no-any-return]

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
        status = self.get(namespace, PLURAL, name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)

    def redis_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=redis"
        return self.items(namespace, "pods", selector)

    def masters(self, namespace: str, name: str) -> list[str]:
        """Redis pods carrying role=master (what the master Service selects)."""
        return [p["metadata"]["name"] for p in self.redis_pods(namespace, name)
                if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == "master"
                and not p["metadata"].get("deletionTimestamp")]

    def exec(self, namespace: str, pod: str, container: str, *argv: str, timeout: float = 60) -> str:
        """`kubectl exec`: the command's stdout; CalledProcessError when it fails."""
        return self.kubectl("exec", "-n", namespace, pod, "-c", container, "--", *argv, timeout=timeout)

    def redis_cli(self, namespace: str, pod: str, *command: str) -> str:
        """redis-cli in the pod's redis container, authenticated from the mounted Secret."""
        return self.redis_cli_script(namespace, pod, 'exec redis-cli $tls "$@"', *command)

    def redis_cli_script(self, namespace: str, pod: str, script: str, *args: str, timeout: float = 60) -> str:
        """A shell script in the pod's redis container with redis-cli's password in its environment and
        ``$tls`` holding its TLS options (with spec.tls: the pod's own key pair, the files the start scripts
        use)."""
        setup = (f'REDISCLI_AUTH="$(cat {AUTH_FILE})"; export REDISCLI_AUTH; tls=""; '
                 f'if [ -f {TLS_DIR}/ca.crt ]; then tls="--tls --cacert {TLS_DIR}/ca.crt '
                 f'--cert {TLS_DIR}/tls.crt --key {TLS_DIR}/tls.key"; fi; ')
        return self.exec(namespace, pod, "redis", "sh", "-c", setup + script, "redis-cli", *args,
                         timeout=timeout).strip()

    def events(self, namespace: str) -> str:
        return self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)

    def operator_log(self, tail: int = 300) -> str:
        namespace = os.environ.get("E2E_OPERATOR_NAMESPACE", "redis-messaging")
        release = os.environ.get("E2E_OPERATOR_RELEASE", "redis-messaging-operator")
        # The chart's fullname: the release name when it holds the chart name.
        deployment = release if "redis-messaging-operator" in release else f"{release}-redis-messaging-operator"
        return self.kubectl("logs", "-n", namespace, f"deployment/{deployment}", f"--tail={tail}", check=False)


@dataclass(frozen=True)
class LocalBackend(Cluster):
    """The local cluster of e2e/local (E2E_BACKEND=local): the same API server, kubectl and operator.

    Its kubelet is the pod runner, which serves no exec API for the API server to proxy to, so exec
    runs the command in the pod's namespaces through the runner (what `kubectl exec` does on a node);
    the operator is a process whose log is a file.
    """

    local: Any = None  # e2e/local/localcluster.py's LocalCluster

    def exec(self, namespace: str, pod: str, container: str, *argv: str, timeout: float = 60) -> str:
        try:
            result = self.local.runner.exec(namespace, pod, list(argv), container=container, timeout=timeout)
        except LookupError as exc:  # the pod does not run (yet, or any more)
            raise subprocess.CalledProcessError(1, ["exec", namespace, pod, *argv], "", str(exc)) from None
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, ["exec", namespace, pod, *argv],
                                                result.stdout, result.stderr)
        return str(result.stdout)

    def operator_log(self, tail: int = 300) -> str:
        return str(self.local.operator_log(tail))

    def container_logs(self, namespace: str, lines: int = 15) -> str:
        """The last lines of every container of the namespace's pods (what `kubectl logs` would show)."""
        parts = []
        for path in sorted(Path(self.local.work).glob(f"pods/{namespace}_*/*.log")):
            if path.name == "sandbox.log":
                continue
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.parent.name.rsplit('_', 1)[0]} {path.stem} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def events(self, namespace: str) -> str:
        # The Endpoints and EndpointSlice controllers refuse the pods' loopback addresses (the hosts
        # files stand in for Service routing): their warnings would drown everything else.
        return "\n".join(line for line in super().events(namespace).splitlines()
                         if "FailedToUpdateEndpoint" not in line)

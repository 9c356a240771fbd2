"""Sentinel-mode "pods" as real processes on loopback, running the operator's rendered files.

Each pod of a ``mode: sentinel`` resource is played by the real start script of the ConfigMap that
:func:`redis_messaging.modes.config_files` renders (``sh redis-start.sh`` or
``sh sentinel-start.sh``), with the environment the StatefulSet gives it
(:func:`redis_messaging.modes.sentinel.objects.script_env`). Where Kubernetes gives every pod its own
address and DNS name, the harness gives every pod its own loopback address (``127.a.b.c``) and uses
that address as the pod's host name, on the standard ports, exactly like a cluster.

The only edit made to the rendered files is the one a volume mount would make: ``dir /data`` in
``redis.conf`` and ``dir /run/redis`` in ``sentinel.conf`` point at the pod's own directories
(plus the ``port`` lines when a caller asks for non-standard ports).

Usage::

    with SentinelEnv(spec, owner, tmp_path, password="s3cret") as env:
        env.start()
        master = env.wait_replication(timeout=20)
        env.kill(master)
        new_master = env.sentinel_master(timeout=10, other_than=env.address(master))
        env.restart(master)

Not a conftest: tests build their own fixtures on top of :class:`SentinelEnv`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from tls_certs import KeyPair, mount

from redis_messaging import modes
from redis_messaging.api.models import RedisMessagingSpec
from redis_messaging.builders import names
from redis_messaging.builders.names import Owner
from redis_messaging.modes.sentinel.objects import script_env

Kind = Literal["redis", "sentinel"]
Address = tuple[str, int]

# -- loopback addresses ------------------------------------------------------------------------------
# 127.A.B.C with A in 1..254 (127.0.0.x is left to the machine: 127.0.0.1, 127.0.0.53, ...; 127.255.N.0/24
# to the local clusters of e2e/local), B in 0..255 and C in 1..254. A process takes whole blocks
# 127.A.B.0/24 for itself: a lock file per block (flock, released when the process ends, however it
# ends) keeps the other processes of the machine out of it, so an address stays this process's while
# its pod is down (a free port says nothing then: the kube and redis tiers run side by side in CI, and
# one took the address of the other's restarting pod). Within its blocks it never hands out an address
# twice.
_OCTET_C = 254
_OCTET_B = 256
_OCTET_A = 254
_BLOCKS = _OCTET_A * _OCTET_B
_BLOCK_DIR = Path(tempfile.gettempdir()) / "rmsg-loopback-blocks"
_allocation = threading.Lock()
_held: list[int] = []  # lock file descriptors of this process's blocks, kept open for its lifetime
_current: list[int] = []  # [block number, next C index] of the block addresses come from


def _loopback(block: int, index: int) -> str:
    a, b = divmod(block % _BLOCKS, _OCTET_B)
    return f"127.{a + 1}.{b}.{index + 1}"


def _claim_block() -> int:
    """The first block from this process's pid on that no other process holds."""
    _BLOCK_DIR.mkdir(parents=True, exist_ok=True)
    start = (os.getpid() * 7919) % _BLOCKS
    for step in range(_BLOCKS):
        block = (start + step) % _BLOCKS
        fd = os.open(_BLOCK_DIR / str(block), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _held.append(fd)
        return block
    raise RuntimeError(f"every loopback block is held by another process ({_BLOCK_DIR})")


def port_is_free(ip: str, port: int) -> bool:
    """Whether ``ip:port`` can be bound now (nothing listens there, nor on the wildcard address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def free_loopback_ip(port: int, *, attempts: int = 256) -> str:
    """A loopback address of this process's own blocks, never handed out before, on which ``port`` is
    free (checked by binding: something outside these tests may listen there)."""
    tried: list[str] = []
    with _allocation:
        for _ in range(attempts):
            if not _current or _current[1] >= _OCTET_C:
                _current[:] = [_claim_block(), 0]
            ip = _loopback(_current[0], _current[1])
            _current[1] += 1
            if port_is_free(ip, port):
                return ip
            tried.append(ip)
    raise RuntimeError(
        f"no free loopback address for port {port} after {attempts} attempts (e.g. {tried[:3]}); "
        f"is something listening on 0.0.0.0:{port}?"
    )


# -- pods --------------------------------------------------------------------------------------------
@dataclass
class Pod:
    """One "pod": its address, its directories (the volumes), its environment and its process."""

    name: str
    kind: Kind
    ip: str
    port: int
    root: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    starts: int = 0

    @property
    def address(self) -> Address:
        return (self.ip, self.port)

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def auth_dir(self) -> Path:
        return self.root / "auth"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def start_script(self) -> str:
        return "redis-start.sh" if self.kind == "redis" else "sentinel-start.sh"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _start_marker(pod: Pod) -> str:
    return f"=== sentinel_env: start {pod.starts} of {pod.name} ==="


def _replace_line(text: str, old: str, new: str, what: str) -> str:
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\n") == old]
    if len(hits) != 1:
        raise RuntimeError(f"the rendered {what} has {len(hits)} lines {old!r} (expected 1): update sentinel_env.py")
    lines[hits[0]] = new + "\n"
    return "".join(lines)


def mounted_files(files: Mapping[str, str], *, data_dir: Path, run_dir: Path,
                  redis_port: int = names.REDIS_PORT, sentinel_port: int = names.SENTINEL_PORT) -> dict[str, str]:
    """The ConfigMap files as one pod sees them: its own data and runtime directories (the volumes)."""
    out = dict(files)
    port = "tls-port" if "\ntls-port " in out["redis.conf"] else "port"
    out["redis.conf"] = _replace_line(out["redis.conf"], f"dir {names.DATA_MOUNT}", f"dir {data_dir}", "redis.conf")
    out["sentinel.conf"] = _replace_line(
        out["sentinel.conf"], f"dir {names.RUN_MOUNT}", f"dir {run_dir}", "sentinel.conf"
    )
    if redis_port != names.REDIS_PORT:
        out["redis.conf"] = _replace_line(
            out["redis.conf"], f"{port} {names.REDIS_PORT}", f"{port} {redis_port}", "redis.conf"
        )
        monitor, token = out["sentinel-monitor.conf"], f"@MASTER@ {names.REDIS_PORT} "
        if monitor.count(token) != 1:
            raise RuntimeError(f"the rendered sentinel-monitor.conf has no single {token!r}: update sentinel_env.py")
        out["sentinel-monitor.conf"] = monitor.replace(token, f"@MASTER@ {redis_port} ")
    if sentinel_port != names.SENTINEL_PORT:
        out["sentinel.conf"] = _replace_line(
            out["sentinel.conf"], f"{port} {names.SENTINEL_PORT}", f"{port} {sentinel_port}", "sentinel.conf"
        )
    return out


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # Each pod runs in its own session: the script, then redis-server (same pid after exec) and any
    # child it forks (AOF rewrite, diskless sync) or redis-cli calls of the script all get the signal.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class SentinelEnv:
    """Redis and Sentinel pods of one sentinel-mode resource, as processes on loopback addresses.

    Pods are named like the StatefulSets name them (``orders-redis-0``, ``orders-sentinel-1``).
    Every wait has a deadline and raises with the tail of the relevant logs.
    """

    def __init__(self, spec: RedisMessagingSpec, owner: Owner, base_dir: Path, *,
                 redis_port: int = names.REDIS_PORT, sentinel_port: int = names.SENTINEL_PORT,
                 password: str | None, tls: KeyPair | None = None, extra_env: Mapping[str, str] | None = None) -> None:
        if spec.mode != "sentinel":
            raise ValueError(f"SentinelEnv plays mode: sentinel, not {spec.mode}")
        if spec.auth.enabled != (password is not None):
            raise ValueError("pass a password exactly when spec.auth.enabled (the pods mount the auth Secret)")
        if spec.tls.enabled != (tls is not None):
            raise ValueError("pass a key pair exactly when spec.tls.enabled (the pods mount the TLS Secret)")
        if any(ch.isspace() or ch in "\"'" for ch in str(base_dir)):
            raise ValueError(f"base_dir must not contain spaces or quotes (it lands in redis.conf): {base_dir}")
        self.spec = spec
        self.owner = owner
        self.base_dir = base_dir
        self.password = password
        self.tls = tls
        # what every client of the harness adds: the CA, and the key pair (tls-auth-clients yes or not)
        self.tls_options: dict[str, Any] = tls.redis_kwargs() if tls is not None else {}
        self.redis_port = redis_port
        self.sentinel_port = sentinel_port
        self.files = modes.config_files(spec, owner)
        self._clients: list[redis.Redis] = []
        self._closed = False

        redis_names = [owner.redis_pod(i) for i in range(spec.redis.replicas)]
        sentinel_names = [owner.sentinel_pod(i) for i in range(spec.sentinel.replicas)]
        redis_ips = [free_loopback_ip(redis_port) for _ in redis_names]
        sentinel_ips = [free_loopback_ip(sentinel_port) for _ in sentinel_names]
        hosts = {
            "RMSG_SEED_HOST": redis_ips[0],
            "RMSG_REDIS_HOSTS": " ".join(redis_ips),
            "RMSG_SENTINEL_HOSTS": " ".join(sentinel_ips),
            "RMSG_REDIS_PORT": str(redis_port),
            "RMSG_SENTINEL_PORT": str(sentinel_port),
        }
        self._pods: dict[str, Pod] = {}
        members: list[tuple[str, Kind, str, int, str]] = [
            *((n, "redis", ip, redis_port, owner.redis_headless) for n, ip in zip(redis_names, redis_ips, strict=True)),
            *((n, "sentinel", ip, sentinel_port, owner.sentinel_headless)
              for n, ip in zip(sentinel_names, sentinel_ips, strict=True)),
        ]
        for name, kind, ip, port, headless in members:
            root = base_dir / name
            env = {
                "PATH": os.environ.get("PATH", os.defpath),
                "HOME": str(root),
                "LC_ALL": "C",
                # The downward API values of pods.downward_env().
                "POD_NAME": name,
                "POD_NAMESPACE": owner.namespace,
                **script_env(spec, owner, headless),
                **hosts,
                "RMSG_CONFIG_DIR": str(root / "config"),
                "RMSG_AUTH_DIR": str(root / "auth"),
                "RMSG_RUN_DIR": str(root / "run"),
                "RMSG_SELF_HOST": ip,
                "RMSG_BIND": ip,
                "RMSG_PROBE_HOST": ip,
            }
            if tls is not None:
                env.update({"RMSG_TLS": "yes", "RMSG_TLS_DIR": str(root / "tls")})
            env.update(extra_env or {})
            pod = Pod(name=name, kind=kind, ip=ip, port=port, root=root, env=env)
            self._pods[name] = pod
            self._write_volumes(pod)

    # -- volumes -------------------------------------------------------------------------------------
    def _write_volumes(self, pod: Pod) -> None:
        for directory in (pod.config_dir, pod.auth_dir, pod.run_dir, pod.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        files = mounted_files(self.files, data_dir=pod.data_dir, run_dir=pod.run_dir,
                              redis_port=self.redis_port, sentinel_port=self.sentinel_port)
        for key, text in files.items():
            (pod.config_dir / key).write_text(text)
            (pod.config_dir / key).chmod(0o555)  # the ConfigMap volume's defaultMode
        if self.tls is not None:
            mount(pod.root / "tls", self.tls)
        if self.password is not None:
            secret = pod.auth_dir / "password"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password)
            secret.chmod(0o600)

    # -- names and addresses -------------------------------------------------------------------------
    @property
    def pod_names(self) -> list[str]:
        """Every pod: the Redis pods by ordinal, then the Sentinel pods."""
        return list(self._pods)

    @property
    def redis_pods(self) -> list[str]:
        return [p.name for p in self._pods.values() if p.kind == "redis"]

    @property
    def sentinel_pods(self) -> list[str]:
        return [p.name for p in self._pods.values() if p.kind == "sentinel"]

    @property
    def addresses(self) -> dict[str, Address]:
        """Pod name -> (ip, port)."""
        return {p.name: p.address for p in self._pods.values()}

    def pod(self, name: str) -> Pod:
        try:
            return self._pods[name]
        except KeyError:
            raise KeyError(f"no pod {name!r}; pods are {self.pod_names}") from None

    def address(self, pod: str) -> Address:
        return self.pod(pod).address

    def pod_at(self, address: Address) -> str:
        """The pod name of an (ip, port) a Redis or Sentinel reported."""
        for p in self._pods.values():
            if p.address == (address[0], int(address[1])):
                return p.name
        raise KeyError(f"no pod at {address}; pods are {self.addresses}")

    def empty_volume(self, pod: str) -> None:
        """Remove every file of the pod's data volume (the pod must not run): a volume that came back empty."""
        p = self.pod(pod)
        if p.alive():
            raise RuntimeError(f"{pod} is running: stop it before emptying its volume")
        for child in p.data_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def pod_objects(self) -> list[dict[str, Any]]:
        """The pods as the API server would list them: a pod whose process runs (a frozen one included)
        has a running ``redis``/``sentinel`` container; a killed one's container is terminated."""
        out: list[dict[str, Any]] = []
        for p in self._pods.values():
            state = {"running": {}} if p.alive() else {"terminated": {"exitCode": 137}}
            out.append({"metadata": {"name": p.name, "namespace": self.owner.namespace},
                        "status": {"phase": "Running",
                                   "containerStatuses": [{"name": p.kind, "state": state}]}})
        return out

    def pid(self, pod: str) -> int:
        p = self.pod(pod)
        if p.process is None:
            raise RuntimeError(f"{pod} was never started")
        return p.process.pid

    # -- clients -------------------------------------------------------------------------------------
    def client(self, pod: str, **kwargs: Any) -> redis.Redis:
        """A redis-py client of the pod; closed by :meth:`close`.

        With the password, 2 s timeouts, decoded replies and no retries (redis-py would otherwise
        retry a refused connection or a failed AUTH with backoff); ``kwargs`` override these.
        """
        ip, port = self.address(pod)
        options: dict[str, Any] = {
            "password": self.password, "socket_timeout": 2, "socket_connect_timeout": 2, "decode_responses": True,
            "retry": Retry(NoBackoff(), 0), **self.tls_options,
        }
        options.update(kwargs)
        client = redis.Redis(host=ip, port=port, **options)
        self._clients.append(client)
        return client

    @contextlib.contextmanager
    def _connection(self, pod: str) -> Iterator[redis.Redis]:
        ip, port = self.address(pod)
        client = redis.Redis(host=ip, port=port, password=self.password, socket_timeout=2,
                             socket_connect_timeout=2, decode_responses=True, retry=Retry(NoBackoff(), 0),
                             **self.tls_options)
        try:
            yield client
        finally:
            client.close()

    def info(self, pod: str, section: str = "replication") -> dict[str, Any]:
        with self._connection(pod) as client:
            return dict(client.info(section))

    # -- processes -----------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every pod at once (a StatefulSet with the Parallel policy): Redis pods, then Sentinels."""
        for p in self._pods.values():
            if p.kind == "redis":
                self._spawn(p)
        for p in self._pods.values():
            if p.kind == "sentinel":
                self._spawn(p)
        return self

    def _spawn(self, pod: Pod) -> None:
        if self._closed:
            raise RuntimeError("this SentinelEnv is closed")
        if pod.alive():
            raise RuntimeError(f"{pod.name} is already running (pid {self.pid(pod.name)})")
        pod.starts += 1
        with pod.log.open("ab") as log:
            log.write(f"{_start_marker(pod)}\n".encode())
            log.flush()
            pod.process = subprocess.Popen(
                ["sh", str(pod.config_dir / pod.start_script)],
                env=pod.env, cwd=pod.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.stopped = False

    def is_running(self, pod: str) -> bool:
        """Whether the pod's process exists (a SIGSTOPped one included)."""
        return self.pod(pod).alive()

    def is_stopped(self, pod: str) -> bool:
        p = self.pod(pod)
        return p.alive() and p.stopped

    def kill(self, pod: str, sig: int = signal.SIGKILL, *, timeout: float | None = 10.0) -> None:
        """Send ``sig`` to the pod's processes and wait (up to ``timeout``, None: no wait) for the exit.

        A stopped pod is continued after the signal, so that it can act on it (SIGKILL needs not).
        """
        if sig == signal.SIGSTOP:
            self.stop(pod)
            return
        if sig == signal.SIGCONT:
            self.cont(pod)
            return
        p = self.pod(pod)
        if p.process is None or not p.alive():
            return
        _signal_group(p.process, sig)
        if p.stopped and sig != signal.SIGKILL:
            _signal_group(p.process, signal.SIGCONT)
        p.stopped = False
        if timeout is None:
            return
        try:
            p.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{pod} did not exit within {timeout:g}s of signal {signal.Signals(sig).name}\n{self.log_tail(pod)}"
            ) from None

    def stop(self, pod: str) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a frozen node)."""
        p = self.pod(pod)
        if p.process is None or not p.alive():
            raise RuntimeError(f"{pod} is not running")
        _signal_group(p.process, signal.SIGSTOP)
        p.stopped = True

    def cont(self, pod: str) -> None:
        p = self.pod(pod)
        if p.process is None or not p.alive():
            raise RuntimeError(f"{pod} is not running")
        _signal_group(p.process, signal.SIGCONT)
        p.stopped = False

    def use_engine(self, pod: str, bin_dir: Path | None) -> None:
        """What the pod runs from its next start on (a new image): the binaries of ``bin_dir`` first on
        its PATH (an engine of .ci/build-engine.sh); None: the machine's."""
        base = os.environ.get("PATH", os.defpath)
        self.pod(pod).env["PATH"] = base if bin_dir is None else f"{bin_dir}{os.pathsep}{base}"

    def restart(self, pod: str, *, grace: float = 10.0) -> None:
        """Start the pod again with the same volumes (its real start script picks its role).

        A running pod is terminated first, like a container restart: SIGTERM, SIGKILL after ``grace``.
        """
        p = self.pod(pod)
        if p.alive():
            self._terminate([p], grace)
        self._spawn(p)

    def _terminate(self, pods: list[Pod], grace: float) -> None:
        live = [p for p in pods if p.process is not None and p.alive()]
        for p in live:
            assert p.process is not None
            _signal_group(p.process, signal.SIGTERM)
            if p.stopped:
                _signal_group(p.process, signal.SIGCONT)
            p.stopped = False
        deadline = time.monotonic() + grace
        for p in live:
            assert p.process is not None
            try:
                p.process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                _signal_group(p.process, signal.SIGKILL)
                p.process.wait(10)
            # A SIGKILLed script may leave forked children in its group (AOF rewrite, redis-cli).
            _signal_group(p.process, signal.SIGKILL)

    def close(self, *, grace: float = 5.0) -> None:
        """Stop every pod (continue stopped ones, SIGTERM, SIGKILL after ``grace``) and close clients."""
        if self._closed:
            return
        self._closed = True
        try:
            self._terminate(list(self._pods.values()), grace)
        finally:
            for client in self._clients:
                with contextlib.suppress(Exception):
                    client.close()
            self._clients.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- scripts -------------------------------------------------------------------------------------
    def run_script(self, pod: str, script: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run one of the pod's ConfigMap scripts with the pod's environment (like an exec probe or hook).

        On timeout the script's whole process group is killed and the result has returncode -9.
        """
        p = self.pod(pod)
        proc = subprocess.Popen(
            ["sh", str(p.config_dir / script), *args], env=p.env, cwd=p.root, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(proc.args, -9, out, err)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def probe(self, pod: str, probe: Literal["liveness", "readiness"] = "readiness", *,
              timeout: float = 10.0) -> int:
        """The exit code of the pod's real ``probe.sh`` (0: the kubelet would count a success)."""
        p = self.pod(pod)
        args = [probe] if p.kind == "redis" else [probe, "sentinel"]
        return self.run_script(pod, "probe.sh", *args, timeout=timeout).returncode

    # -- waits ---------------------------------------------------------------------------------------
    def wait_ready(self, pod: str, timeout: float = 30.0) -> None:
        """Until ``probe.sh readiness`` of the pod exits 0; raises early if the process exits."""
        p = self.pod(pod)
        deadline = time.monotonic() + timeout
        code = None
        while True:
            if not p.alive():
                rc = None if p.process is None else p.process.returncode
                raise RuntimeError(f"{pod} is not running (exit code {rc})\n{self.log_tail(pod)}")
            code = self.probe(pod, "readiness")
            if code == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{pod} not ready within {timeout:g}s (probe.sh readiness exits {code})\n{self.log_tail(pod)}"
                )
            time.sleep(0.2)

    def _answering(self, kind: Kind) -> list[Pod]:
        return [p for p in self._pods.values() if p.kind == kind and p.alive() and not p.stopped]

    def wait_replication(self, timeout: float = 30.0) -> str:
        """Until one running Redis pod is the master and every other running one is its replica with
        ``master_link_status:up``; returns the master's pod name. Stopped pods are not counted."""
        deadline = time.monotonic() + timeout
        state: str = "no Redis pod is running"
        while True:
            pods = self._answering("redis")
            infos: dict[str, dict[str, Any]] = {}
            errors: dict[str, str] = {}
            for p in pods:
                try:
                    infos[p.name] = self.info(p.name, "replication")
                except RedisError as exc:
                    errors[p.name] = f"{type(exc).__name__}: {exc}"
            masters = [n for n, i in infos.items() if i.get("role") == "master"]
            if pods and not errors and len(masters) == 1:
                master = self.pod(masters[0])
                lagging = {
                    n: f"role={i.get('role')} master={i.get('master_host')}:{i.get('master_port')} "
                       f"link={i.get('master_link_status')}"
                    for n, i in infos.items()
                    if n != master.name and not (
                        i.get("master_link_status") == "up"
                        and i.get("master_host") == master.ip and int(i.get("master_port", 0)) == master.port
                    )
                }
                if not lagging:
                    return master.name
                state = f"master {master.name}; not replicating from it: {lagging}"
            else:
                state = f"masters {masters}, errors {errors}, running {[p.name for p in pods]}"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"replication not settled within {timeout:g}s: {state}\n{self.log_tail(*self.redis_pods)}"
                )
            time.sleep(0.2)

    def sentinel_masters(self) -> dict[str, Address | None]:
        """What each answering Sentinel says the master is (None: no answer or unknown)."""
        out: dict[str, Address | None] = {}
        for p in self._answering("sentinel"):
            try:
                with self._connection(p.name) as client:
                    reply = client.execute_command(  # type: ignore[no-untyped-call]
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.owner.master_name
                    )
            except RedisError:
                out[p.name] = None
                continue
            out[p.name] = (str(reply[0]), int(reply[1])) if reply else None
        return out

    def sentinel_master(self, timeout: float = 30.0, *, other_than: Address | None = None) -> Address:
        """Until a majority of the running Sentinels name the same master (other than ``other_than``)."""
        deadline = time.monotonic() + timeout
        while True:
            said = self.sentinel_masters()
            votes = Counter(a for a in said.values() if a is not None)
            if said and votes:
                best, count = votes.most_common(1)[0]
                if count * 2 > len(said) and best != other_than:
                    return best
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no master named by a majority of the running Sentinels within {timeout:g}s"
                    f"{f' (other than {other_than})' if other_than else ''}: {said}\n"
                    f"{self.log_tail(*self.sentinel_pods)}"
                )
            time.sleep(0.2)

    def request_failover(self, sentinel: str, timeout: float = 30.0) -> None:
        """``SENTINEL FAILOVER`` through ``sentinel``, asked again while it answers NOGOODSLAVE: a Sentinel
        promotes only a replica whose INFO it has refreshed lately, which a loaded machine delays."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._connection(sentinel) as client:
                    client.execute_command("SENTINEL", "FAILOVER", self.owner.master_name)  # type: ignore[no-untyped-call]
                return
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    # -- logs ----------------------------------------------------------------------------------------
    def log(self, pod: str, *, since_start: bool = False) -> str:
        """The pod's log (stdout and stderr of its processes), or only that of its latest start."""
        p = self.pod(pod)
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        if since_start:
            marker = _start_marker(p)
            at = text.rfind(marker)
            text = text[at + len(marker):] if at >= 0 else text
        return text

    def log_tail(self, *pods: str, lines: int = 30) -> str:
        parts = []
        for name in pods or tuple(self.pod_names):
            tail = self.log(name).splitlines()[-lines:]
            parts.append(f"--- {name} ({self.pod(name).ip}) log tail ---\n" + "\n".join(tail))
        return "\n".join(parts)


T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy (returned; a Redis error counts as not yet) or the
    deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except RedisError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def sentinel_knows_all(env: SentinelEnv, pod: str) -> bool:
    """Whether the Sentinel ``pod`` knows every other Sentinel and every replica (it can fail over)."""
    try:
        reply = env.client(pod).execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "MASTER", env.owner.master_name)
    except RedisError:  # not listening yet
        return False
    info = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else dict(reply)
    return (int(info["num-other-sentinels"]) == len(env.sentinel_pods) - 1
            and int(info["num-slaves"]) == len(env.redis_pods) - 1)
